// Credentials on the E2B routes.
//
// API keys: the E2B SDK only sends keys of the form `e2b_` + hex, so a capsule token
// `cap_<hex>` is presented as `e2b_<hex>`: the same secret under E2B's prefix. It is mapped
// back before anything else sees it, so tokens stay stored (hashed) and checked in one place
// (db/tokens.ts) and the E2B routes get exactly the tenant, scope and revocation of the token.
//
// Sandbox access tokens: the SDK talks to a sandbox's envd with the `envdAccessToken` that
// create/connect returned, not with the API key. Ours is an HMAC of the sandbox (VM) id under a
// server secret kept in the data directory: it opens that one sandbox and nothing else, needs
// no table, survives a server restart, and can be given again on connect.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

const E2B_KEY = /^e2b_([0-9a-f]{16,128})$/;
const CAPSULE_TOKEN = /^cap_([0-9a-f]{16,128})$/;

/** The capsule token behind an E2B API key; undefined when it is not of the form e2b_<hex>. */
export function capsuleTokenOf(e2bKey: string): string | undefined {
  const m = E2B_KEY.exec(e2bKey.trim());
  return m ? `cap_${m[1]}` : undefined;
}

/** The E2B API key that stands for a capsule token; undefined for tokens that are not cap_<hex> (older base64url ones). */
export function e2bKeyOf(capsuleToken: string): string | undefined {
  const m = CAPSULE_TOKEN.exec(capsuleToken.trim());
  return m ? `e2b_${m[1]}` : undefined;
}

/** Signs and checks sandbox access tokens. */
export class SandboxTokens {
  private key: Buffer | undefined;

  /** `secret`: the key itself, or where it is kept (read, or made, on first use). */
  constructor(private readonly secret: Buffer | (() => Buffer)) {}

  /** The secret in `<dataDir>/e2b-secret` (made 0600 on first use). */
  static fromDataDir(dataDir: string): SandboxTokens {
    return new SandboxTokens(() => loadSecret(join(dataDir, 'e2b-secret')));
  }

  tokenFor(sandboxId: string): string {
    this.key ??= typeof this.secret === 'function' ? this.secret() : this.secret;
    return createHmac('sha256', this.key).update(`e2b-envd:${sandboxId}`).digest('hex');
  }

  verify(sandboxId: string, token: string | undefined): boolean {
    if (!sandboxId || !token || !/^[0-9a-f]{64}$/.test(token)) return false;
    return timingSafeEqual(Buffer.from(this.tokenFor(sandboxId), 'hex'), Buffer.from(token, 'hex'));
  }
}

function loadSecret(path: string): Buffer {
  if (!existsSync(path)) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, randomBytes(32).toString('hex'));
      closeSync(fd);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  return Buffer.from(readFileSync(path, 'utf8').trim(), 'hex');
}
