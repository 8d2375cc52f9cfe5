// capsule vm drive …: a VM's disks (GET/POST /v1/vms/:id/drives, DELETE …/drives/:driveId).
import { Command, Option } from 'commander';
import { oneOf, positiveInt } from '../args.js';
import { withContext } from '../context.js';
import { CliError } from '../errors.js';
import type { Column } from '../output.js';
import { resolveVm } from '../resolve.js';
import { withSpinner } from '../spinner.js';
import type { Drive, List } from '../types.js';

export const driveColumns: Column<Drive>[] = [
  { header: 'DRIVE', value: (d) => d.id },
  { header: 'VOLUME', value: (d) => d.volumeName },
  { header: 'MODE', value: (d) => (d.readOnly ? 'ro' : 'rw') },
  { header: 'CACHE', value: (d) => d.cache, optional: true },
  { header: 'IOPS', value: (d) => d.iops, right: true, optional: true },
  { header: 'STATE', value: (d) => d.state },
  { header: 'VOLUME ID', value: (d) => d.volume, optional: true },
];

export function driveCommand(): Command {
  const drive = new Command('drive').description('A VM\'s drives: attach volumes (hot-plugged when running), detach them');

  drive.command('ls').alias('list').description('List a VM\'s drives in guest order').argument('<vm>', 'name or id')
    .action(withContext(async (ctx, ref: string) => {
      const vm = await resolveVm(ctx.client(), ref);
      const list = await ctx.client().get<List<Drive>>(`/v1/vms/${vm.id}/drives`);
      ctx.printer.table(list, list.items, driveColumns);
    }));

  drive.command('attach').description('Attach a volume to a VM').argument('<vm>', 'name or id').argument('<volume>', 'volume name or id')
    .option('-r, --read-only', 'the guest sees a read-only disk')
    .addOption(new Option('--cache <mode>', 'none | writeback | unsafe').argParser(oneOf('none', 'writeback', 'unsafe')))
    .option('--iops <n>', 'I/O operations per second', positiveInt)
    .action(withContext(async (ctx, ref: string, volume: string, o: { readOnly?: boolean; cache?: string; iops?: number }) => {
      const vm = await resolveVm(ctx.client(), ref);
      const body = { volume, ...(o.readOnly ? { readOnly: true } : {}), ...(o.cache ? { cache: o.cache } : {}), ...(o.iops ? { iops: o.iops } : {}) };
      const d = await withSpinner(`attaching ${volume} to ${vm.name}`, ctx.client().post<Drive>(`/v1/vms/${vm.id}/drives`, body));
      if (ctx.printer.json) ctx.printer.jsonValue(d);
      else ctx.printer.message(`${vm.name}: ${d.id} = ${d.volumeName} (${d.readOnly ? 'ro' : 'rw'}, ${d.state})`);
    }));

  drive.command('detach').description('Detach a drive (a running guest must release it first)').argument('<vm>', 'name or id')
    .argument('<drive>', 'drive id (drive-1) or the attached volume\'s name or id')
    .action(withContext(async (ctx, ref: string, which: string) => {
      const vm = await resolveVm(ctx.client(), ref);
      const d = vm.drives.find((x) => x.id === which) ?? vm.drives.find((x) => x.volumeName === which || x.volume === which);
      if (!d) throw new CliError('not_found', `${vm.name} has no drive ${which} (drives: ${vm.drives.map((x) => `${x.id}=${x.volumeName}`).join(', ') || 'none'})`);
      await withSpinner(`detaching ${d.id} from ${vm.name}`, ctx.client().delete(`/v1/vms/${vm.id}/drives/${d.id}`));
      ctx.printer.message(`${vm.name}: ${d.id} (${d.volumeName}) detached`);
    }));
  return drive;
}
