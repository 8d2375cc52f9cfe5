// The jail's command builder: pure functions from a plan (what to bind, which uid, which
// limits, which command) to the one command line the server spawns. No I/O here: the host
// facts (resolved paths, tool locations, cgroup files) come in as data, so every piece is
// unit-tested (command.test.ts) and the integration test checks the result on a real VMM.
//
// What the command does (docs/jail.md):
//   unshare --fork --pid --mount --propagation private --kill-child -- sh -c SCRIPT
// unshare (a host pid, the one the server tracks) forks sh, pid 1 of a new PID namespace in a
// new private mount namespace. sh joins the VM's cgroups, builds the root inside the VM
// directory (read-only binds, a small tmpfs /dev with its own nodes, a private /proc, a tmpfs
// /tmp), then runs, as its child,
//   prlimit --nofile --fsize -- chroot ROOT setpriv --reuid --regid ... -- VMM ARGS...
// and exits with the VMM's status. sh stays root so that --kill-child's parent-death signal
// (cleared by a uid change) stays armed: kill the unshare process and sh dies, and with pid 1
// the kernel kills everything else in the namespace.
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import type { Image } from '../db/images.js';
import type { ForegroundPaths } from '../hypervisors/types.js';

/** A read-only bind of a host file or directory to `target` (absolute, inside the root). */
export interface JailMount {
  source: string;
  target: string;
  kind: 'dir' | 'file';
}

/** A symbolic link recreated inside the root (e.g. Debian's /lib -> usr/lib). */
export interface JailSymlink {
  path: string;
  target: string;
}

/** Absolute host paths of the tools the jail uses. */
export interface JailTools {
  sh: string;
  unshare: string;
  setpriv: string;
  prlimit: string;
  mount: string;
  chroot: string;
  mknod: string;
  mkdir: string;
  ln: string;
  chown: string;
}

export interface JailSpec {
  vmId: string;
  /** Host path of the VM directory: the VMM's root. */
  root: string;
  uid: number;
  gid: number;
  nofile: number;
  fsizeBytes: number;
  mounts: readonly JailMount[];
  symlinks: readonly JailSymlink[];
  /** Give the VMM its own /dev/kvm (owned by the jail's uid). */
  kvm: boolean;
  /** Host cgroup.procs files sh writes itself into before anything else. */
  cgroupProcs: readonly string[];
  /** The VMM: absolute path inside the root, and its arguments (already with in-root paths). */
  command: string;
  args: readonly string[];
  env: Readonly<Record<string, string>>;
  tools: JailTools;
}

export interface JailCommand {
  command: string;
  args: string[];
  env: Record<string, string>;
  /** The script sh runs (also inside args), for logs and tests. */
  script: string;
}

/** Where a jailed VMM finds things, inside its root. */
export const IN_ROOT = {
  qmpSocket: '/qmp.sock',
  consoleSocket: '/console.sock',
  kernel: '/image/kernel',
  initrd: '/image/initrd',
} as const;

export const IN_ROOT_PATHS: ForegroundPaths = { qmpSocket: IN_ROOT.qmpSocket, consoleSocket: IN_ROOT.consoleSocket };

/** Entries of the root the jail creates, besides bind targets' top-level directories. */
export const SKELETON = ['dev', 'proc', 'tmp'] as const;

/** The environment a jailed VMM starts with: nothing of the server's, only this and its backend's. */
export const JAIL_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

/** The image as the VMM sees it inside the root, and the binds that put it there. */
export function imageInRoot(image: Image): { image: Image; mounts: JailMount[] } {
  const mounts: JailMount[] = [{ source: image.kernel, target: IN_ROOT.kernel, kind: 'file' }];
  if (image.initrd) mounts.push({ source: image.initrd, target: IN_ROOT.initrd, kind: 'file' });
  return { image: { ...image, kernel: IN_ROOT.kernel, initrd: image.initrd ? IN_ROOT.initrd : image.initrd }, mounts };
}

/**
 * The VMM's uid and gid: the configured fixed pair, or base + a number derived from the VM id
 * (the first 32 bits of its SHA-256, modulo the range's size), the same on every launch.
 */
export function jailIdentity(vmId: string, cfg: { uid?: number | undefined; gid?: number | undefined; uidBase: number; uidCount: number }): { uid: number; gid: number } {
  if (cfg.uid !== undefined) return { uid: cfg.uid, gid: cfg.gid ?? cfg.uid };
  const n = createHash('sha256').update(vmId).digest().readUInt32BE(0) % cfg.uidCount;
  return { uid: cfg.uidBase + n, gid: cfg.uidBase + n };
}

/** POSIX shell single-quoting. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

function assertAbsolute(what: string, p: string): void {
  if (!posix.isAbsolute(p) || posix.normalize(p) !== p || p.includes('\0')) throw new Error(`jail: ${what} must be a normalized absolute path: ${JSON.stringify(p)}`);
}

/** Checks a plan for mistakes that would make the jail unsafe or wrong. */
export function validateSpec(spec: JailSpec): void {
  assertAbsolute('root', spec.root);
  if (spec.root === '/') throw new Error('jail: the root cannot be /');
  if (spec.uid <= 0 || spec.gid <= 0) throw new Error('jail: the VMM must not run as root (uid/gid 0)');
  assertAbsolute('command', spec.command);
  for (const m of spec.mounts) {
    assertAbsolute('mount source', m.source);
    assertAbsolute('mount target', m.target);
    if (m.target === '/') throw new Error('jail: cannot bind over the root');
  }
  for (const l of spec.symlinks) assertAbsolute('symlink', l.path);
  for (const p of spec.cgroupProcs) assertAbsolute('cgroup.procs', p);
  for (const t of Object.values(spec.tools)) assertAbsolute('tool', t);
}

/** Builds the command the server spawns (detached, stdout/stderr on the VM's log). */
export function buildJailCommand(spec: JailSpec): JailCommand {
  validateSpec(spec);
  const t = spec.tools;
  const q = shellQuote;
  const r = (p: string) => `"$R"${q(p)}`;
  const lines: string[] = [
    `# capsule-jail vm=${q(spec.vmId)}`,
    `die() { echo "capsule-jail: $*" >&2; exit 121; }`,
    `R=${q(spec.root)}`,
    ...spec.cgroupProcs.map((f) => `echo $$ > ${q(f)} || die ${q(`cannot join cgroup ${f}`)}`),
  ];
  // /tmp first: a repository or image under the host's /tmp is bound below it, and a tmpfs
  // mounted afterwards would hide those binds.
  lines.push(`${q(t.mkdir)} -p "$R/tmp" && ${q(t.mount)} -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=16m capsule-tmp "$R/tmp" || die 'cannot mount /tmp'`);
  // Mount points, parents first (sorted), then the binds (read-only, no setuid, no devices).
  const dirs = new Set<string>(SKELETON.map((d) => `/${d}`));
  for (const m of spec.mounts) dirs.add(m.kind === 'dir' ? m.target : posix.dirname(m.target));
  for (const l of spec.symlinks) dirs.add(posix.dirname(l.path));
  dirs.delete('/');
  lines.push(`${q(t.mkdir)} -p ${[...dirs].sort().map(r).join(' ')} || die 'cannot create mount points'`);
  const mounts = [...spec.mounts].sort((a, b) => a.target.localeCompare(b.target));
  for (const m of mounts) {
    if (m.kind === 'file') lines.push(`: > ${r(m.target)} || die ${q(`cannot create ${m.target}`)}`);
    lines.push(`${q(t.mount)} -o bind,ro,nosuid,nodev ${q(m.source)} ${r(m.target)} || die ${q(`cannot bind ${m.source}`)}`);
  }
  for (const l of spec.symlinks) lines.push(`${q(t.ln)} -sfn ${q(l.target)} ${r(l.path)} || die ${q(`cannot link ${l.path}`)}`);
  // /dev: a tmpfs of its own, with just the nodes a VMM needs.
  lines.push(`${q(t.mount)} -t tmpfs -o nosuid,noexec,mode=0755,size=64k capsule-dev "$R/dev" || die 'cannot mount /dev'`);
  lines.push(`${q(t.mknod)} -m 0666 "$R/dev/null" c 1 3 && ${q(t.mknod)} -m 0666 "$R/dev/urandom" c 1 9 || die 'cannot create /dev nodes'`);
  if (spec.kvm) lines.push(`${q(t.mknod)} -m 0600 "$R/dev/kvm" c 10 232 && ${q(t.chown)} ${spec.uid}:${spec.gid} "$R/dev/kvm" || die 'cannot create /dev/kvm'`);
  // A /proc of the new PID namespace (sh is its pid 1, so the mount shows only the jail).
  lines.push(`${q(t.mount)} -t proc -o nosuid,nodev,noexec proc "$R/proc" || die 'cannot mount /proc'`);
  // The VMM, as a child (sh keeps waiting as root, see the header), then its status.
  const vmm = [
    t.prlimit, `--nofile=${spec.nofile}:${spec.nofile}`, `--fsize=${spec.fsizeBytes}:${spec.fsizeBytes}`, '--',
    t.chroot, spec.root,
    t.setpriv, `--reuid=${spec.uid}`, `--regid=${spec.gid}`, '--clear-groups', '--no-new-privs', '--inh-caps=-all', '--bounding-set=-all', '--',
    spec.command, ...spec.args,
  ];
  lines.push(vmm.map(q).join(' '));
  lines.push('exit $?');
  const script = lines.join('\n');
  return {
    command: t.unshare,
    args: ['--fork', '--pid', '--mount', '--propagation', 'private', '--kill-child', '--', t.sh, '-c', script],
    env: { PATH: JAIL_PATH, ...spec.env },
    script,
  };
}
