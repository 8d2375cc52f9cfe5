// capsule tenant …: tenants and their quotas (admin; /v1/tenants, issue 10).
// Quotas: a number, or `unlimited` (null in the API). Lists and show give use against them.
import { Command, InvalidArgumentError } from 'commander';
import { sizeMiB } from '../args.js';
import { withContext } from '../context.js';
import { UsageError } from '../errors.js';
import { mib, shortTime, type Column } from '../output.js';
import { resolveTenant } from '../resolve.js';
import type { List, Quotas, Tenant } from '../types.js';

const QUOTAS: Array<{ key: keyof Quotas; flag: string; label: string; size: boolean }> = [
  { key: 'vms', flag: 'vms', label: 'VMs', size: false },
  { key: 'vcpus', flag: 'vcpus', label: 'running vCPUs', size: false },
  { key: 'memoryMiB', flag: 'memory', label: 'running memory', size: true },
  { key: 'volumeMiB', flag: 'volume-size', label: 'volume space', size: true },
  { key: 'snapshotMiB', flag: 'snapshot-size', label: 'snapshot space', size: true },
];

// commander turns a parser's null into '': the parser says 'unlimited', quotasFrom() makes it null.
const UNLIMITED = 'unlimited';
const unlimitedOr = (parse: (v: string) => number) => (v: string): number | typeof UNLIMITED => {
  if (v === 'unlimited' || v === 'none') return UNLIMITED;
  if (/^\d+$/.test(v) && Number(v) === 0) return 0;
  return parse(v);
};
const count = (v: string) => {
  if (!/^\d+$/.test(v)) throw new InvalidArgumentError('must be a number or "unlimited"');
  return Number(v);
};

const quotaText = (q: Quotas | undefined, key: keyof Quotas, size: boolean): string => {
  const v = q?.[key];
  if (v === undefined) return '-';
  if (v === null) return 'unlimited';
  return size ? mib(v) : String(v);
};

/** `USE of LIMIT` (`USE/LIMIT` in tables) when the server reports use, else the limit. */
function quotaLine(t: Tenant, key: keyof Quotas, size: boolean, separator = ' of '): string {
  const limit = quotaText(t.quotas, key, size);
  if (!t.usage || t.usage[key] === undefined || t.usage[key] === null) return limit;
  return `${quotaText(t.usage, key, size)}${separator}${limit}`;
}

const tenantColumns: Column<Tenant>[] = [
  { header: 'NAME', value: (t) => t.name },
  ...QUOTAS.map((q) => ({ header: q.flag.toUpperCase().replace('-', ' '), value: (t: Tenant) => quotaLine(t, q.key, q.size, '/'), right: true })),
  { header: 'ID', value: (t) => t.id },
  { header: 'CREATED', value: (t) => shortTime(t.createdAt), optional: true },
];

function addQuotaOptions(cmd: Command): Command {
  for (const q of QUOTAS) {
    cmd.option(`--${q.flag} <${q.size ? 'size' : 'n'}>`, `quota: ${q.label}${q.size ? ' (MiB, or 512M, 100G)' : ''}, or unlimited`, unlimitedOr(q.size ? sizeMiB : count));
  }
  return cmd;
}

function quotasFrom(o: Record<string, unknown>): Quotas | undefined {
  const quotas: Quotas = {};
  for (const q of QUOTAS) {
    const optionKey = q.flag.replace(/-(\w)/g, (_, c: string) => c.toUpperCase());
    if (o[optionKey] !== undefined) quotas[q.key] = o[optionKey] === UNLIMITED ? null : (o[optionKey] as number);
  }
  return Object.keys(quotas).length > 0 ? quotas : undefined;
}

export function tenantCommand(): Command {
  const tenant = new Command('tenant').description('Tenants and their quotas (admin)');

  tenant.command('ls').alias('list').description('List tenants')
    .action(withContext(async (ctx) => {
      const list = await ctx.client().get<List<Tenant>>('/v1/tenants');
      ctx.printer.table(list, list.items, tenantColumns);
    }));

  addQuotaOptions(tenant.command('create').description('Create a tenant').argument('<name>', 'tenant name'))
    .action(withContext(async (ctx, name: string, o: Record<string, unknown>) => {
      const quotas = quotasFrom(o);
      const t = await ctx.client().post<Tenant>('/v1/tenants', { name, ...(quotas ? { quotas } : {}) });
      if (ctx.printer.json) ctx.printer.jsonValue(t);
      else ctx.printer.message(`${t.name}: created (${t.id})`);
    }));

  tenant.command('show').alias('get').description('Show a tenant: quotas and what it uses').argument('<tenant>', 'name or id')
    .action(withContext(async (ctx, ref: string) => {
      const found = await resolveTenant(ctx.client(), ref);
      const t = await ctx.client().get<Tenant>(`/v1/tenants/${found.id}`);
      ctx.printer.fields(t, [
        ['name', t.name], ['id', t.id],
        ...QUOTAS.map((q) => [q.label, quotaLine(t, q.key, q.size)] as [string, string]),
        ['created', shortTime(t.createdAt)], ['updated', shortTime(t.updatedAt)],
      ]);
    }));

  addQuotaOptions(tenant.command('update').description('Rename a tenant or change its quotas').argument('<tenant>', 'name or id')
    .option('--name <name>', 'new name'))
    .action(withContext(async (ctx, ref: string, o: Record<string, unknown>) => {
      const quotas = quotasFrom(o);
      const body = { ...(typeof o.name === 'string' ? { name: o.name } : {}), ...(quotas ? { quotas } : {}) };
      if (Object.keys(body).length === 0) throw new UsageError('tenant update: nothing to change (give --name or a quota option)');
      const found = await resolveTenant(ctx.client(), ref);
      const t = await ctx.client().patch<Tenant>(`/v1/tenants/${found.id}`, body);
      if (ctx.printer.json) ctx.printer.jsonValue(t);
      else ctx.printer.message(`${t.name}: updated`);
    }));

  tenant.command('rm').alias('delete').description('Delete a tenant').argument('<tenant>', 'name or id')
    .option('-f, --force', 'also delete its VMs, volumes and tokens')
    .action(withContext(async (ctx, ref: string, o: { force?: boolean }) => {
      const found = await resolveTenant(ctx.client(), ref);
      await ctx.client().delete(`/v1/tenants/${found.id}${o.force ? '?force=true' : ''}`);
      ctx.printer.message(`${found.name}: deleted`);
    }));
  return tenant;
}
