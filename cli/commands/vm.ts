// capsule vm …: definitions and lifecycle (POST /v1/vms, /v1/vms/:id/{start,stop,…}).
import { Command, Option } from 'commander';
import { collect, driveSpec, durationSec, keyValue, oneOf, positiveInt, sizeMiB, type DriveSpec } from '../args.js';
import { UsageError } from '../errors.js';
import { withContext, type Context } from '../context.js';
import { mib, shortTime, type Column } from '../output.js';
import { resolveVm, tenantNames } from '../resolve.js';
import { withSpinner } from '../spinner.js';
import type { Drive, List, Vm } from '../types.js';
import { consoleCommand } from './console.js';
import { driveCommand, driveColumns } from './drive.js';

export const vmColumns = (items: readonly Vm[], tenants: ReadonlyMap<string, string> = new Map()): Column<Vm>[] => [
  { header: 'NAME', value: (v) => v.name },
  { header: 'STATE', value: (v) => v.state },
  { header: 'BACKEND', value: (v) => v.hypervisor, optional: true },
  { header: 'VCPUS', value: (v) => v.vcpus, right: true },
  { header: 'MEMORY', value: (v) => mib(v.memoryMiB), right: true },
  { header: 'DRIVES', value: (v) => v.drives.length, right: true, optional: true },
  { header: 'IMAGE', value: (v) => v.image, optional: true },
  // Only servers with tenants send one; an admin sees every tenant's VMs.
  ...(items.some((v) => v.tenant !== undefined) ? [{ header: 'TENANT', value: (v: Vm) => (v.tenant && tenants.get(v.tenant)) ?? v.tenant }] : []),
  { header: 'ID', value: (v) => v.id },
  { header: 'CREATED', value: (v) => shortTime(v.createdAt), optional: true },
];

function showVm(ctx: Context, vm: Vm): void {
  if (ctx.printer.json) return ctx.printer.jsonValue(vm);
  ctx.printer.fields(vm, [
    ['name', vm.name],
    ['id', vm.id],
    ['state', vm.state],
    ...(vm.tenant !== undefined ? [['tenant', vm.tenant] as [string, string]] : []),
    ['image', vm.image],
    ['backend', vm.hypervisor],
    ['vcpus', vm.vcpus],
    ['memory', mib(vm.memoryMiB)],
    ['cmdline', vm.cmdline],
    ['rng', vm.rng],
    ['balloon', vm.balloon.enabled ? (vm.balloon.deflateOnOom ? 'yes (deflate on OOM)' : 'yes') : 'no'],
    ...(vm.rootfsDevice !== undefined ? [['rootfs device', vm.rootfsDevice] as [string, string]] : []),
    ['pid', vm.pid],
    ...Object.entries(vm.metadata ?? {}).map(([k, v]) => [`metadata ${k}`, v] as [string, string]),
    ...(vm.timeoutSec !== undefined ? [['ttl', `${vm.timeoutSec} s, then ${vm.onTimeout ?? 'stop'}`] as [string, string]] : []),
    ...(vm.expiresAt !== undefined ? [['expires', shortTime(vm.expiresAt)] as [string, string]] : []),
    ['created', shortTime(vm.createdAt)],
    ['updated', shortTime(vm.updatedAt)],
  ]);
  if (vm.drives.length > 0) {
    ctx.printer.raw('\n');
    ctx.printer.table<Drive>(vm.drives, vm.drives, driveColumns);
  }
}

/** One line for an action's result in table mode; the VM object in json mode. */
function reportVm(ctx: Context, vm: Vm): void {
  if (ctx.printer.json) ctx.printer.jsonValue(vm);
  else ctx.printer.message(`${vm.name}: ${vm.state}`);
}

interface CreateOptions {
  image?: string;
  vcpus?: number;
  memory?: number;
  backend?: string;
  cmdline?: string;
  drive?: DriveSpec[];
  rng: boolean;
  balloon?: boolean;
  balloonDeflateOnOom?: boolean;
  rootfsDevice?: string;
  metadata?: Array<[string, string]>;
  timeout?: number;
  onTimeout?: string;
  start?: boolean;
  template?: string;
}

export function createBody(name: string, o: CreateOptions): Record<string, unknown> {
  const body: Record<string, unknown> = { name };
  if (o.template !== undefined) body.template = o.template;
  if (o.image !== undefined) body.image = o.image;
  if (o.vcpus !== undefined) body.vcpus = o.vcpus;
  if (o.memory !== undefined) body.memoryMiB = o.memory;
  if (o.backend !== undefined) body.hypervisor = o.backend;
  if (o.cmdline !== undefined) body.cmdline = o.cmdline;
  if (o.drive?.length) body.drives = o.drive;
  if (!o.rng) body.rng = false;
  if (o.balloonDeflateOnOom) body.balloon = { deflateOnOom: true };
  else if (o.balloon) body.balloon = true;
  if (o.rootfsDevice !== undefined) body.rootfsDevice = o.rootfsDevice;
  if (o.metadata?.length) body.metadata = Object.fromEntries(o.metadata);
  if (o.timeout !== undefined) body.timeoutSec = o.timeout;
  if (o.onTimeout !== undefined) body.onTimeout = o.onTimeout;
  return body;
}

const ACTIONS = {
  start: { verb: 'starting', summary: 'Start a VM (boots it; returns once the VMM answers)' },
  stop: { verb: 'stopping', summary: 'Stop a VM: ACPI power-off, killed after the server\'s timeout (--force: at once)' },
  pause: { verb: 'pausing', summary: 'Pause a running VM' },
  resume: { verb: 'resuming', summary: 'Resume a paused VM' },
  reboot: { verb: 'rebooting', summary: 'Reset a running VM' },
} as const;

export function vmCommand(): Command {
  const vm = new Command('vm').description('Virtual machines (by name or id)');

  vm.command('ls').alias('list').description('List VMs')
    .option('-t, --tenant <tenant>', 'admin: only this tenant\'s (name or id)')
    .option('--metadata <key=value>', 'only VMs with this metadata (repeatable: all must match)', collect(keyValue))
    .option('--state <state>', 'only VMs in this state')
    .action(withContext(async (ctx, o: { tenant?: string; metadata?: Array<[string, string]>; state?: string }) => {
      const q = new URLSearchParams();
      if (o.tenant) q.set('tenant', o.tenant);
      if (o.state) q.set('state', o.state);
      for (const [k, v] of o.metadata ?? []) q.set(`metadata.${k}`, v);
      const list = await ctx.client().get<List<Vm>>(`/v1/vms${q.size ? `?${q}` : ''}`);
      if (ctx.printer.json) return ctx.printer.jsonValue(list);
      ctx.printer.table(list, list.items, vmColumns(list.items, await tenantNames(ctx.client(), list.items)));
    }));

  vm.command('create').description('Define a VM (state created; --start boots it too)')
    .argument('<name>', '1-63 of [A-Za-z0-9_.-]')
    .option('-i, --image <image>', 'guest image (capsule image ls)', undefined)
    .option('-c, --vcpus <n>', 'virtual CPUs', positiveInt)
    .option('-m, --memory <size>', 'guest memory: MiB, or 512M, 2G', sizeMiB)
    .addOption(new Option('-b, --backend <backend>', 'hypervisor: qemu or native (default: the server\'s)').argParser(oneOf('qemu', 'native')))
    .addOption(new Option('--hypervisor <backend>').argParser(oneOf('qemu', 'native')).hideHelp())
    .option('--cmdline <cmdline>', 'kernel command line (default: the image\'s)')
    .option('-d, --drive <spec>', 'attach a volume: VOLUME[,ro][,cache=none|writeback|unsafe][,iops=N] (repeatable, guest order)', collect(driveSpec))
    .option('--no-rng', 'no virtio-rng device')
    .option('--balloon', 'a virtio-balloon device')
    .option('--balloon-deflate-on-oom', 'a balloon the guest may deflate when it runs out of memory')
    .addOption(new Option('--rootfs-device <device>', 'for an image with a rootfs: virtio-blk (vda) or pmem (/dev/pmem0, DAX)').argParser(oneOf('virtio-blk', 'pmem')))
    .option('--metadata <key=value>', 'a metadata entry (repeatable)', collect(keyValue))
    .option('--timeout <duration>', 'TTL from each start: 90, 15m, 2h, 1d', durationSec)
    .addOption(new Option('--on-timeout <action>', 'at the TTL: stop (default) or delete').argParser(oneOf('stop', 'delete')))
    .option('-s, --start', 'start the VM once created')
    .option('-T, --template <template>', 'a running VM of this template: from its pool, else restored (image, size and devices are the template\'s)')
    .action(withContext(async (ctx, name: string, o: CreateOptions & { hypervisor?: string }) => {
      const client = ctx.client();
      if (o.template !== undefined) {
        const clash = (['image', 'vcpus', 'memory', 'backend', 'cmdline', 'drive', 'rootfsDevice'] as const).filter((k) => o[k] !== undefined);
        if (clash.length > 0) throw new UsageError(`--template gives the VM its template's ${clash.join(', ')}: leave them out`);
        const vm = await withSpinner(`starting ${name} from ${o.template}`, client.post<Vm & { startedFrom: string }>('/v1/vms', createBody(name, o)));
        if (ctx.printer.json) return ctx.printer.jsonValue(vm);
        return ctx.printer.message(`${vm.name}: ${vm.state}, ${vm.startedFrom === 'pool' ? 'from the pool' : 'restored (the pool had none ready)'} (${vm.id})`);
      }
      let created = await client.post<Vm>('/v1/vms', createBody(name, { ...o, backend: o.backend ?? o.hypervisor }));
      if (o.start) created = await withSpinner(`starting ${created.name}`, client.post<Vm>(`/v1/vms/${created.id}/start`));
      if (ctx.printer.json) ctx.printer.jsonValue(created);
      else ctx.printer.message(`${created.name}: ${created.state} (${created.id})`);
    }));

  vm.command('show').alias('get').description('Show one VM').argument('<vm>', 'name or id')
    .action(withContext(async (ctx, ref: string) => {
      const found = await resolveVm(ctx.client(), ref);
      showVm(ctx, await ctx.client().get<Vm>(`/v1/vms/${found.id}`));
    }));

  for (const [action, { verb, summary }] of Object.entries(ACTIONS)) {
    const cmd = vm.command(action).description(summary).argument('<vm>', 'name or id');
    if (action === 'stop') cmd.option('-f, --force', 'kill the VMM at once instead of a clean power-off');
    cmd.action(withContext(async (ctx, ref: string, o: { force?: boolean }) => {
      const client = ctx.client();
      const target = await resolveVm(client, ref);
      const query = o.force ? '?force=true' : '';
      reportVm(ctx, await withSpinner(`${verb} ${target.name}`, client.post<Vm>(`/v1/vms/${target.id}/${action}${query}`)));
    }));
  }

  vm.command('rm').alias('delete').description('Delete VMs (a running one is stopped first)').argument('<vm...>', 'names or ids')
    .option('-f, --force', 'kill running VMMs at once instead of a clean power-off')
    .action(withContext(async (ctx, refs: string[], o: { force?: boolean }) => {
      const client = ctx.client();
      // Resolve all first: a typo in the third name should not leave the first two deleted.
      const targets = [];
      for (const ref of refs) targets.push(await resolveVm(client, ref));
      for (const t of targets) {
        await withSpinner(`deleting ${t.name}`, client.delete(`/v1/vms/${t.id}${o.force ? '?force=true' : ''}`));
        ctx.printer.message(`${t.name}: deleted`);
      }
    }));

  vm.command('timeout').description('Restart a VM\'s TTL from now; with DURATION set a new one (90, 15m, 2h); "none" removes it')
    .argument('<vm>', 'name or id').argument('[duration]', 'new TTL, or none')
    .action(withContext(async (ctx, ref: string, duration?: string) => {
      const found = await resolveVm(ctx.client(), ref);
      const body = duration === undefined ? {} : { timeoutSec: duration === 'none' ? null : durationSec(duration) };
      const v = await ctx.client().post<Vm>(`/v1/vms/${found.id}/timeout`, body);
      if (ctx.printer.json) return ctx.printer.jsonValue(v);
      ctx.printer.message(v.timeoutSec === undefined ? `${v.name}: no TTL` : `${v.name}: TTL ${v.timeoutSec} s${v.expiresAt ? `, expires ${shortTime(v.expiresAt)}` : ' from its next start'}`);
    }));

  vm.command('log').alias('logs').description('Print the VMM\'s log (the last MiB)').argument('<vm>', 'name or id')
    .action(withContext(async (ctx, ref: string) => {
      const target = await resolveVm(ctx.client(), ref);
      ctx.printer.raw(await ctx.client().text(`/v1/vms/${target.id}/log`));
    }));

  vm.command('balloon').description('Show the guest memory the balloon driver reports; with TARGET, balloon the guest to it')
    .argument('<vm>', 'name or id').argument('[target]', 'guest memory to balloon to: MiB, or 512M, 1G', sizeMiB)
    .action(withContext(async (ctx, ref: string, target: number | undefined) => {
      const vmFound = await resolveVm(ctx.client(), ref);
      const path = `/v1/vms/${vmFound.id}/balloon`;
      const b = target === undefined
        ? await ctx.client().get<{ actualMiB: number; targetMiB?: number }>(path)
        : await ctx.client().put<{ actualMiB: number; targetMiB?: number }>(path, { targetMiB: target });
      if (ctx.printer.json) return ctx.printer.jsonValue(b);
      // The driver gives memory back over a moment: `actual` catches up with `target`.
      ctx.printer.message(`${vmFound.name}: ${mib(b.actualMiB)}${b.targetMiB !== undefined ? ` (target ${mib(b.targetMiB)})` : ''}`);
    }));

  vm.addCommand(consoleCommand());
  vm.addCommand(driveCommand());
  return vm;
}
