// The QMP fuzz cases (issue 10), shared by the drill against capsule-vmm on KVM
// (vmm/qmp/fuzz.kvm.test.ts) and its CPU-only twin against an in-process QMP server
// (vmm/qmp/fuzz.test.ts): random JSON values, unknown commands, known commands with random
// arguments, a 1 MiB line, deep nesting, truncated JSON on fresh connections, and SCM_RIGHTS
// messages carrying junk fds (1, 16 and 200 at once) with junk, invalid or unrelated commands.
// Every complete input must get {"error":{"class","desc"}} or a return.
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import fc from 'fast-check';
import { socketFd } from '../qmp/scm-reader.js';
import { sendWithAnyFds } from '../../lib/scm-rights.js';
import { connectUnix, onJsonLines } from './clients.js';

/** Commands that would end or stop the guest: the drill is about the VMM surviving its clients. */
export const SPARED = new Set(['quit', 'system_powerdown', 'system_reset', 'stop', 'cont', 'balloon', 'device_del', 'closefd']);

export interface QmpFuzzFigures { inputs: number; errorReplies: number; returnReplies: number; fdsSentWithScmRights: number }

/** `text` and `fds` in one sendmsg (any number of fds: the fuzz sends up to 200). */
function sendWithFds(sock: Socket, text: string, fds: number[]): void {
  const fd = socketFd(sock);
  assert.ok(fd !== undefined);
  sendWithAnyFds(fd, Buffer.from(text), fds);
}

/** A raw connection: what it sends, the JSON lines it got back. */
class Raw {
  static path = '';
  replies: Array<Record<string, unknown>> = [];
  closed = false;
  private constructor(readonly sock: Socket) {
    onJsonLines(sock, (m) => this.replies.push(m));
    sock.on('error', () => { /* the VMM may close on us; counted by the checks after */ });
    sock.on('close', () => { this.closed = true; });
  }
  static async open(negotiate: boolean): Promise<Raw> {
    const sock = await connectUnix(Raw.path);
    const r = new Raw(sock);
    await r.until(1); // greeting
    if (negotiate) {
      sock.write('{"execute":"qmp_capabilities"}\n');
      await r.until(2);
    }
    return r;
  }
  async until(n: number, ms = 10_000): Promise<void> {
    const end = Date.now() + ms;
    while (this.replies.length < n) {
      if (Date.now() > end) throw new Error(`expected ${n} messages, got ${JSON.stringify(this.replies).slice(0, 500)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  /** Sends `text` then a marker command; resolves the messages that came before the marker's reply. */
  async roundTrip(text: string | (() => void)): Promise<Array<Record<string, unknown>>> {
    const from = this.replies.length;
    if (typeof text === 'string') this.sock.write(text);
    else text();
    const marker = `m${Math.random().toString(36).slice(2)}`;
    this.sock.write(`\n{"execute":"query-status","id":"${marker}"}\n`);
    const end = Date.now() + 20_000;
    while (!this.replies.slice(from).some((m) => m.id === marker)) {
      if (Date.now() > end) throw new Error(`no reply to the marker after ${typeof text === "string" ? JSON.stringify(text).slice(0, 200) : "an sendmsg with fds"}; got ${JSON.stringify(this.replies.slice(from)).slice(0, 300)}; closed ${this.closed}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    return this.replies.slice(from).filter((m) => m.id !== marker && !('event' in m));
  }
  close(): void { this.sock.destroy(); }
}

const isError = (m: Record<string, unknown>) => {
  const e = m.error as { class?: unknown; desc?: unknown } | undefined;
  return typeof e === 'object' && e !== null && typeof e.class === 'string' && typeof e.desc === 'string';
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs every case against the QMP socket at `path`; `commands`: the server's (query-commands), less SPARED. */
export async function fuzzQmp(path: string, commands: string[], seed: number): Promise<QmpFuzzFigures> {
  Raw.path = path;
  const SEED = seed;
  const work = mkdtempSync(join(tmpdir(), 'capsule-qmp-fuzz-junk-'));
  let errors = 0;
  let returns = 0;
  let inputs = 0;
  const tally = (ms: Array<Record<string, unknown>>) => { for (const m of ms) { if (isError(m)) errors++; else if ('return' in m) returns++; else assert.fail(`neither error nor return: ${JSON.stringify(m)}`); } };

  // 1. Random JSON values, one per line, on one negotiated connection (rate: 100/s per connection: paced).
  const conn = await Raw.open(true);
  const json = fc.sample(fc.json({ maxDepth: 4 }), { seed: SEED, numRuns: 300 });
  for (const text of json) {
    const got = await conn.roundTrip(text + '\n');
    inputs++;
    tally(got);
    if (!text.startsWith('{') && !text.startsWith('[')) continue; // a bare scalar is junk outside an object: one error per run
    assert.ok(got.length >= 1 && got.every(isError) || got.some((m) => 'return' in m), `${text.slice(0, 200)} → ${JSON.stringify(got).slice(0, 300)}`);
    await sleep(25);
  }
  // 2. Unknown commands and known ones with random arguments.
  const unknown = fc.sample(fc.string({ minLength: 1, maxLength: 40 }).filter((s) => !commands.includes(s) && !SPARED.has(s) && s !== 'qmp_capabilities'), { seed: SEED, numRuns: 100 });
  for (const name of unknown) {
    const got = await conn.roundTrip(JSON.stringify({ execute: name }) + '\n');
    inputs++;
    tally(got);
    assert.equal((got[0]?.error as { class?: string })?.class, 'CommandNotFound', JSON.stringify(got));
    await sleep(25);
  }
  const argSamples = fc.sample(fc.tuple(fc.constantFrom(...commands), fc.dictionary(fc.constantFrom('id', 'device', 'fdname', 'value', 'path', 'node-name', 'driver', 'filename', 'size', 'qom-path', 'property', 'x'), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 })), { seed: SEED, numRuns: 300 });
  for (const [execute, args] of argSamples) {
    const got = await conn.roundTrip(JSON.stringify({ execute, arguments: args }) + '\n');
    inputs++;
    tally(got);
    assert.equal(got.length, 1, `${execute} ${JSON.stringify(args)} → ${JSON.stringify(got)}`);
    await sleep(25);
  }
  // 3. A 1 MiB line, deep nesting within and beyond the 64 KiB object limit: errors, and the connection goes on.
  const big = await conn.roundTrip(`{"execute":"query-status","arguments":{"a":"${'x'.repeat(1024 * 1024)}"}}\n`);
  assert.ok(big.length === 1 && isError(big[0]!), JSON.stringify(big).slice(0, 300));
  const deepInside = await conn.roundTrip(`{"execute":"query-status","arguments":{"a":${'['.repeat(30_000)}${']'.repeat(30_000)}}}\n`);
  assert.ok(deepInside.length === 1, JSON.stringify(deepInside).slice(0, 300));
  const deepBeyond = await conn.roundTrip(`${'['.repeat(200_000)}${']'.repeat(200_000)}\n`);
  assert.ok(deepBeyond.length === 1 && isError(deepBeyond[0]!), JSON.stringify(deepBeyond).slice(0, 300));
  const line1m = await conn.roundTrip(`${'z'.repeat(1024 * 1024)}\n`);
  assert.ok(line1m.length >= 1 && line1m.every(isError), JSON.stringify(line1m).slice(0, 300));
  inputs += 4;
  tally([...big, ...deepInside, ...deepBeyond, ...line1m]);
  conn.close();

  // 4. Truncated JSON on fresh connections (a cut object swallows what follows, as in QEMU: closed after).
  const cuts = fc.sample(fc.tuple(fc.constantFrom(...commands), fc.nat()), { seed: SEED, numRuns: 50 });
  for (const [execute, at] of cuts) {
    const r = await Raw.open(at % 2 === 0);
    const text = JSON.stringify({ execute, arguments: { id: 'x'.repeat(at % 200) } });
    r.sock.write(text.slice(0, 1 + (at % (text.length - 1))));
    await sleep(20);
    r.close();
    inputs++;
  }

  // 5. SCM_RIGHTS with junk: one fd, 16, and 200 in one message, with junk text, invalid JSON, an
  //    unknown command, a command that takes no fd, getfd with bad arguments, and fds on a connection closed at once.
  const junkFile = join(work, 'junk');
  writeFileSync(junkFile, 'junk');
  const withFds = await Raw.open(true);
  const cases: Array<[string, number]> = [
    ['garbage\n', 1], ['{"execute":}\n', 16], ['{"execute":"no-such-command"}\n', 16], ['{"execute":"query-status"}\n', 200],
    ['{"execute":"getfd","arguments":{}}\n', 3], ['{"execute":"getfd","arguments":{"fdname":7}}\n', 1], ['[1,2,3]\n', 200], ['\n', 5],
  ];
  let fdsSent = 0;
  for (const [text, n] of cases) {
    const mine = Array.from({ length: n }, () => openSync(junkFile, 'r'));
    try {
      const got = await withFds.roundTrip(() => sendWithFds(withFds.sock, text, mine)).catch((e: Error) => { throw new Error(`${JSON.stringify(text)} with ${n} fds: ${e.message}`); });
      tally(got);
      fdsSent += n;
    } finally {
      for (const f of mine) closeSync(f);
    }
    inputs++;
    await sleep(20);
  }
  withFds.close();
  for (let i = 0; i < 10; i++) {
    const r = await Raw.open(i % 2 === 0);
    const mine = Array.from({ length: 16 }, () => openSync(junkFile, 'r'));
    sendWithFds(r.sock, '{"execute":"getfd","arguments":{"fdname":"', mine); // never completed
    fdsSent += 16;
    for (const f of mine) closeSync(f);
    r.close();
    inputs++;
  }
  await sleep(1000);

  return { inputs, errorReplies: errors, returnReplies: returns, fdsSentWithScmRights: fdsSent };
}
