// A guest booted straight under QEMU (no server): the image tests' driver. The serial console
// is the process's stdio; a QMP socket sends the ACPI power button.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface GuestOptions {
  kernel: string;
  initrd?: string;
  cmdline: string;
  /** virtio-blk-pci disks in order (vda, vdb, ...). */
  disks?: Array<{ file: string; readOnly?: boolean }>;
  /** A virtio-pmem device (/dev/pmem0) backed read-only by this file (size: a multiple of 2 MiB). */
  pmem?: string;
  memoryMiB?: number;
  /** A virtio-net NIC on QEMU's user network (guest 10.0.2.15, DHCP; the host's 127.0.0.1 is 10.0.2.2). */
  net?: boolean;
  qemu?: string;
}

export class QemuGuest {
  output = '';
  readonly exited: Promise<number | null>;
  private readonly proc: ChildProcess;
  private readonly dir: string;
  private readonly qmpPath: string;

  constructor(opts: GuestOptions) {
    this.dir = mkdtempSync(join(tmpdir(), 'capsule-guest-'));
    this.qmpPath = join(this.dir, 'qmp');
    const mem = String(opts.memoryMiB ?? 512) + (opts.pmem ? 'M,slots=2,maxmem=16G' : '');
    const args = [
      '-M', 'pc', '-accel', 'tcg', '-m', mem, '-smp', '1',
      '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot', '-nodefaults',
      '-qmp', `unix:${this.qmpPath},server=on,wait=off`,
      '-kernel', opts.kernel, ...(opts.initrd ? ['-initrd', opts.initrd] : []), '-append', opts.cmdline,
    ];
    (opts.disks ?? []).forEach((d, i) => {
      args.push('-drive', `file=${d.file},format=raw,if=none,id=disk${i},readonly=${d.readOnly ? 'on' : 'off'}`);
      args.push('-device', `virtio-blk-pci,drive=disk${i}`);
    });
    if (opts.net) args.push('-netdev', 'user,id=net0', '-device', 'virtio-net-pci,netdev=net0');
    if (opts.pmem) {
      args.push('-object', `memory-backend-file,id=pmem0,mem-path=${opts.pmem},size=${statSync(opts.pmem).size},share=off,readonly=on`);
      args.push('-device', 'virtio-pmem-pci,memdev=pmem0');
    }
    this.proc = spawn(opts.qemu ?? process.env.CAPSULE_QEMU ?? 'qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdout!.on('data', (d: Buffer) => { this.output += d.toString('utf8'); });
    this.proc.stderr!.on('data', (d: Buffer) => { this.output += d.toString('utf8'); });
    this.exited = new Promise((res) => this.proc.once('exit', (code) => { rmSync(this.dir, { recursive: true, force: true }); res(code); }));
  }

  /** Waits for `needle` in the console output after offset `from` (default: anywhere). */
  async waitFor(needle: string | RegExp, timeoutMs = 120_000, from = 0): Promise<string> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const text = this.output.slice(from);
      const m = typeof needle === 'string' ? (text.includes(needle) ? needle : null) : needle.exec(text)?.[0] ?? null;
      if (m !== null) return m;
      if (this.proc.exitCode !== null) throw new Error(`QEMU exited (${this.proc.exitCode}) before ${needle}:\n${this.output.slice(-3000)}`);
      if (Date.now() > end) throw new Error(`timed out waiting for ${needle}:\n${this.output.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * Waits for `ready` (the image's ready marker), then until the console shell answers: what
   * is typed before the shell has the terminal may be lost, so a probe is typed until one
   * comes back.
   */
  async ready(ready: RegExp, timeoutMs = 180_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    await this.waitFor(ready, timeoutMs);
    for (let i = 0; ; i++) {
      const from = this.output.length;
      this.proc.stdin!.write(`echo "probe${i}""-ok"\n`);
      try {
        await this.waitFor(`probe${i}-ok`, 3000, from);
        return;
      } catch (e) {
        if (Date.now() > end || this.proc.exitCode !== null) throw e;
      }
    }
  }

  /**
   * Types a command on the console and waits for its output: the command prints
   * `<tag>-begin`, its own output, `<tag>-end` (the tags are split in the typed line, so the
   * echo never matches). Returns what came between.
   */
  async run(command: string, timeoutMs = 120_000): Promise<string> {
    const tag = `cap${Math.random().toString(36).slice(2, 8)}`;
    const from = this.output.length;
    this.proc.stdin!.write(`echo "${tag}""-begin"; ${command}; echo "${tag}""-end"\n`);
    const re = new RegExp(`${tag}-begin\\r?\\n([\\s\\S]*?)${tag}-end`);
    await this.waitFor(re, timeoutMs, from);
    return re.exec(this.output.slice(from))![1]!.replace(/\r/g, '');
  }

  /** Sends a QMP command (after the capabilities handshake). */
  async qmp(command: string): Promise<void> {
    await new Promise<void>((res, rej) => {
      const s = connect(this.qmpPath);
      let buf = '';
      let step = 0;
      s.on('data', (d) => {
        buf += d.toString();
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          if (step === 0 && msg.QMP) { s.write('{"execute":"qmp_capabilities"}\n'); step = 1; }
          else if (step === 1 && 'return' in msg) { s.write(`{"execute":"${command}"}\n`); step = 2; }
          else if (step === 2 && ('return' in msg || 'error' in msg)) { s.end(); if (msg.error) rej(new Error(msg.error.desc)); else res(); }
        }
      });
      s.on('error', rej);
    });
  }

  kill(): void {
    if (this.proc.exitCode === null) this.proc.kill('SIGKILL');
  }
}
