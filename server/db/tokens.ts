// API tokens. Only a SHA-256 of each token is stored; tokens are 32 random bytes, so a
// plain hash (no salt, no KDF) is enough: there is nothing to brute-force.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Db } from './index.js';

export interface TokenRecord {
  id: string;
  name: string;
  createdAt: string;
}

export const hashToken = (token: string): string => createHash('sha256').update(token).digest('hex');

export class TokenStore {
  private readonly byHash;
  private readonly verified = new Map<string, TokenRecord>();

  constructor(private readonly db: Db) {
    this.byHash = db.prepare('SELECT id, name, created_at AS createdAt FROM tokens WHERE hash = ?');
  }

  count(): number {
    return this.db.prepare('SELECT count(*) FROM tokens').pluck().get() as number;
  }

  /** Creates a token and returns it in clear, the only time it exists outside the client. */
  create(name: string): { token: string; record: TokenRecord } {
    const token = `cap_${randomBytes(32).toString('base64url')}`;
    const record: TokenRecord = { id: randomUUID(), name, createdAt: new Date().toISOString() };
    this.db.prepare('INSERT INTO tokens (id, name, hash, created_at) VALUES (?, ?, ?, ?)').run(record.id, name, hashToken(token), record.createdAt);
    return { token, record };
  }

  /** Looks the token up by its hash; valid tokens are remembered (bounded) to spare the query. */
  verify(token: string): TokenRecord | undefined {
    const hash = hashToken(token);
    const cached = this.verified.get(hash);
    if (cached) return cached;
    const record = this.byHash.get(hash) as TokenRecord | undefined;
    if (record) {
      if (this.verified.size >= 1024) this.verified.clear();
      this.verified.set(hash, record);
    }
    return record;
  }
}
