// envd's `filesystem.Filesystem` service on capsule's guest agent (AgentClient: stat, read of a
// directory, mkdir, move, remove). Watching (WatchDir, CreateWatcher, ...) is not served: the
// agent has no file watcher; the router answers those `unimplemented`.
import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import type { AgentClient, FileStat } from '../../agent/client.js';
import { connectErrorOf, entryOf, userOfAuthorization } from '../mapping.js';
import { sandboxOfCall, type EnvdServiceImpl } from './context.js';

/** ListDir's `depth` beyond 1 walks subdirectories: bounded, as one call must stay one answer. */
const MAX_DEPTH = 8;
const MAX_ENTRIES = 10_000;

export function filesystemService(agent: AgentClient): EnvdServiceImpl {
  /** The call's sandbox, user and (checked) path. */
  const target = (ctx: HandlerContext, path: unknown, field = 'path') => {
    if (typeof path !== 'string' || path === '' || path.includes('\0') || path.length > 4096) {
      throw new ConnectError(`${field}: a non-empty path`, Code.InvalidArgument);
    }
    return { vmId: sandboxOfCall(ctx).vmId, user: userOfAuthorization(ctx.requestHeader.get('authorization')), path };
  };

  const listDir = async (vmId: string, user: string, path: string, depth: number, out: FileStat[]): Promise<void> => {
    const r = await agent.read(vmId, path, user);
    if (r.kind !== 'dir') {
      r.body.cancel().catch(() => undefined);
      throw new ConnectError(`path is not a directory: ${path}`, Code.InvalidArgument);
    }
    for (const e of r.entries) {
      if (out.length >= MAX_ENTRIES) return;
      out.push(e);
      if (depth > 1 && e.type === 'dir') await listDir(vmId, user, e.path, depth - 1, out);
    }
  };

  return {
    async stat(req: unknown, ctx: HandlerContext) {
      return guard(async () => {
        const t = target(ctx, (req as { path: string }).path);
        return { entry: entryOf(await agent.stat(t.vmId, t.path, t.user)) };
      });
    },

    async makeDir(req: unknown, ctx: HandlerContext) {
      return guard(async () => {
        const t = target(ctx, (req as { path: string }).path);
        const made = await agent.mkdir(t.vmId, t.path, t.user);
        // envd: AlreadyExists when it was there (the SDK's makeDir then returns false).
        if (!made.created) throw new ConnectError(`directory already exists: ${t.path}`, Code.AlreadyExists);
        return { entry: entryOf(await agent.stat(t.vmId, made.path, t.user)) };
      });
    },

    async move(req: unknown, ctx: HandlerContext) {
      return guard(async () => {
        const r = req as { source: string; destination: string };
        const from = target(ctx, r.source, 'source');
        const to = target(ctx, r.destination, 'destination');
        const moved = await agent.move(from.vmId, from.path, to.path, from.user);
        return { entry: entryOf(await agent.stat(from.vmId, moved.to, from.user)) };
      });
    },

    async listDir(req: unknown, ctx: HandlerContext) {
      return guard(async () => {
        const r = req as { path: string; depth: number };
        const t = target(ctx, r.path);
        const entries: FileStat[] = [];
        await listDir(t.vmId, t.user, t.path, Math.min(Math.max(r.depth || 1, 1), MAX_DEPTH), entries);
        return { entries: entries.map(entryOf) };
      });
    },

    async remove(req: unknown, ctx: HandlerContext) {
      return guard(async () => {
        const t = target(ctx, (req as { path: string }).path);
        await agent.remove(t.vmId, t.path, t.user);
        return {};
      });
    },
  };
}

async function guard<T>(fn: () => Promise<T>): Promise<T> {
  try { return await fn(); } catch (e) { throw connectErrorOf(e); }
}
