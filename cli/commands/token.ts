// capsule token …: API tokens (/v1/tokens, issue 10). The secret is in the create answer
// only; the server keeps a hash, so a lost token is replaced, not recovered.
import { Command, Option } from 'commander';
import { expiry, oneOf } from '../args.js';
import { withContext } from '../context.js';
import { shortTime, type Column } from '../output.js';
import { resolveToken, tenantQuery } from '../resolve.js';
import type { List, Token } from '../types.js';

const tenantOf = (t: Token & { tenantId?: string }) => t.tenantName ?? t.tenant ?? t.tenantId;

const tokenColumns: Column<Token>[] = [
  { header: 'NAME', value: (t) => t.name },
  { header: 'SCOPE', value: (t) => t.scope },
  { header: 'TENANT', value: tenantOf },
  { header: 'EXPIRES', value: (t) => (t.expiresAt ? shortTime(t.expiresAt) : 'never') },
  { header: 'ID', value: (t) => t.id },
  { header: 'CREATED', value: (t) => shortTime(t.createdAt), optional: true },
];

export function tokenCommand(): Command {
  const token = new Command('token').description('API tokens (an admin manages all; a write token its own tenant\'s)');

  token.command('ls').alias('list').description('List tokens (never their secrets)')
    .option('-t, --tenant <tenant>', 'admin: only this tenant\'s (name or id)')
    .action(withContext(async (ctx, o: { tenant?: string }) => {
      const list = await ctx.client().get<List<Token>>(`/v1/tokens${tenantQuery(o.tenant)}`);
      ctx.printer.table(list, list.items, tokenColumns);
    }));

  token.command('create').description('Create a token; its secret is printed once')
    .argument('<name>', 'what the token is for')
    .requiredOption('-t, --tenant <tenant>', 'the tenant it acts for (name or id)')
    .addOption(new Option('--scope <scope>', 'admin, write or read').argParser(oneOf('admin', 'write', 'read')).default('write'))
    .option('--expires <when>', 'expiry: a date-time, or a duration from now (30d, 12h)', (v: string) => expiry(v))
    .action(withContext(async (ctx, name: string, o: { tenant: string; scope: string; expires?: string }) => {
      const t = await ctx.client().post<Token>('/v1/tokens', { tenant: o.tenant, name, scope: o.scope, ...(o.expires ? { expiresAt: o.expires } : {}) });
      if (ctx.printer.json) return ctx.printer.jsonValue(t);
      // The secret alone on stdout (TOKEN=$(capsule token create ...) works); the rest on stderr.
      process.stderr.write(`token ${t.name ?? name} (${t.id}, ${t.scope ?? o.scope}) for tenant ${tenantOf(t) ?? o.tenant}; the server will not show it again:\n`);
      ctx.printer.raw(`${t.token}\n`);
    }));

  token.command('rm').alias('revoke').description('Revoke a token (its open WebSockets close at once)').argument('<token>', 'id or name')
    .action(withContext(async (ctx, ref: string) => {
      const found = await resolveToken(ctx.client(), ref);
      await ctx.client().delete(`/v1/tokens/${found.id}`);
      ctx.printer.message(`${found.name ?? found.id}: revoked`);
    }));
  return token;
}
