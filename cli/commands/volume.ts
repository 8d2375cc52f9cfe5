// capsule volume …: server-side disks (/v1/volumes; the server takes names or ids).
import { Command } from 'commander';
import { sizeMiB } from '../args.js';
import { withContext } from '../context.js';
import { UsageError } from '../errors.js';
import { mib, shortTime, type Column } from '../output.js';
import { seg, tenantNames, tenantQuery } from '../resolve.js';
import { withSpinner } from '../spinner.js';
import type { List, Volume } from '../types.js';

const attachedTo = (v: Volume) => v.attachments.map((a) => `${a.vmName}:${a.drive}${a.readOnly ? ':ro' : ''}`).join(',');

const volumeColumns = (items: readonly Volume[], tenants: ReadonlyMap<string, string>): Column<Volume>[] => [
  { header: 'NAME', value: (v) => v.name },
  { header: 'SIZE', value: (v) => mib(v.sizeMiB), right: true },
  { header: 'FROM IMAGE', value: (v) => v.fromImage, optional: true },
  { header: 'ATTACHED TO', value: attachedTo },
  ...(items.some((v) => v.tenant !== undefined) ? [{ header: 'TENANT', value: (v: Volume) => (v.tenant && tenants.get(v.tenant)) ?? v.tenant }] : []),
  { header: 'ID', value: (v) => v.id },
  { header: 'CREATED', value: (v) => shortTime(v.createdAt), optional: true },
];

export function volumeCommand(): Command {
  const volume = new Command('volume').description('Volumes: disks the server keeps, attached to VMs as drives');

  volume.command('ls').alias('list').description('List volumes')
    .option('-t, --tenant <tenant>', 'admin: only this tenant\'s (name or id)')
    .action(withContext(async (ctx, o: { tenant?: string }) => {
      const list = await ctx.client().get<List<Volume>>(`/v1/volumes${tenantQuery(o.tenant)}`);
      if (ctx.printer.json) return ctx.printer.jsonValue(list);
      ctx.printer.table(list, list.items, volumeColumns(list.items, await tenantNames(ctx.client(), list.items)));
    }));

  volume.command('create').description('Create a volume: empty (--size) or a copy of an image\'s root filesystem (--from-image)')
    .argument('<name>', '1-63 of [A-Za-z0-9_.-], not a UUID')
    .option('-s, --size <size>', 'size: MiB, or 512M, 10G (with --from-image: grow the copy to it)', sizeMiB)
    .option('--from-image <image>', 'copy this image\'s root filesystem')
    .action(withContext(async (ctx, name: string, o: { size?: number; fromImage?: string }) => {
      if (o.size === undefined && o.fromImage === undefined) throw new UsageError('volume create needs --size, --from-image, or both');
      const body = { name, ...(o.size !== undefined ? { sizeMiB: o.size } : {}), ...(o.fromImage ? { fromImage: o.fromImage } : {}) };
      const v = await withSpinner(o.fromImage ? `copying ${o.fromImage}` : `creating ${name}`, ctx.client().post<Volume>('/v1/volumes', body));
      if (ctx.printer.json) ctx.printer.jsonValue(v);
      else ctx.printer.message(`${v.name}: ${mib(v.sizeMiB)} (${v.id})`);
    }));

  volume.command('show').alias('get').description('Show one volume').argument('<volume>', 'name or id')
    .action(withContext(async (ctx, ref: string) => {
      const v = await ctx.client().get<Volume>(`/v1/volumes/${seg(ref)}`);
      ctx.printer.fields(v, [
        ['name', v.name], ['id', v.id], ['size', mib(v.sizeMiB)], ['from image', v.fromImage],
        ...(v.tenant !== undefined ? [['tenant', v.tenant] as [string, string]] : []),
        ['attached to', attachedTo(v)], ['created', shortTime(v.createdAt)], ['updated', shortTime(v.updatedAt)],
      ]);
    }));

  volume.command('rm').alias('delete').description('Delete volumes no VM references').argument('<volume...>', 'names or ids')
    .action(withContext(async (ctx, refs: string[]) => {
      for (const ref of refs) {
        await ctx.client().delete(`/v1/volumes/${seg(ref)}`);
        ctx.printer.message(`${ref}: deleted`);
      }
    }));
  return volume;
}
