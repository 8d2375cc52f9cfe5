// VMs, tenants and tokens are named by id or by name on the command line; the API takes ids
// (volumes excepted: the server resolves their names itself). A name is looked up in the
// list the token can see, so another tenant's VM of the same name is never reached.
import type { ApiClient } from './client.js';
import { ApiError, CliError } from './errors.js';
import type { List, Tenant, Token, Vm } from './types.js';

/** Shortest id prefix accepted (as docker does): shorter ones match too much by accident. */
const MIN_ID_PREFIX = 4;

export function pickByRef<T extends { id: string; name?: string }>(items: readonly T[], ref: string, kind: string): T {
  const byId = items.find((i) => i.id === ref);
  if (byId) return byId;
  const byName = items.filter((i) => i.name === ref);
  if (byName.length === 1) return byName[0]!;
  if (byName.length > 1) throw new CliError('ambiguous', `${byName.length} ${kind}s are named ${ref}: use the id (${byName.map((i) => i.id).join(', ')})`);
  if (ref.length >= MIN_ID_PREFIX) {
    const byPrefix = items.filter((i) => i.id.startsWith(ref));
    if (byPrefix.length === 1) return byPrefix[0]!;
    if (byPrefix.length > 1) throw new CliError('ambiguous', `${ref} is the start of ${byPrefix.length} ${kind} ids: give more of it`);
  }
  throw new ApiError(404, 'not_found', `no ${kind} named or with id ${ref}`);
}

export async function resolveVm(client: ApiClient, ref: string): Promise<Vm> {
  const { items } = await client.get<List<Vm>>('/v1/vms');
  return pickByRef(items, ref, 'VM');
}

export async function resolveTenant(client: ApiClient, ref: string): Promise<Tenant> {
  const { items } = await client.get<List<Tenant>>('/v1/tenants');
  return pickByRef(items, ref, 'tenant');
}

export async function resolveToken(client: ApiClient, ref: string): Promise<Token> {
  const { items } = await client.get<List<Token>>('/v1/tokens');
  return pickByRef(items, ref, 'token');
}

/** Path segment for an id or name the server resolves itself (volumes). */
export const seg = (s: string) => encodeURIComponent(s);

/**
 * Tenant names by id, for the TENANT column an admin's lists get. Only an admin may list
 * tenants: for anyone else (or a server without tenants) the column keeps the ids.
 */
export async function tenantNames(client: ApiClient, items: ReadonlyArray<{ tenant?: string }>): Promise<Map<string, string>> {
  if (!items.some((i) => i.tenant !== undefined)) return new Map();
  try {
    const { items: tenants } = await client.get<List<Tenant>>('/v1/tenants');
    return new Map(tenants.map((t) => [t.id, t.name]));
  } catch {
    return new Map();
  }
}

/** `?tenant=REF` for an admin's narrowed list (the server takes an id or a name). */
export const tenantQuery = (tenant: string | undefined) => (tenant ? `?tenant=${encodeURIComponent(tenant)}` : '');
