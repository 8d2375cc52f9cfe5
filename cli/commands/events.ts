// capsule events [--vm VM] [--since SEQ]: follows the event stream (WebSocket /v1/events or
// /v1/vms/:id/events), one line per event, until interrupted. A dropped connection is
// reopened from the last seq seen (?since=), so a server restart loses no events it kept.
import { Command } from 'commander';
import type WebSocket from 'ws';
import { nonNegativeInt } from '../args.js';
import type { ApiClient } from '../client.js';
import { withContext, type Context } from '../context.js';
import { ApiError, CliError } from '../errors.js';
import { shortTime } from '../output.js';
import { resolveVm, tenantQuery } from '../resolve.js';
import type { List, Vm, VmEvent } from '../types.js';

const RECONNECT_MS = 1000;
const MAX_RECONNECT_MS = 10_000;
/** Close codes after which reconnecting makes sense (going away, abnormal, restarting). */
const TRANSIENT_CLOSES = new Set([1001, 1006, 1011, 1012, 1013]);

/** One human line: time, seq, VM name, event, and the data in brief. */
export function formatEvent(e: VmEvent, vmName: string): string {
  return `${shortTime(e.timestamp)}  ${String(e.seq).padStart(6)}  ${vmName}  ${e.event}${summarize(e) ? '  ' + summarize(e) : ''}`;
}

function summarize(e: VmEvent): string {
  const d = e.data ?? {};
  if (e.event === 'STATE_CHANGED') return `${String(d.previous)} -> ${String(d.state)}`;
  // VM_CREATED carries the whole VM; a line needs only what it was made of.
  if (e.event === 'VM_CREATED') return `image=${String(d.image)} vcpus=${String(d.vcpus)} memoryMiB=${String(d.memoryMiB)}`;
  return Object.keys(d).length === 0 ? '' : JSON.stringify(d);
}

export function eventsCommand(): Command {
  return new Command('events').description('Follow VM events as they happen (until Ctrl-C)')
    .option('--vm <vm>', 'only this VM\'s events (name or id)')
    .option('--since <seq>', 'first replay the events after this seq (0: all the server kept)', nonNegativeInt)
    .option('-t, --tenant <tenant>', 'admin: only this tenant\'s VMs (name or id)')
    .action(withContext(async (ctx, o: { vm?: string; since?: number; tenant?: string }) => followEvents(ctx, o)));
}

async function followEvents(ctx: Context, o: { vm?: string; since?: number; tenant?: string }): Promise<void> {
  const client = ctx.client();
  const names = new Map<string, string>();
  let path = `/v1/events${tenantQuery(o.tenant)}`;
  if (o.vm) {
    const vm = await resolveVm(client, o.vm);
    names.set(vm.id, vm.name);
    path = `/v1/vms/${vm.id}/events`;
  } else {
    for (const vm of (await client.get<List<Vm>>('/v1/vms')).items) names.set(vm.id, vm.name);
  }
  let lastSeq = o.since;
  const print = (e: VmEvent) => {
    if (typeof e.seq === 'number') lastSeq = Math.max(lastSeq ?? 0, e.seq);
    if (e.event === 'VM_CREATED' && typeof e.data?.name === 'string') names.set(e.vm, e.data.name);
    // json: the API's message, one per line (NDJSON), for jq and friends.
    ctx.printer.raw(ctx.printer.json ? JSON.stringify(e) + '\n' : formatEvent(e, names.get(e.vm) ?? e.vm.slice(0, 8)) + '\n');
  };

  let stopping = false;
  let current: WebSocket | undefined;
  const stop = () => {
    stopping = true;
    current?.close(1000);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);

  let delay = RECONNECT_MS;
  for (let first = true; !stopping; first = false) {
    let ws: WebSocket;
    try {
      ws = await open(client, path, lastSeq, (data) => {
        try {
          print(JSON.parse(data.toString()) as VmEvent);
        } catch { /* not an event: ignored */ }
      });
    } catch (e) {
      // A refusal (401, 404, 429) is final; so is a server that is not there at all at the start.
      if (first || e instanceof ApiError) throw e;
      process.stderr.write(`capsule: ${(e as Error).message}; retrying in ${delay / 1000}s\n`);
      await sleepUnless(() => stopping, delay);
      delay = Math.min(delay * 2, MAX_RECONNECT_MS);
      continue;
    }
    delay = RECONNECT_MS;
    current = ws;
    if (stopping) {
      ws.close(1000);
      break;
    }
    const closed = await new Promise<{ code: number; reason: string }>((resolve) => {
      ws.on('error', () => { /* 'close' follows */ });
      ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
    });
    if (stopping) break;
    if (!TRANSIENT_CLOSES.has(closed.code)) {
      throw new CliError('events_closed', `the server closed the event stream: ${closed.reason || `code ${closed.code}`}`);
    }
    process.stderr.write(`capsule: event stream lost (${closed.reason || `code ${closed.code}`}); reconnecting\n`);
    await sleepUnless(() => stopping, delay);
  }
}

function open(client: ApiClient, path: string, since: number | undefined, onMessage: (data: Buffer) => void): Promise<WebSocket> {
  return client.openSocket(since === undefined ? path : `${path}${path.includes('?') ? '&' : '?'}since=${since}`, onMessage);
}

async function sleepUnless(stop: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!stop() && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
}
