// Test helpers for VM networks (server/network/*.test.ts and the native lab test): an "outside"
// network namespace connected to the root namespace like an uplink (a veth pair with a /24; a
// remote host the VMs reach only through the host's NAT) with an HTTP server on it, a guest shell
// runner, and the list of what a server left on the host.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import type { ConsoleCollector } from './harness.js';

export const OUT_HOST = '198.51.100.1';
export const OUT_REMOTE = '198.51.100.2';
export const OUT_PORT = 8000;

export function sh(cmd: string, args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

export function must(cmd: string, args: string[]): string {
  const r = sh(cmd, args);
  assert.ok(r.ok, `${cmd} ${args.join(' ')}: ${r.out}`);
  return r.out;
}

/** Like sh() without blocking this process (whose own listeners may be what the command talks to). */
export function shAsync(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (out += d.toString()));
    c.once('exit', () => resolve(out));
  });
}

export interface Outside { ns: string; hostIf: string; server: ChildProcess }

/** The outside: a namespace behind a veth pair (the root namespace's end is 198.51.100.1/24), an HTTP server on 198.51.100.2:8000 that names the peer it sees. */
export function createOutside(): Outside {
  const ns = `capsule-test-out-${process.pid}`;
  const hostIf = `tout${process.pid % 100000}`; // not "cap*": an uplink, not a VM
  must('ip', ['netns', 'add', ns]);
  must('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  must('ip', ['addr', 'add', `${OUT_HOST}/24`, 'dev', hostIf]);
  must('ip', ['link', 'set', hostIf, 'up']);
  must('ip', ['-n', ns, 'addr', 'add', `${OUT_REMOTE}/24`, 'dev', 'eth0']);
  must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
  must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  const server = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e',
    `require('http').createServer((q, r) => r.end('outside-ok from ' + q.socket.remoteAddress + '\\n')).listen(${OUT_PORT}, '${OUT_REMOTE}')`], { stdio: 'ignore' });
  return { ns, hostIf, server };
}

export function removeOutside(o: Outside | undefined): void {
  if (!o) return;
  o.server.kill();
  sh('ip', ['link', 'del', o.hostIf]);
  sh('ip', ['netns', 'del', o.ns]);
}

/** What a server (by its instance tag) left on the host: namespaces, links, nftables tables. */
export function leftovers(tag: string): string[] {
  const ns = sh('ip', ['netns', 'list']).out.split('\n').filter((l) => l.startsWith(`capsule-${tag}-`));
  const links = sh('ip', ['-o', 'link', 'show']).out.split('\n').filter((l) => l.includes(`cap${tag}`));
  const tables = sh('nft', ['list', 'tables']).out.split('\n').filter((l) => l.includes(`capsule-${tag}-`));
  return [...ns, ...links, ...tables];
}

/** Removes what leftovers(tag) lists (a failed test's server was killed and its data directory is gone). */
export function removeLeftovers(tag: string): void {
  for (const l of sh('ip', ['netns', 'list']).out.split('\n')) if (l.startsWith(`capsule-${tag}-`)) sh('ip', ['netns', 'del', l.split(' ')[0]!]);
  for (const l of sh('ip', ['-o', 'link', 'show']).out.split('\n')) { const m = new RegExp(`(cap${tag}[0-9a-f]{8})`).exec(l); if (m) sh('ip', ['link', 'del', m[1]!]); }
  for (const l of sh('nft', ['list', 'tables']).out.split('\n')) { const m = /^table inet (capsule-\S+)$/.exec(l.trim()); if (m && m[1]!.startsWith(`capsule-${tag}-`)) sh('nft', ['delete', 'table', 'inet', m[1]!]); }
}

let counter = 0;
/** Runs `cmd` in the guest's shell on the console; its output and exit status. */
export async function guest(cons: ConsoleCollector, cmd: string, timeoutMs = 90_000): Promise<{ out: string; status: number }> {
  const t = `R${++counter}`;
  cons.send(`X=$(${cmd} 2>&1); echo "<<${t}"">$?>$X<<"\n`);
  const re = new RegExp(`<<${t}>(\\d+)>([^]*?)<<`);
  await cons.waitFor(re, timeoutMs);
  const m = re.exec(cons.text)!;
  return { status: Number(m[1]), out: m[2]!.trim() };
}

/** An HTTP GET of the outside from the guest (busybox nc: the static busybox's wget crashes resolving in the initramfs). */
export const GET_OUTSIDE = `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 ${OUT_REMOTE} ${OUT_PORT} | grep outside-ok`;

/** The modules VM networks need; the nested lab's L1 cannot autoload them (its usermode helper's root is its initramfs). */
export function loadNetworkModules(): void {
  sh('modprobe', ['-a', 'tun', 'veth', 'nf_tables', 'nf_conntrack', 'nf_nat', 'nft_ct', 'nft_nat', 'nft_masq', 'nft_chain_nat', 'nft_fib', 'nft_fib_inet', 'nft_fib_ipv4', 'nft_fib_ipv6']);
}
