#!/usr/bin/env node
// Measures the syscalls of the VMM's steady state: starts dist/seccomp/policies/vmm-workload.js,
// waits for init to finish (READY), attaches `strace -f -c -p PID` (all threads), drives the
// JSON socket for a while from a client, asks the workload to quit, and prints strace's table.
// Usage: npx tsc -p tsconfig.json && node seccomp/policies/measure-vmm.mjs [SECONDS] [--install]
import { spawn } from 'node:child_process';
import { createConnection } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const seconds = Number(process.argv.find((a) => /^\d+$/.test(a)) ?? 5);
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'vmm-measure-'));
const sock = join(dir, 'qmp.sock');
const extra = process.argv.includes('--install') ? ['--install'] : [];
const wl = spawn(process.execPath, [join(root, 'dist/seccomp/policies/vmm-workload.js'), sock, join(dir, 'vmm.log'), ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
const pid = await new Promise((resolve, reject) => {
  wl.stdout.on('data', (d) => { const m = /READY (\d+)/.exec(String(d)); if (m) resolve(Number(m[1])); });
  wl.on('exit', (c, s) => reject(new Error(`workload exited early ${c} ${s}`)));
});
const strace = spawn('strace', ['-f', '-c', '-p', String(pid)], { stdio: ['ignore', 'inherit', 'pipe'] });
let report = '';
strace.stderr.on('data', (d) => (report += d));
await new Promise((r) => setTimeout(r, 1000)); // let strace attach to every thread
const c = createConnection(sock);
c.setEncoding('utf8');
let replies = 0;
c.on('data', (d) => (replies += d.split('\n').length - 1));
const end = Date.now() + seconds * 1000;
let id = 0;
while (Date.now() < end) {
  for (const execute of ['query-status', 'echo', 'query-block']) c.write(JSON.stringify({ execute, id: id++ }) + '\n');
  c.write('not json\n');
  await new Promise((r) => setTimeout(r, 20));
}
c.write(JSON.stringify({ execute: 'quit', id: id++ }) + '\n');
const [code, sig] = await new Promise((r) => wl.on('exit', (a, b) => r([a, b])));
await new Promise((r) => strace.on('exit', r));
process.stdout.write(report);
console.log(`workload exit=${code} signal=${sig} requests=${id} replies+events=${replies}`);
