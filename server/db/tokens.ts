// API tokens. Only a SHA-256 of each token is stored; tokens are 32 random bytes, so a
// plain hash (no salt, no KDF) is enough: there is nothing to brute-force.
//
// New tokens are `cap_` + 64 lowercase hex digits. Tokens made before (`cap_` + base64url)
// keep working: a token is looked up by its hash, whatever its text.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Db } from './index.js';

export const TOKEN_SCOPES = ['admin', 'write', 'read'] as const;
export type TokenScope = (typeof TOKEN_SCOPES)[number];

export interface TokenRecord {
  id: string;
  tenantId: string;
  name: string;
  scope: TokenScope;
  expiresAt?: string;
  createdAt: string;
}

export interface NewToken {
  tenantId: string;
  name: string;
  scope: TokenScope;
  expiresAt?: string | undefined;
}

interface TokenRow { id: string; tenant_id: string; name: string; scope: TokenScope; expires_at: string | null; created_at: string }

const fromRow = (r: TokenRow): TokenRecord => {
  const t: TokenRecord = { id: r.id, tenantId: r.tenant_id, name: r.name, scope: r.scope, createdAt: r.created_at };
  if (r.expires_at !== null) t.expiresAt = r.expires_at;
  return t;
};

export const hashToken = (token: string): string => createHash('sha256').update(token).digest('hex');

/** The text of a new token: cap_ and 32 random bytes in lowercase hex. */
export const newTokenText = (): string => `cap_${randomBytes(32).toString('hex')}`;

export const isExpired = (t: TokenRecord, now = Date.now()): boolean => t.expiresAt !== undefined && Date.parse(t.expiresAt) <= now;

export class TokenStore {
  private readonly byHash;
  /** Verified tokens by hash (bounded): the hot path of every request skips the query. */
  private readonly verified = new Map<string, TokenRecord>();
  /** Called with each revoked token's id (the server closes its WebSockets). */
  onRevoked: (id: string) => void = () => undefined;

  constructor(private readonly db: Db) {
    this.byHash = db.prepare('SELECT * FROM tokens WHERE hash = ?');
  }

  count(): number {
    return this.db.prepare('SELECT count(*) FROM tokens').pluck().get() as number;
  }

  /** Creates a token and returns it in clear, the only time it exists outside the client. */
  create(t: NewToken): { token: string; record: TokenRecord } {
    const token = newTokenText();
    const id = randomUUID();
    this.db.prepare('INSERT INTO tokens (id, tenant_id, name, hash, scope, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(id, t.tenantId, t.name, hashToken(token), t.scope, t.expiresAt ?? null, new Date().toISOString());
    return { token, record: this.get(id)! };
  }

  get(id: string): TokenRecord | undefined {
    const r = this.db.prepare('SELECT * FROM tokens WHERE id = ?').get(id) as TokenRow | undefined;
    return r && fromRow(r);
  }

  /** Metadata only: the hash never leaves this class. */
  list(tenantId?: string): TokenRecord[] {
    const rows = tenantId === undefined
      ? this.db.prepare('SELECT * FROM tokens ORDER BY created_at, id').all()
      : this.db.prepare('SELECT * FROM tokens WHERE tenant_id = ? ORDER BY created_at, id').all(tenantId);
    return (rows as TokenRow[]).map(fromRow);
  }

  /** Looks the token up by its hash (expired ones too: the caller says "expired", not "invalid"). */
  verify(token: string): TokenRecord | undefined {
    const hash = hashToken(token);
    const cached = this.verified.get(hash);
    if (cached) return cached;
    const r = this.byHash.get(hash) as TokenRow | undefined;
    if (!r) return undefined;
    const record = fromRow(r);
    if (this.verified.size >= 1024) this.verified.clear();
    this.verified.set(hash, record);
    return record;
  }

  /** Deletes the token; it stops working at once (the verify cache forgets it, sockets close). */
  revoke(id: string): boolean {
    const gone = this.db.prepare('DELETE FROM tokens WHERE id = ?').run(id).changes > 0;
    if (gone) this.forget(id);
    return gone;
  }

  /** Deletes every token of a tenant; returns how many. */
  revokeTenant(tenantId: string): number {
    const ids = this.db.prepare('SELECT id FROM tokens WHERE tenant_id = ?').pluck().all(tenantId) as string[];
    for (const id of ids) this.revoke(id);
    return ids.length;
  }

  private forget(id: string): void {
    for (const [hash, record] of this.verified) if (record.id === id) this.verified.delete(hash);
    this.onRevoked(id);
  }
}
