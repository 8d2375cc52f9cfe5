// envd's `process.Process` service on capsule's guest agent (AgentClient: exec, attach,
// processes, signal). A translation only: the agent runs and keeps the processes.
//
// Processes started here are the agent's *background* processes: they outlive the call that
// started them (a client that disconnects, or whose deadline passes, stops following; the
// process goes on, and Connect reattaches by pid), as on E2B, where commands are not lost when
// a stream ends. Stdin, closing it and pty resizes need the agent connection that follows the
// process: this server keeps it (`live`) while a Start or Connect stream is open.
import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import type { AgentClient, ExecHandlers, ExecStream, ExitInfo } from '../../agent/client.js';
import { connectErrorOf, userOfAuthorization } from '../mapping.js';
import { sandboxOfCall, type EnvdServiceImpl } from './context.js';
import { EventQueue } from './events.js';
import { Signal } from './proto.js';

// The request shapes this file reads (protobuf-es messages: oneofs are {case, value}).
interface Selector { selector: { case: 'pid'; value: number } | { case: 'tag'; value: string } | { case: undefined } }
interface ProcessConfig { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string }
interface StartRequest { process?: ProcessConfig; pty?: { size?: { cols: number; rows: number } }; tag?: string; stdin?: boolean }
type ProcessEventInit = Record<string, unknown>;

/** Go's names for the signals a process may end by (envd's `status` is Go's ProcessState.String()). */
const GO_SIGNAL_TEXT: Record<string, string> = {
  SIGKILL: 'killed', SIGTERM: 'terminated', SIGINT: 'interrupt', SIGHUP: 'hangup', SIGQUIT: 'quit', SIGPIPE: 'broken pipe', SIGABRT: 'aborted', SIGSEGV: 'segmentation fault',
};

/** The keepalive event's interval: the SDK asks with Keepalive-Ping-Interval (seconds). */
function keepaliveMs(ctx: HandlerContext): number {
  const s = Number(ctx.requestHeader.get('keepalive-ping-interval'));
  return Number.isFinite(s) && s >= 1 ? Math.min(s, 300) * 1000 : 50_000;
}

const event = (ev: ProcessEventInit) => ({ event: { event: ev } });

export function endEvent(exit: ExitInfo): ProcessEventInit {
  const signalled = exit.exitCode === null;
  const status = signalled ? `signal: ${GO_SIGNAL_TEXT[exit.signal ?? ''] ?? exit.signal ?? 'unknown'}` : `exit status ${exit.exitCode}`;
  return {
    case: 'end',
    value: { exitCode: exit.exitCode ?? -1, exited: !signalled, status, ...(exit.timedOut ? { error: 'the command timed out and was killed' } : {}) },
  };
}

export function processService(agent: AgentClient): EnvdServiceImpl {
  /** The agent streams this server follows, by `${vmId}:${pid}`. */
  const live = new Map<string, ExecStream>();
  const key = (vmId: string, pid: number) => `${vmId}:${pid}`;

  const pidOf = async (vmId: string, sel: Selector | undefined): Promise<number> => {
    const s = sel?.selector;
    if (s?.case === 'pid') return s.value;
    if (s?.case === 'tag') {
      const found = (await agent.processes(vmId)).processes.find((p) => p.tag === s.value && p.running);
      if (!found) throw new ConnectError(`no running process tagged ${JSON.stringify(s.value)}`, Code.NotFound);
      return found.pid;
    }
    throw new ConnectError('process: a pid or a tag is required', Code.InvalidArgument);
  };

  const followed = async (vmId: string, sel: Selector | undefined): Promise<ExecStream> => {
    const pid = await pidOf(vmId, sel);
    const s = live.get(key(vmId, pid));
    if (!s) throw new ConnectError(`process ${pid} is not followed by a stream on this server: open one with Connect first (stdin and resizes travel on it)`, Code.FailedPrecondition);
    return s;
  };

  /** Output and the exit of an agent stream as ProcessEvents, in order. */
  const handlers = (q: EventQueue<ProcessEventInit>, pty: boolean): ExecHandlers => ({
    onOutput: (ch, data) => {
      q.push({ case: 'data', value: { output: { case: pty ? 'pty' : ch === 1 ? 'stdout' : 'stderr', value: new Uint8Array(data) } } }, data.length);
    },
    onDetached: () => q.end(new ConnectError('another client attached to this process', Code.Aborted)),
  });

  /** Streams one process: its start, output, and end; keepalives while it is quiet. */
  async function* follow(vmId: string, pid: number, s: ExecStream, q: EventQueue<ProcessEventInit>, ctx: HandlerContext) {
    live.set(key(vmId, pid), s);
    s.done.then((exit) => { if (exit) q.push(endEvent(exit)); q.end(); }, (e) => q.end(connectErrorOf(e)));
    const stop = () => q.end();
    ctx.signal.addEventListener('abort', stop, { once: true });
    const keepalive = setInterval(() => { if (q.isEmpty) q.push({ case: 'keepalive', value: {} }); }, keepaliveMs(ctx));
    try {
      yield event({ case: 'start', value: { pid } });
      for await (const ev of q.drain()) yield event(ev);
    } finally {
      clearInterval(keepalive);
      ctx.signal.removeEventListener('abort', stop);
      if (live.get(key(vmId, pid)) === s) live.delete(key(vmId, pid));
      // Lets go of the process: it is a background one, so it keeps running.
      s.close();
    }
  }

  return {
    async *start(req: unknown, ctx: HandlerContext) {
      const sb = sandboxOfCall(ctx);
      const r = req as StartRequest;
      const p = r.process;
      if (!p?.cmd) throw new ConnectError('process.cmd is required', Code.InvalidArgument);
      const user = wrap(() => userOfAuthorization(ctx.requestHeader.get('authorization')));
      const pty = r.pty?.size ? { cols: clamp(r.pty.size.cols, 80), rows: clamp(r.pty.size.rows, 24) } : undefined;
      // A terminal always takes input (envd's `stdin` flag is for pipes).
      let stream: ExecStream | undefined;
      const q = new EventQueue<ProcessEventInit>(() => stream?.pause(), () => stream?.resume());
      try {
        stream = await agent.exec(sb.vmId, {
          cmd: [p.cmd, ...p.args], env: { ...sb.envVars, ...p.envs }, user, background: true,
          ...(p.cwd ? { cwd: p.cwd } : {}), ...(r.stdin || pty ? { stdinOpen: true } : {}), ...(pty ? { pty } : {}), ...(r.tag !== undefined ? { tag: r.tag } : {}),
        }, handlers(q, !!pty));
        const info = await stream.started;
        yield* follow(sb.vmId, info.pid, stream, q, ctx);
      } catch (e) {
        stream?.close();
        throw connectErrorOf(e);
      }
    },

    async *connect(req: unknown, ctx: HandlerContext) {
      const sb = sandboxOfCall(ctx);
      let stream: ExecStream | undefined;
      const q = new EventQueue<ProcessEventInit>(() => stream?.pause(), () => stream?.resume());
      try {
        const pid = await pidOf(sb.vmId, (req as { process?: Selector }).process);
        const info = (await agent.processes(sb.vmId)).processes.find((x) => x.pid === pid);
        if (!info) throw new ConnectError(`no process ${pid}`, Code.NotFound);
        stream = await agent.attach(sb.vmId, pid, handlers(q, info.pty));
        // A running process announces itself; a finished one sends its kept output and its end.
        await Promise.race([stream.started, stream.done]);
        yield* follow(sb.vmId, pid, stream, q, ctx);
      } catch (e) {
        stream?.close();
        throw connectErrorOf(e);
      }
    },

    async list(_req: unknown, ctx: HandlerContext) {
      const sb = sandboxOfCall(ctx);
      const all = await call(() => agent.processes(sb.vmId));
      return {
        processes: all.processes.filter((p) => p.running).map((p) => ({
          pid: p.pid, config: { cmd: p.cmd[0] ?? '', args: p.cmd.slice(1), envs: {} }, ...(p.tag !== undefined ? { tag: p.tag } : {}),
        })),
      };
    },

    async sendSignal(req: unknown, ctx: HandlerContext) {
      const sb = sandboxOfCall(ctx);
      const r = req as { process?: Selector; signal: number };
      const name = r.signal === Signal.SIGKILL ? 'SIGKILL' : r.signal === Signal.SIGTERM ? 'SIGTERM' : undefined;
      if (!name) throw new ConnectError('signal: SIGNAL_SIGTERM or SIGNAL_SIGKILL', Code.InvalidArgument);
      const pid = await call(() => pidOf(sb.vmId, r.process));
      await call(() => agent.signal(sb.vmId, pid, name));
      return {};
    },

    async sendInput(req: unknown, ctx: HandlerContext) {
      const sb = sandboxOfCall(ctx);
      const r = req as { process?: Selector; input?: { input: { case: 'stdin' | 'pty'; value: Uint8Array } | { case: undefined } } };
      const input = r.input?.input;
      if (!input?.case) throw new ConnectError('input: stdin or pty bytes', Code.InvalidArgument);
      const s = await call(() => followed(sb.vmId, r.process));
      s.stdin(Buffer.from(input.value));
      return {};
    },

    async closeStdin(req: unknown, ctx: HandlerContext) {
      const sb = sandboxOfCall(ctx);
      const s = await call(() => followed(sb.vmId, (req as { process?: Selector }).process));
      s.eof();
      return {};
    },

    async update(req: unknown, ctx: HandlerContext) {
      const sb = sandboxOfCall(ctx);
      const r = req as { process?: Selector; pty?: { size?: { cols: number; rows: number } } };
      const s = await call(() => followed(sb.vmId, r.process));
      if (r.pty?.size) s.resize(clamp(r.pty.size.cols, 80), clamp(r.pty.size.rows, 24));
      return {};
    },
  };
}

const clamp = (n: number, dflt: number) => (Number.isInteger(n) && n >= 1 ? Math.min(n, 1000) : dflt);

/** A capsule call's failure as the Connect error the SDK understands. */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  try { return await fn(); } catch (e) { throw connectErrorOf(e); }
}

function wrap<T>(fn: () => T): T {
  try { return fn(); } catch (e) { throw connectErrorOf(e); }
}
