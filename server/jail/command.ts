// The jail's command builder: pure functions from a plan (what to bind, which uid, which
// limits, which command) to the one command line the server spawns. No I/O here: the host
// facts (resolved paths, tool locations, cgroup files) come in as data, so every piece is
// unit-tested (command.test.ts) and the integration test checks the result on a real VMM.
//
// What the command does (docs/jail.md):
//   unshare --fork --pid --mount --net --ipc --uts --propagation private --kill-child -- sh SCRIPT_FILE
// The script is a root-only file, not an argument: argv is world-readable in /proc, and the
// script holds the VMM's command line. unshare (a host pid, the one the server tracks) forks sh,
// pid 1 of a new PID namespace in new private mount, network (nothing configured, not even
// loopback up), IPC and UTS namespaces. sh joins the VM's cgroups, builds the root inside the
// tmpfs the server mounted for it (read-only binds, a small tmpfs /dev with its own nodes, a
// private /proc, a tmpfs /tmp), then runs, as its child,
//   env -i VARS prlimit --nofile --fsize -- chroot ROOT setpriv --reuid --regid ... -- VMM ARGS...
// and exits with the VMM's status. sh stays root so that --kill-child's parent-death signal
// (cleared by a uid change) stays armed: kill the unshare process and sh dies, and with pid 1
// the kernel kills everything else in the namespace.
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import type { Image } from '../db/images.js';
import type { ForegroundPaths, VmDevices } from '../hypervisors/types.js';

/** A bind of a host file or directory to `target` (absolute, inside the root): read-only unless `readOnly` is false (a writable drive). */
export interface JailMount {
  source: string;
  target: string;
  kind: 'dir' | 'file';
  readOnly?: boolean;
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
  env: string;
}

export interface JailSpec {
  vmId: string;
  /** Host path of the VMM's root (the VM directory's size-limited tmpfs, `root/`). */
  root: string;
  /** Host path where the caller writes `script` (root-only; sh reads it from there). */
  scriptPath: string;
  uid: number;
  gid: number;
  nofile: number;
  fsizeBytes: number;
  mounts: readonly JailMount[];
  symlinks: readonly JailSymlink[];
  /** Give the VMM its own /dev/kvm (owned by the jail's uid). */
  kvm: boolean;
  /**
   * The VM's network namespace (/run/netns/NAME, docs/network.md): the jail runs in it (nsenter
   * --net, then unshare without --net) and gets /dev/net/tun to open the VM's tap, which the
   * server made there owned by the jail's uid. Absent: a new empty network namespace.
   */
  netns?: { path: string; nsenter: string } | undefined;
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
  /** The script sh runs: the caller writes it to `scriptPath` (mode 0700, root-only). */
  script: string;
}

/** Where a jailed VMM finds things, inside its root. */
export const IN_ROOT = {
  // Short names: on the host they are vms/<id>/root/qmp and .../root/console, no longer than the
  // vms/<id>/console.sock that main.ts checks against the 107-byte limit of Unix socket paths.
  qmpSocket: '/qmp',
  consoleSocket: '/console',
  /** The VMM's configuration file (the kernel command line, kept out of its argv). */
  config: '/vmm.cfg',
  kernel: '/image/kernel',
  initrd: '/image/initrd',
  /** Disk files (drives/<drive id>): a root-owned directory the server creates, so the VMM cannot plant links there. */
  drives: '/drives',
} as const;

export const IN_ROOT_PATHS: ForegroundPaths = { qmpSocket: IN_ROOT.qmpSocket, consoleSocket: IN_ROOT.consoleSocket, config: IN_ROOT.config };

/**
 * The VMM's root inside the VM directory (vms/<id>/root): a size- and inode-limited tmpfs the
 * server mounts there before each jailed launch. The VM directory itself (pidfile, log, the
 * jail's script) stays the server's.
 */
export const VM_ROOT_DIR = 'root';

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

/** Where a drive's file appears inside the root. */
export function driveInRoot(id: string): string {
  if (!/^[a-z0-9][a-z0-9-]*$/.test(id)) throw new Error(`jail: bad drive id ${JSON.stringify(id)}`);
  return posix.join(IN_ROOT.drives, id);
}

/**
 * The devices as the VMM sees them inside the root (each drive and pmem file at drives/<id>), and the binds
 * that put the files there: read-only for a read-only drive, writable otherwise. `realPath`
 * maps a host path to the file to bind (links resolved).
 */
export function devicesInRoot(devices: VmDevices, realPath: (p: string) => string = (p) => p): { devices: VmDevices; mounts: JailMount[] } {
  const mounts: JailMount[] = [];
  const drives = devices.drives.map((d) => {
    const target = driveInRoot(d.id);
    mounts.push({ source: realPath(d.path), target, kind: 'file', readOnly: d.readOnly });
    return { ...d, path: target };
  });
  const pmem = devices.pmem?.map((p) => {
    const target = driveInRoot(p.id);
    mounts.push({ source: realPath(p.path), target, kind: 'file', readOnly: true });
    return { ...p, path: target };
  });
  return { devices: { ...devices, drives, ...(pmem ? { pmem } : {}) }, mounts };
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
  assertAbsolute('script', spec.scriptPath);
  if (spec.scriptPath.startsWith(`${spec.root}/`)) throw new Error('jail: the script must not be inside the VMM\'s root');
  for (const k of Object.keys(spec.env)) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`jail: bad environment variable name ${JSON.stringify(k)}`);
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
  // Its inode count is capped too: size= alone would let the VMM create files of size 0 without end.
  lines.push(`${q(t.mkdir)} -p "$R/tmp" && ${q(t.mount)} -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=16m,nr_inodes=1024 capsule-tmp "$R/tmp" || die 'cannot mount /tmp'`);
  // Mount points, parents first (sorted), then the binds (read-only, no setuid, no devices).
  const dirs = new Set<string>(SKELETON.map((d) => `/${d}`));
  for (const m of spec.mounts) dirs.add(m.kind === 'dir' ? m.target : posix.dirname(m.target));
  for (const l of spec.symlinks) dirs.add(posix.dirname(l.path));
  dirs.delete('/');
  lines.push(`${q(t.mkdir)} -p ${[...dirs].sort().map(r).join(' ')} || die 'cannot create mount points'`);
  const mounts = [...spec.mounts].sort((a, b) => a.target.localeCompare(b.target));
  for (const m of mounts) {
    if (m.kind === 'file') lines.push(`: > ${r(m.target)} || die ${q(`cannot create ${m.target}`)}`);
    lines.push(`${q(t.mount)} -o ${m.readOnly === false ? 'bind' : 'bind,ro'},nosuid,nodev ${q(m.source)} ${r(m.target)} || die ${q(`cannot bind ${m.source}`)}`);
  }
  for (const l of spec.symlinks) lines.push(`${q(t.ln)} -sfn ${q(l.target)} ${r(l.path)} || die ${q(`cannot link ${l.path}`)}`);
  // /dev: a tmpfs of its own, with just the nodes a VMM needs.
  lines.push(`${q(t.mount)} -t tmpfs -o nosuid,noexec,mode=0755,size=64k,nr_inodes=16 capsule-dev "$R/dev" || die 'cannot mount /dev'`);
  lines.push(`${q(t.mknod)} -m 0666 "$R/dev/null" c 1 3 && ${q(t.mknod)} -m 0666 "$R/dev/urandom" c 1 9 || die 'cannot create /dev nodes'`);
  if (spec.netns) lines.push(`${q(t.mkdir)} -p "$R/dev/net" && ${q(t.mknod)} -m 0600 "$R/dev/net/tun" c 10 200 && ${q(t.chown)} ${spec.uid}:${spec.gid} "$R/dev/net/tun" || die 'cannot create /dev/net/tun'`);
  if (spec.kvm) lines.push(`${q(t.mknod)} -m 0600 "$R/dev/kvm" c 10 232 && ${q(t.chown)} ${spec.uid}:${spec.gid} "$R/dev/kvm" || die 'cannot create /dev/kvm'`);
  // A /proc of the new PID namespace (sh is its pid 1, so the mount shows only the jail).
  lines.push(`${q(t.mount)} -t proc -o nosuid,nodev,noexec proc "$R/proc" || die 'cannot mount /proc'`);
  // The VMM, as a child (sh keeps waiting as root, see the header), then its status. `env -i`:
  // the VMM gets exactly PATH and its backend's variables (sh would add PWD, the host path of
  // the root).
  const vars = Object.entries({ PATH: JAIL_PATH, ...spec.env }).map(([k, v]) => `${k}=${v}`);
  const vmm = [
    t.env, '-i', ...vars,
    t.prlimit, `--nofile=${spec.nofile}:${spec.nofile}`, `--fsize=${spec.fsizeBytes}:${spec.fsizeBytes}`, '--',
    t.chroot, spec.root,
    t.setpriv, `--reuid=${spec.uid}`, `--regid=${spec.gid}`, '--clear-groups', '--no-new-privs', '--inh-caps=-all', '--bounding-set=-all', '--',
    spec.command, ...spec.args,
  ];
  lines.push(vmm.map(q).join(' '));
  lines.push('exit $?');
  const script = lines.join('\n');
  if (spec.netns) {
    assertAbsolute('netns', spec.netns.path);
    assertAbsolute('nsenter', spec.netns.nsenter);
    // nsenter --net without --fork execs unshare: the tracked pid is still unshare's.
    return {
      command: spec.netns.nsenter,
      args: [`--net=${spec.netns.path}`, '--', t.unshare, '--fork', '--pid', '--mount', '--ipc', '--uts', '--propagation', 'private', '--kill-child', '--', t.sh, spec.scriptPath],
      env: { PATH: JAIL_PATH },
      script,
    };
  }
  return {
    command: t.unshare,
    // --net, --ipc, --uts: from the VMM's namespaces nothing of the host's network (the API on
    // 127.0.0.1 included), System V IPC or hostname is reachable. QMP and the console are Unix
    // sockets by path, which work across network namespaces.
    args: ['--fork', '--pid', '--mount', '--net', '--ipc', '--uts', '--propagation', 'private', '--kill-child', '--', t.sh, spec.scriptPath],
    env: { PATH: JAIL_PATH },
    script,
  };
}
