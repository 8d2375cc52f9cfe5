// The VMM jail (docs/jail.md), after Firecracker's jailer: each VMM runs as an unprivileged
// per-VM user, in new mount, PID, network, IPC and UTS namespaces, chrooted into a small tmpfs
// (vms/<id>/root) with only what it needs bound in (read-only), under rlimits, in its own
// cgroups where the host allows.
// This module probes what the host allows (once, at start), reports it for GET /v1/health,
// turns a backend's foreground command into the jailed one, and cleans up after a VMM.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, closeSync, lstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { JailConfig } from '../config.js';
import type { Image } from '../db/images.js';
import type { Vm } from '../db/vms.js';
import { NO_DEVICES, type Hypervisor, type VmDevices, type VmPaths } from '../hypervisors/types.js';
import { CgroupManager, parseMountInfo, type MountInfo } from './cgroups.js';
import { buildJailCommand, devicesInRoot, driveInRoot, imageInRoot, IN_ROOT, IN_ROOT_PATHS, jailIdentity, VM_ROOT_DIR, type JailTools } from './command.js';
import { realFile, resolveHostPaths, which } from './host.js';
import { markInheritedFdsCloexec } from '../util/fds.js';

export interface JailStatus {
  /** VMMs started now are jailed. */
  enabled: boolean;
  /** Each step is true when jailed VMMs get it. */
  user: boolean;
  namespaces: boolean;
  cgroups: boolean;
  rlimits: boolean;
  /** Per step (and `jail` for the whole): what is applied, or why not. */
  reasons: Record<string, string>;
}

interface Step {
  ok: boolean;
  reason: string;
}

/**
 * Files in a VM directory that are not the jail's (everything else there is the jail's root
 * skeleton): the log, the writable layer of a VM whose image has a rootfs (the drives
 * component's), and the guest agent's per-boot secret and user-net port (the agent
 * component's, written before the launch: a restarted server reads them to reach the agent).
 */
const VM_FILES = new Set(['vmm.log', 'layer.img', 'agent.token', 'agent.port']);

/**
 * The VMM's root: a tmpfs of this size and inode count (RLIMIT_FSIZE caps one file, not their
 * number). It holds the mount points, the sockets and the config file: a few dozen inodes and
 * a few KiB; what the VMM may write beyond that is bounded here, not by the data filesystem.
 */
export const ROOT_TMPFS = { sizeBytes: 4 << 20, inodes: 256, source: 'capsule-root' } as const;

/** The jail's script, in the VM directory (root-only), outside the VMM's root. */
export const SCRIPT_FILE = 'jail.sh';

function run(cmd: string, args: string[]): void {
  markInheritedFdsCloexec();
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
}

function errText(e: unknown): string {
  const err = e as { stderr?: Buffer; message: string };
  return (err.stderr?.toString().trim() || err.message).split('\n')[0]!;
}

export class Jail {
  readonly mode: JailConfig['mode'];
  private readonly tools: JailTools | undefined;
  private readonly steps: { user: Step; namespaces: Step; rlimits: Step };
  readonly cgroups: CgroupManager;
  readonly enabled: boolean;

  constructor(private readonly cfg: JailConfig, private readonly log?: Logger) {
    this.mode = cfg.mode;
    if (cfg.mode === 'off') {
      const off = { ok: false, reason: 'CAPSULE_JAIL=off' };
      this.steps = { user: off, namespaces: off, rlimits: off };
      this.cgroups = CgroupManager.unavailable('CAPSULE_JAIL=off');
      this.enabled = false;
      return;
    }
    const names = ['sh', 'unshare', 'setpriv', 'prlimit', 'mount', 'chroot', 'mknod', 'mkdir', 'ln', 'chown', 'env'] as const;
    const found = Object.fromEntries(names.map((n) => [n, which(n)])) as Record<(typeof names)[number], string | undefined>;
    const missing = (...ns: Array<(typeof names)[number]>) => ns.filter((n) => !found[n]);
    const complete = missing(...names).length === 0;
    this.tools = complete ? (found as JailTools) : undefined;
    const root = process.getuid?.() === 0;
    this.steps = {
      user: this.probeUser(root, found.setpriv, missing('setpriv', 'chown')),
      namespaces: this.probeNamespaces(root, found, missing('unshare', 'sh', 'mount', 'chroot', 'mknod', 'mkdir', 'ln', 'env')),
      rlimits: this.probeRlimits(found.prlimit),
    };
    this.enabled = complete && this.steps.user.ok && this.steps.namespaces.ok && this.steps.rlimits.ok;
    this.cgroups = this.enabled ? CgroupManager.detect(cfg.cgroupParent) : CgroupManager.unavailable('the jail is not enabled');
  }

  status(): JailStatus {
    const s = this.steps;
    const reasons: Record<string, string> = {
      jail: this.enabled ? `CAPSULE_JAIL=${this.mode}: every VMM is jailed` : this.mode === 'off' ? 'CAPSULE_JAIL=off' : `CAPSULE_JAIL=${this.mode}: ${this.unavailableReason()}`,
      user: s.user.reason,
      namespaces: s.namespaces.reason,
      rlimits: s.rlimits.reason,
      cgroups: this.cgroups.reason,
    };
    return {
      enabled: this.enabled,
      user: this.enabled && s.user.ok,
      namespaces: this.enabled && s.namespaces.ok,
      cgroups: this.enabled && this.cgroups.available,
      rlimits: this.enabled && s.rlimits.ok,
      reasons,
    };
  }

  /** Why the jail cannot be used (names the missing steps). */
  unavailableReason(): string {
    const bad = (['user', 'namespaces', 'rlimits'] as const).filter((k) => !this.steps[k].ok).map((k) => `${k}: ${this.steps[k].reason}`);
    return bad.length > 0 ? `the jail cannot be applied here (${bad.join('; ')})` : 'the jail is available';
  }

  /**
   * Prepares a jailed launch: cleans the VM directory of any old skeleton (unmounting an old
   * root), makes the directory the server's alone (root, 0700: the script, pidfile and log),
   * mounts the VMM's root (a size- and inode-limited tmpfs, root:jail-gid, 1770: the VMM creates
   * its sockets there but cannot replace the server's config file), writes the config file and
   * the script, creates the VM's cgroups, and returns the command to spawn detached. The
   * command's process is the host pid to track: it lives exactly as long as the VMM, and killing
   * it kills the VMM.
   */
  prepare(hypervisor: Hypervisor, vm: Vm, image: Image, paths: VmPaths, devices: VmDevices = NO_DEVICES, minFileSizeBytes = 0, netns?: string): { command: string; args: string[]; env: Record<string, string>; uid: number; gid: number; script: string; vmm: string[] } {
    if (!this.enabled || !this.tools) throw new Error(this.unavailableReason());
    // The server reaches the sockets (and writes the config) at host paths: they must be the
    // in-root paths the VMM uses, under its root.
    if (paths.root !== join(paths.dir, VM_ROOT_DIR)) throw new Error(`jail: the root ${paths.root} is not ${VM_ROOT_DIR}/ of ${paths.dir}`);
    for (const k of ['qmpSocket', 'consoleSocket', 'config'] as const) {
      if (paths[k] !== join(paths.root, IN_ROOT[k])) throw new Error(`jail: ${k} ${paths[k]} is not ${IN_ROOT[k]} in the root ${paths.root}`);
    }
    if (!this.cleanRoot(paths.dir)) throw new Error(`${paths.dir} has foreign mounts below it or could not be cleaned (see the server log)`);
    const { uid, gid } = jailIdentity(vm.id, this.cfg);
    chownSync(paths.dir, 0, 0);
    chmodSync(paths.dir, 0o700);
    this.trimLog(paths.log);
    mkdirSync(paths.root, { mode: 0o700 });
    run(this.tools.mount, ['-t', 'tmpfs', '-o', `nosuid,nodev,noexec,size=${ROOT_TMPFS.sizeBytes},nr_inodes=${ROOT_TMPFS.inodes},mode=1770,uid=0,gid=${gid}`, ROOT_TMPFS.source, paths.root]);
    // drives/: root's, so that the VMM (which may create entries in its root) cannot put a
    // link or file where the server later binds a hot-plugged drive.
    mkdirSync(join(paths.root, IN_ROOT.drives), { mode: 0o755 });
    const inRoot = imageInRoot({ ...image, kernel: realFile(image.kernel), ...(image.initrd ? { initrd: realFile(image.initrd) } : {}) });
    const disks = devicesInRoot(devices, realFile);
    const fg = hypervisor.foregroundCommand(vm, inRoot.image, IN_ROOT_PATHS, disks.devices);
    const command = which(fg.command);
    if (!command) throw new Error(`${fg.command} not found in PATH`);
    if (fg.config !== undefined) {
      // Readable by the jail's group only (created root-only, then given the group).
      writeFileSync(paths.config, fg.config, { mode: 0o440, flag: 'wx' });
      chownSync(paths.config, 0, gid);
    }
    const host = resolveHostPaths([realFile(command), this.tools.setpriv, ...hypervisor.jailFiles()]);
    const cgroupProcs = this.cgroups.create(vm.id, {
      vcpus: vm.vcpus,
      memoryBytes: (vm.memoryMiB + this.cfg.memoryOverheadMiB) * 1024 * 1024,
    });
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(fg.env ?? {})) if (v !== undefined) env[k] = v;
    const scriptPath = join(paths.dir, SCRIPT_FILE);
    const built = buildJailCommand({
      vmId: vm.id,
      root: paths.root,
      scriptPath,
      uid, gid,
      nofile: this.cfg.nofile,
      fsizeBytes: this.fileSizeLimit(minFileSizeBytes),
      mounts: [...host.mounts, ...inRoot.mounts, ...disks.mounts],
      symlinks: host.symlinks,
      kvm: hypervisor.usesKvm() && existsDevice('/dev/kvm'),
      netns: netns === undefined ? undefined : { path: netns, nsenter: mustWhich('nsenter') },
      cgroupProcs,
      command: realFile(command),
      args: fg.args,
      env,
      tools: this.tools,
    });
    // A file, not `sh -c SCRIPT`: argv is world-readable in /proc and the script holds the
    // VMM's command line. Root-only, in the root-only VM directory.
    rmSync(scriptPath, { force: true });
    writeFileSync(scriptPath, `${built.script}\n`, { mode: 0o700, flag: 'wx' });
    return { command: built.command, args: built.args, env: built.env, uid, gid, script: built.script, vmm: [realFile(command), ...fg.args] };
  }

  /** RLIMIT_FSIZE of a jailed VMM: the log's cap, or the largest file it must write if that is more. */
  fileSizeLimit(minBytes: number): number {
    return Math.max(this.cfg.fsizeBytes, minBytes);
  }

  /** The uid and gid a VM's VMM runs as. */
  identity(vmId: string): { uid: number; gid: number } {
    return jailIdentity(vmId, this.cfg);
  }

  /** Whether the VM directory holds a jail root (the VMM there runs jailed): reattach asks. */
  rootMounted(dir: string): boolean {
    const root = join(dir, VM_ROOT_DIR);
    return mountedUnder(dir).some((m) => m.mountPoint === root && m.fsType === 'tmpfs' && m.source === ROOT_TMPFS.source);
  }

  /**
   * Makes a disk file visible inside a running jailed VMM's root, at drives/<id>: the target
   * file is created through the host's view of the root tmpfs (the same filesystem the jail's
   * namespace holds), then bound in the jail's mount namespace (nsenter into `pid`'s, the
   * tracked unshare process, which lives in it). Returns the path the VMM opens.
   */
  bindDrive(pid: number, root: string, id: string, source: string, readOnly: boolean): string {
    const inRoot = driveInRoot(id);
    const target = join(root, inRoot);
    // drives/ is root's (prepare): nothing of the VMM's can be in the way; 'wx' refuses anything that is.
    closeSync(openSync(target, 'wx', 0o600));
    try {
      this.inNamespace(pid, 'mount', ['-o', `${readOnly ? 'bind,ro' : 'bind'},nosuid,nodev`, realFile(source), target]);
    } catch (e) {
      rmSync(target, { force: true });
      throw new Error(`cannot bind the drive into the jail: ${errText(e)}`);
    }
    return inRoot;
  }

  /** Undoes bindDrive (or the jail script's bind of a boot drive): lazy unmount, then the target file. */
  unbindDrive(pid: number, root: string, id: string): void {
    const target = join(root, driveInRoot(id));
    try {
      this.inNamespace(pid, 'umount', ['-l', target]);
    } catch (e) {
      this.log?.warn({ pid, target, err: errText(e) }, 'unmounting a drive in the jail failed');
    }
    rmSync(target, { force: true });
  }

  /**
   * Raises RLIMIT_FSIZE of the jail's processes (the VMM among them) to at least `bytes`: a
   * write past the limit fails (EFBIG, SIGXFSZ), and a hot-plugged writable drive may be larger
   * than what the VMM was started with. Raising needs CAP_SYS_RESOURCE (root has it, a
   * container's root may not): throws when a process's limit could not be raised.
   */
  raiseFileSizeLimit(pid: number, bytes: number): void {
    const prlimit = which('prlimit');
    if (!prlimit) throw new Error('prlimit (util-linux) not found');
    for (const p of descendants(pid)) {
      try {
        run(prlimit, ['--pid', String(p), `--fsize=${bytes}:${bytes}`]);
      } catch (e) {
        throw new Error(`raising RLIMIT_FSIZE of ${p} failed: ${errText(e)}`);
      }
    }
  }

  private inNamespace(pid: number, tool: 'mount' | 'umount', args: string[]): void {
    const nsenter = which('nsenter');
    const bin = which(tool);
    if (!nsenter || !bin) throw new Error(`nsenter and ${tool} (util-linux) are needed`);
    run(nsenter, ['--target', String(pid), '--mount', '--', bin, ...args]);
  }

  /** Whether the OOM killer ended a process of the VM's cgroup (why a start failed). */
  oomKilled(id: string): boolean {
    return this.cgroups.oomKilled(id);
  }

  /** After a VMM is gone: remove its cgroups and its root's skeleton. Idempotent. */
  async cleanup(id: string, dir: string): Promise<void> {
    try {
      await this.cgroups.remove(id);
    } catch (e) {
      this.log?.warn({ vm: id, err: (e as Error).message }, 'cgroup removal failed');
    }
    this.cleanRoot(dir);
  }

  /**
   * Unmounts the VMM's root tmpfs and removes everything in a VM directory but the log: the
   * pidfile, the script, the root's mount point and anything left in it. Refuses (false) if
   * anything else is mounted at or below the directory in the server's mount namespace (the
   * jail's binds live in the VMM's private namespace and vanish with it; one here would be a
   * bug, and removing through it would delete host files). Only called once the VMM is gone.
   */
  cleanRoot(dir: string): boolean {
    try {
      readdirSync(dir);
    } catch {
      return true;
    }
    const root = join(dir, VM_ROOT_DIR);
    // Our own tmpfs, possibly stacked (a launch that died between its mount and its cleanup).
    for (let i = 0; ; i++) {
      const below = mountedUnder(dir);
      if (below.length === 0) break;
      const foreign = below.filter((m) => !(m.mountPoint === root && m.fsType === 'tmpfs' && m.source === ROOT_TMPFS.source));
      if (foreign.length > 0 || i >= 16) {
        this.log?.error({ dir, mounts: foreign.map((m) => m.mountPoint) }, 'something is mounted inside a VM directory; not cleaning it');
        return false;
      }
      try {
        const umount = which('umount');
        if (!umount) throw new Error('umount (util-linux) not found');
        run(umount, [root]);
      } catch (e) {
        this.log?.error({ dir, err: errText(e) }, 'cannot unmount the VMM root; not cleaning it');
        return false;
      }
    }
    for (const e of readdirSync(dir)) if (!VM_FILES.has(e)) rmSync(join(dir, e), { recursive: true, force: true });
    return true;
  }

  /**
   * RLIMIT_FSIZE caps the log file (the VMM writes it through stderr): a log already past half
   * the cap keeps only its last quarter, so the VMM starts with room to write.
   */
  private trimLog(path: string): void {
    let size: number;
    try {
      const st = lstatSync(path);
      if (!st.isFile()) { rmSync(path, { force: true }); return; }
      size = st.size;
    } catch {
      return;
    }
    if (size <= this.cfg.fsizeBytes / 2) return;
    const keep = Math.floor(this.cfg.fsizeBytes / 4);
    const buf = Buffer.alloc(keep);
    const fd = openSync(path, 'r');
    try {
      readSync(fd, buf, 0, keep, size - keep);
    } finally {
      closeSync(fd);
    }
    writeFileSync(path, Buffer.concat([Buffer.from(`[capsule: log trimmed to its last ${keep} bytes]\n`), buf]), { mode: 0o600 });
  }

  private probeUser(root: boolean, setpriv: string | undefined, missing: string[]): Step {
    if (!root) return { ok: false, reason: `the server runs as uid ${process.getuid?.()}, not root: it cannot give VMMs their own user` };
    if (missing.length > 0) return { ok: false, reason: `missing tools: ${missing.join(', ')} (util-linux, coreutils)` };
    const { uid, gid } = jailIdentity('probe', this.cfg);
    try {
      run(setpriv!, [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--no-new-privs', '--inh-caps=-all', '--bounding-set=-all', '--', which('true') ?? '/bin/true']);
    } catch (e) {
      return { ok: false, reason: `setpriv cannot drop to uid ${uid}: ${errText(e)}` };
    }
    const range = this.cfg.uid !== undefined ? `uid ${this.cfg.uid}, gid ${this.cfg.gid ?? this.cfg.uid}` : `a per-VM uid/gid in [${this.cfg.uidBase}, ${this.cfg.uidBase + this.cfg.uidCount})`;
    return { ok: true, reason: `setpriv: ${range}, no groups, no capabilities, no_new_privs` };
  }

  private probeNamespaces(root: boolean, t: Partial<JailTools>, missing: string[]): Step {
    if (!root) return { ok: false, reason: 'mount namespaces, bind mounts and chroot need root' };
    if (missing.length > 0) return { ok: false, reason: `missing tools: ${missing.join(', ')} (util-linux, coreutils)` };
    const dir = mkdtempSync(join(tmpdir(), 'capsule-jail-probe-'));
    try {
      run(t.unshare!, ['--fork', '--pid', '--mount', '--net', '--ipc', '--uts', '--propagation', 'private', '--kill-child', '--', t.sh!, '-c',
        'test $$ = 1 || { echo "not pid 1 in the new PID namespace" >&2; exit 1; }; "$1" -t tmpfs -o size=4k capsule-probe "$2" && "$1" -t proc proc "$2"',
        'sh', t.mount!, dir]);
    } catch (e) {
      return { ok: false, reason: `unshare --pid --mount --net --ipc --uts failed: ${errText(e)}` };
    } finally {
      try { rmdirSync(dir); } catch { /* left for tmp cleaners */ }
    }
    return {
      ok: true,
      reason: 'new mount, PID, network (no interfaces, loopback down), IPC and UTS namespaces; ' +
        `root = vms/<id>/${VM_ROOT_DIR}, a tmpfs of ${ROOT_TMPFS.sizeBytes >> 20} MiB and ${ROOT_TMPFS.inodes} inodes (chroot), with read-only binds, private /proc, tmpfs /dev and /tmp`,
    };
  }

  private probeRlimits(prlimit: string | undefined): Step {
    if (!prlimit) return { ok: false, reason: 'prlimit (util-linux) is missing' };
    const lim = [`--nofile=${this.cfg.nofile}:${this.cfg.nofile}`, `--fsize=${this.cfg.fsizeBytes}:${this.cfg.fsizeBytes}`];
    try {
      run(prlimit, [...lim, '--', which('true') ?? '/bin/true']);
    } catch (e) {
      return { ok: false, reason: `prlimit failed: ${errText(e)}` };
    }
    return { ok: true, reason: `RLIMIT_NOFILE ${this.cfg.nofile}, RLIMIT_FSIZE ${this.cfg.fsizeBytes} bytes` };
  }
}

function mustWhich(tool: string): string {
  const p = which(tool);
  if (!p) throw new Error(`${tool} (util-linux) not found`);
  return p;
}

/** The process's descendants (children first), from /proc/<pid>/task/<tid>/children. */
function descendants(pid: number): number[] {
  const out: number[] = [];
  const visit = (p: number, depth: number) => {
    if (depth > 8) return;
    let tids: string[] = [];
    try { tids = readdirSync(`/proc/${p}/task`); } catch { return; }
    for (const t of tids) {
      let children = '';
      try { children = readFileSync(`/proc/${p}/task/${t}/children`, 'utf8'); } catch { continue; }
      for (const c of children.trim().split(/\s+/).filter(Boolean).map(Number)) {
        out.push(c);
        visit(c, depth + 1);
      }
    }
  };
  visit(pid, 0);
  return out;
}

/** Mounts at or below `dir` in the server's mount namespace. */
function mountedUnder(dir: string): MountInfo[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8')).filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(prefix));
}

function existsDevice(p: string): boolean {
  try {
    return statSync(p).isCharacterDevice();
  } catch {
    return false;
  }
}
