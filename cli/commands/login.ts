// capsule login / logout / whoami: the server and token the other commands use (config.ts).
import { Command } from 'commander';
import { ApiClient } from '../client.js';
import { configPath, normalizeUrl, readConfig, removeConfig, resolveConnection, writeConfig } from '../config.js';
import { withContext } from '../context.js';
import { ApiError, UsageError } from '../errors.js';
import { ask, askSecret } from '../prompt.js';

const DEFAULT_URL = 'http://127.0.0.1:8080';

/** GET /v1/whoami: the calling token (id, name, scope, expiresAt) and its tenant. */
export interface Identity {
  id?: string;
  name?: string;
  scope?: string;
  expiresAt?: string;
  tenant?: string | { id?: string; name?: string };
  tenantName?: string;
  [key: string]: unknown;
}

/**
 * Who the token is: GET /v1/whoami, on servers with tenants. A server without the route (404
 * not_found) is asked for something any valid token may read, so the token is still checked.
 */
export async function whoami(client: ApiClient): Promise<Identity | undefined> {
  try {
    return await client.get<Identity>('/v1/whoami');
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) throw e;
  }
  await client.get('/v1/images');
  return undefined;
}

function describe(id: Identity | undefined): string {
  if (!id) return 'this server has no tenants: the token may do everything';
  const tenant = id.tenantName ?? (typeof id.tenant === 'object' ? id.tenant?.name : id.tenant);
  const parts = [tenant && `tenant ${tenant}`, id.scope && `scope ${id.scope}`, id.name && `token ${id.name}`, id.expiresAt && `expires ${id.expiresAt}`];
  return parts.filter(Boolean).join(', ') || JSON.stringify(id);
}

export function loginCommand(): Command {
  return new Command('login').description(`Check a server URL and token and store them in ${configPath().replace(process.env.HOME ?? '\0', '~')} (0600)`)
    .option('--url <url>', `server URL (asked for when missing; default ${DEFAULT_URL})`)
    .option('--token <token>', 'API token (asked for when missing, without echo; read from stdin when it is not a terminal)')
    .action(withContext(async (ctx, o: { url?: string; token?: string }) => {
      const known = (() => { try { return readConfig(); } catch { return {}; } })();
      const suggested = process.env.CAPSULE_URL || known.url || DEFAULT_URL;
      const url = normalizeUrl(o.url ?? (process.stdin.isTTY ? await ask('capsule server URL', suggested) : suggested));
      const token = o.token ?? (await askSecret('API token'));
      if (!token) throw new UsageError('no token given (--token, or type it when asked)');
      const client = new ApiClient(url, token);
      let id: Identity | undefined;
      try {
        id = await whoami(client);
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) throw new ApiError(401, e.code, `${url} refused the token: ${e.message}; nothing saved`);
        throw e;
      }
      const path = writeConfig({ url, token });
      if (ctx.printer.json) ctx.printer.jsonValue({ url, config: path, whoami: id ?? null });
      else ctx.printer.message(`logged in to ${url} (${describe(id)}); saved in ${path}`);
      if (process.env.CAPSULE_URL || process.env.CAPSULE_TOKEN) {
        process.stderr.write('note: CAPSULE_URL / CAPSULE_TOKEN are set and override the saved login\n');
      }
    }));
}

export function logoutCommand(): Command {
  return new Command('logout').description('Forget the stored URL and token (the token stays valid on the server)')
    .action(withContext((ctx) => {
      const had = removeConfig();
      ctx.printer.message(had ? `logged out (removed ${configPath()})` : 'not logged in');
    }));
}

export function whoamiCommand(): Command {
  return new Command('whoami').description('Show the server, and the tenant and scope of the token in use')
    .action(withContext(async (ctx) => {
      const conn = resolveConnection();
      const id = await whoami(ctx.client());
      if (ctx.printer.json) return ctx.printer.jsonValue({ url: conn.url, whoami: id ?? null });
      ctx.printer.fields(null, [
        ['url', `${conn.url}${conn.source.url === 'env' ? ' (CAPSULE_URL)' : ''}`],
        ['token', conn.source.token === 'env' ? 'from CAPSULE_TOKEN' : `from ${configPath()}`],
        ['identity', describe(id)],
      ]);
    }));
}

