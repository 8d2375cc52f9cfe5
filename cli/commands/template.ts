// capsule template …: templates (a guest booted, its start command run, snapshotted) and the
// pools of running clones kept for them (/v1/templates, /v1/pools; docs/templates.md).
// `template create` follows the build and prints each step as it happens (stderr), then the
// template; a failed build exits 1 with its reason.
import { Command, Option } from 'commander';
import { durationSec, nonNegativeInt, oneOf, positiveInt, sizeMiB } from '../args.js';
import type { ApiClient } from '../client.js';
import { withContext } from '../context.js';
import { CliError } from '../errors.js';
import { mib, shortTime, type Column } from '../output.js';
import { seg, tenantNames, tenantQuery } from '../resolve.js';
import type { List, Pool, Template, VmEvent } from '../types.js';

const POLL_MS = 500;

const templateColumns = (items: readonly Template[], tenants: ReadonlyMap<string, string>): Column<Template>[] => [
  { header: 'NAME', value: (t) => t.name },
  { header: 'STATE', value: (t) => (t.state === 'building' && t.step ? `building (${t.step})` : t.state) },
  { header: 'POOL', value: (t) => String(t.pool), right: true },
  { header: 'IMAGE', value: (t) => t.image },
  { header: 'SIZE', value: (t) => `${t.vcpus} vCPU ${mib(t.memoryMiB)}`, optional: true },
  ...(items.some((t) => t.tenant !== undefined) ? [{ header: 'TENANT', value: (t: Template) => (t.tenant && tenants.get(t.tenant)) ?? t.tenant }] : []),
  { header: 'REASON', value: (t) => t.reason, optional: true },
  { header: 'ID', value: (t) => t.id },
];

const poolColumns: Column<Pool>[] = [
  { header: 'TEMPLATE', value: (p) => p.template },
  { header: 'SIZE', value: (p) => String(p.size), right: true },
  { header: 'READY', value: (p) => String(p.ready), right: true },
  { header: 'WARMING', value: (p) => String(p.warming), right: true },
  { header: 'FAILED', value: (p) => String(p.failed), right: true },
  { header: 'REASON', value: (p) => p.reason, optional: true },
];

interface CreateOptions {
  image?: string;
  vcpus?: number;
  memory?: number;
  backend?: string;
  startCmd?: string;
  readyCmd?: string;
  readyTimeout?: number;
  pool?: number;
  wait: boolean;
}

export function templateBody(name: string, o: CreateOptions): Record<string, unknown> {
  const body: Record<string, unknown> = { name };
  if (o.image !== undefined) body.image = o.image;
  if (o.vcpus !== undefined) body.vcpus = o.vcpus;
  if (o.memory !== undefined) body.memoryMiB = o.memory;
  if (o.backend !== undefined) body.hypervisor = o.backend;
  if (o.startCmd !== undefined) body.startCmd = o.startCmd;
  if (o.readyCmd !== undefined) body.readyCmd = o.readyCmd;
  if (o.readyTimeout !== undefined) body.readyTimeoutSec = o.readyTimeout;
  if (o.pool !== undefined) body.pool = o.pool;
  return body;
}

/** Prints each build step once, with the time since the create. */
function stepPrinter(name: string, progress: (line: string) => void): (step: string) => void {
  const started = Date.now();
  const shown = new Set<string>();
  return (step) => {
    if (shown.has(step)) return;
    shown.add(step);
    progress(`${name}: ${step}… (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  };
}

/**
 * The template's TEMPLATE_PROGRESS steps as they are published, from an events stream opened
 * before the create: a step shorter than a poll (a small guest's snapshot) is not missed. Steps
 * are held until `created` gives the template's id (an admin's stream carries every tenant's
 * templates, names may repeat), then shown as they come. Without a stream (it could not open)
 * polling alone shows the steps.
 */
async function stepEvents(client: ApiClient, name: string, show: (step: string) => void): Promise<{ created(id: string): void; close(): void }> {
  let id: string | undefined;
  const held: Array<{ id: string; step: string }> = [];
  try {
    const ws = await client.openSocket('/v1/events', (data) => {
      try {
        const e = JSON.parse(data.toString()) as VmEvent;
        if (e.event !== 'TEMPLATE_PROGRESS' || e.data?.template !== name || typeof e.data.step !== 'string') return;
        if (id === undefined) held.push({ id: e.vm, step: e.data.step });
        else if (e.vm === id) show(e.data.step);
      } catch { /* not an event */ }
    });
    ws.on('error', () => { /* the polls carry on */ });
    return {
      created: (templateId) => {
        id = templateId;
        for (const h of held.splice(0)) if (h.id === id) show(h.step);
      },
      close: () => ws.close(1000),
    };
  } catch {
    return { created: () => undefined, close: () => undefined };
  }
}

/** Polls the template until its build ends, handing each step it sees to `show`. */
async function followBuild(client: ApiClient, t: Template, show: (step: string) => void): Promise<Template> {
  while (t.state === 'building') {
    show(t.step ?? 'booting');
    await new Promise((r) => setTimeout(r, POLL_MS));
    t = await client.get<Template>(`/v1/templates/${seg(t.id)}`);
  }
  return t;
}

export function templateCommand(): Command {
  const template = new Command('template').description('Templates: a guest booted, its start command run and snapshotted; VMs of it start from a pool of running clones');

  template.command('ls').alias('list').description('List templates')
    .option('-t, --tenant <tenant>', 'admin: only this tenant\'s (name or id)')
    .action(withContext(async (ctx, o: { tenant?: string }) => {
      const list = await ctx.client().get<List<Template>>(`/v1/templates${tenantQuery(o.tenant)}`);
      if (ctx.printer.json) return ctx.printer.jsonValue(list);
      ctx.printer.table(list, list.items, templateColumns(list.items, await tenantNames(ctx.client(), list.items)));
    }));

  template.command('create').description('Create a template and follow its build (boot, start command, ready command, snapshot)')
    .argument('<name>', '1-63 of [A-Za-z0-9_.-]')
    .option('-i, --image <image>', 'guest image (capsule image ls)')
    .option('-c, --vcpus <n>', 'virtual CPUs', positiveInt)
    .option('-m, --memory <size>', 'guest memory: MiB, or 512M, 2G', sizeMiB)
    .addOption(new Option('-b, --backend <backend>', 'hypervisor: qemu or native (default: the server\'s)').argParser(oneOf('qemu', 'native')))
    .option('--start-cmd <command>', 'started in the background once the guest agent answers (a shell line)')
    .option('--ready-cmd <command>', 'run until it exits 0: then the guest is snapshotted (a shell line)')
    .option('--ready-timeout <duration>', 'how long the build may take: 90, 5m (default 300 s)', durationSec)
    .option('-p, --pool <n>', 'clones kept running, ready to be claimed', nonNegativeInt)
    .option('--no-wait', 'return once the build has started')
    .action(withContext(async (ctx, name: string, o: CreateOptions) => {
      const client = ctx.client();
      const show = stepPrinter(name, (line) => process.stderr.write(`${line}\n`));
      const events = o.wait ? await stepEvents(client, name, show) : undefined;
      let t: Template;
      try {
        t = await client.post<Template>('/v1/templates', templateBody(name, o));
        events?.created(t.id);
        if (o.wait) t = await followBuild(client, t, show);
      } finally {
        events?.close();
      }
      if (ctx.printer.json) ctx.printer.jsonValue(t);
      if (t.state === 'failed') throw new CliError('template_failed', `template ${t.name} failed to build: ${t.reason ?? 'unknown'}`);
      ctx.printer.message(`${t.name}: ${t.state}${t.pool > 0 ? `, pool ${t.pool}` : ''} (${t.id})`);
    }));

  template.command('show').alias('get').description('Show one template').argument('<template>', 'name or id')
    .action(withContext(async (ctx, ref: string) => {
      const t = await ctx.client().get<Template>(`/v1/templates/${seg(ref)}`);
      ctx.printer.fields(t, [
        ['name', t.name], ['id', t.id], ['state', t.state], ['step', t.step], ['reason', t.reason], ['image', t.image],
        ['backend', t.hypervisor], ['vcpus', t.vcpus], ['memory', mib(t.memoryMiB)], ['start command', t.startCmd],
        ['ready command', t.readyCmd], ['ready timeout', `${t.readyTimeoutSec} s`], ['pool', t.pool],
        ['created', shortTime(t.createdAt)], ['updated', shortTime(t.updatedAt)],
      ]);
    }));

  template.command('pool').description('Resize a template\'s pool').argument('<template>', 'name or id').argument('<size>', 'clones kept running', nonNegativeInt)
    .action(withContext(async (ctx, ref: string, size: number) => {
      const t = await ctx.client().patch<Template>(`/v1/templates/${seg(ref)}`, { pool: size });
      if (ctx.printer.json) ctx.printer.jsonValue(t);
      else ctx.printer.message(`${t.name}: pool ${t.pool}`);
    }));

  template.command('rm').alias('delete').description('Delete templates (their pools and snapshots; VMs made from them run on)').argument('<template...>', 'names or ids')
    .action(withContext(async (ctx, refs: string[]) => {
      for (const ref of refs) {
        await ctx.client().delete(`/v1/templates/${seg(ref)}`);
        ctx.printer.message(`${ref}: deleted`);
      }
    }));
  return template;
}

export function poolCommand(): Command {
  const pool = new Command('pool').description('Pools of running clones kept for templates');
  pool.command('ls').alias('list').description('List the pools: size, ready, warming, failed refills')
    .option('-t, --tenant <tenant>', 'admin: only this tenant\'s (name or id)')
    .action(withContext(async (ctx, o: { tenant?: string }) => {
      const list = await ctx.client().get<List<Pool>>(`/v1/pools${tenantQuery(o.tenant)}`);
      ctx.printer.table(list, list.items, poolColumns);
    }));
  return pool;
}
