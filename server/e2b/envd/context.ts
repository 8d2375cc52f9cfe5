// The sandbox a Connect call is for: the envd router checks the caller's access token for it and
// hands it to the service implementations as a context value (never re-read from headers).
import { Code, ConnectError, createContextKey, type HandlerContext } from '@connectrpc/connect';

export interface EnvdSandbox {
  vmId: string;
  /** The sandbox's envVars (from create): every command gets them, under its own envs. */
  envVars: Record<string, string>;
}

export const SANDBOX = createContextKey<EnvdSandbox | undefined>(undefined, { description: 'the E2B sandbox of this call' });

export function sandboxOfCall(ctx: HandlerContext): EnvdSandbox {
  const s = ctx.values.get(SANDBOX);
  if (!s) throw new ConnectError('no sandbox', Code.Unauthenticated);
  return s;
}

/**
 * A service's implementation by method name (start, list, ...). The descriptors are built at run
 * time (proto.ts), so TypeScript knows no message types: each method casts its request to the
 * shape it reads, and returns message inits.
 */
export type EnvdServiceImpl = Record<string, (req: unknown, ctx: HandlerContext) => Promise<object> | AsyncIterable<object>>;
