// The supervisor: one entry per live VM. It launches VMMs (daemonized), keeps one QMP
// client and one console bridge per VMM, turns QMP events and VMM exits into VM states,
// and reattaches to running VMMs when the server starts again.
import { lstatSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ConsoleBridge } from '../console/bridge.js';
import type { EventHub } from '../events/hub.js';
import type { ImageStore } from '../db/images.js';
import type { Vm, VmState, VmStore, HypervisorName } from '../db/vms.js';
import type { Hypervisor, VmPaths } from '../hypervisors/types.js';
import type { Jail } from '../jail/index.js';
import { QmpClient } from '../qmp/client.js';
import type { QmpEvent } from '../../lib/qmp-wire.js';
import { isAlive, isOurProcess, kill, killProcessesNaming, readPidfile, removeFiles, waitForExit } from './process.js';
import { asLaunchError, commandLine, jailedStartFailure, LAUNCH_TIMEOUT_MS, LaunchError, runLauncher, spawnDetached } from './spawn.js';
import { logLine, readLogTail } from './vm-log.js';
import { VM_ROOT_DIR } from '../jail/command.js';
import { ApiError } from './errors.js';
import { onRateLimitedEvents } from '../qmp/event-rate.js';
import type { HostAdmission } from './admission.js';
import { emptyPlan, type LaunchPlan, type LiveVmContext, type VmComponent } from './components/types.js';
import { restoreSnapshot } from './components/snapshot.js';

function assertSockets(...paths: string[]): void {
  for (const p of paths) if (!lstatSync(p).isSocket()) throw new Error(`${p} is not a socket`);
}

export { ApiError } from './errors.js';

type Intent = 'stop' | 'reboot';

interface LiveVm {
  id: string;
  pid: number;
  hypervisor: Hypervisor;
  qmp: QmpClient;
  console: ConsoleBridge;
  /** The VMM's uid when it runs jailed. */
  jailUid: number | undefined;
  intent: Intent | undefined;
  shutdownReason: string | undefined;
  exited: Promise<void>;
}

const ACTIVE_STATES: readonly VmState[] = ['starting', 'running', 'paused', 'stopping'];
/** Guest-initiated resets relaunch the VMM; more than this many in a minute is a crash loop. */
const MAX_RESETS_PER_MINUTE = 5;

export interface SupervisorDeps {
  vms: VmStore;
  images: ImageStore;
  hub: EventHub;
  hypervisors: ReadonlyMap<HypervisorName, Hypervisor>;
  vmsDir: string;
  stopTimeoutMs: number;
  log: Logger;
  /** The VMM jail (server/jail); absent or disabled: VMMs daemonize as they did before it. */
  jail?: Jail;
  /** Host capacity reserved at start, released when the VMM is gone; absent: no admission control (unit tests). */
  admission?: HostAdmission;
  /** The VM's tenant's quotas, checked at start before host admission (absent: none). */
  quotas?: { checkStart(vm: Vm): void };
  /** Per-VM components (drives, rng, balloon), run in this order around each VMM's life. */
  components?: readonly VmComponent[];
}

export class Supervisor {
  private readonly live = new Map<string, LiveVm>();
  private readonly locks = new Map<string, Promise<unknown>>();
  private readonly resets = new Map<string, number[]>();
  /** VMs a forced stop was asked for: nothing may relaunch them (a reboot in flight, a guest reset). */
  private readonly forcedStops = new Set<string>();
  private closing = false;
  /** Told after a VM's definition is deleted (what else the server keeps of it goes too). */
  onVmDeleted: (vm: Vm) => void = () => undefined;

  constructor(private readonly d: SupervisorDeps) {}

  paths(id: string): VmPaths {
    const dir = join(this.d.vmsDir, id);
    // What the VMM creates or reads lives in root/ (the jailed VMM's root, a tmpfs; a plain
    // directory unjailed), the server's own files beside it.
    const root = join(dir, VM_ROOT_DIR);
    return {
      dir,
      pidfile: join(dir, 'vmm.pid'),
      log: join(dir, 'vmm.log'),
      root,
      qmpSocket: join(root, 'qmp'),
      consoleSocket: join(root, 'console'),
      config: join(root, 'vmm.cfg'),
    };
  }

  console(id: string): ConsoleBridge | undefined {
    return this.live.get(id)?.console;
  }

  /**
   * Runs `fn` under the VM's lock with the VM and, when its VMM runs, the components' view of
   * it: what a component does to a VM at run time (hot-plug, the balloon) goes through here.
   */
  withVm<T>(id: string, fn: (vm: Vm, live: LiveVmContext | undefined) => Promise<T>): Promise<T> {
    return this.withLock(id, async () => {
      const vm = this.mustGet(id);
      const live = this.live.get(id);
      return fn(vm, live && this.liveContext(live));
    });
  }

  /** The end of the VM's log (vm-log.ts: never read whole). */
  readLog(id: string): string | undefined {
    return readLogTail(this.paths(id).log);
  }

  // ---- lifecycle operations (serialized per VM) ----

  start(id: string): Promise<Vm> {
    return this.withLock(id, async () => {
      const vm = this.mustGet(id);
      this.expectState(vm, ['created', 'stopped', 'crashed'], 'start');
      // The tenant's quota (409 quota_exceeded), then host admission (503 host_full unless the
      // host has room; reserved until the VMM is gone): both in the same synchronous step as
      // launch()'s move to `starting`, so concurrent starts cannot both take the last room.
      this.d.quotas?.checkStart(vm);
      this.d.admission?.reserve(vm);
      this.resets.delete(id);
      this.forcedStops.delete(id);
      try {
        await this.launch(vm);
      } catch (e) {
        // A start refused before launching (a component's check) leaves the VM inactive without
        // a state change: give the reservation back here too.
        if (!ACTIVE_STATES.includes(this.d.vms.get(id)?.state ?? 'stopped')) this.d.admission?.release(id);
        throw e;
      }
      return this.mustGet(id);
    });
  }

  stop(id: string, force: boolean): Promise<Vm> {
    // A forced stop does not queue behind a clean stop that waits for the guest: it kills now,
    // and a reboot or guest reset in flight must not bring the VM back afterwards.
    if (force && this.d.vms.get(id)) this.forcedStops.add(id);
    const live = this.live.get(id);
    if (force && live) return this.killNow(live);
    return this.withLock(id, async () => {
      const vm = this.mustGet(id);
      this.expectState(vm, ['starting', 'running', 'paused', 'stopping'], 'stop');
      await this.stopLive(vm, force);
      return this.mustGet(id);
    });
  }

  pause(id: string): Promise<Vm> {
    return this.withLock(id, async () => {
      const vm = this.mustGet(id);
      this.expectState(vm, ['running'], 'pause');
      await this.qmpAction(id, 'pause', 'stop');
      this.setState(id, 'paused');
      return this.mustGet(id);
    });
  }

  resume(id: string): Promise<Vm> {
    // A VM paused to disk is stopped, with its state to restore: resuming it is its start.
    const saved = this.d.vms.get(id);
    if (saved?.state === 'stopped' && saved.restoreFrom !== undefined) return this.start(id);
    return this.withLock(id, async () => {
      const vm = this.mustGet(id);
      this.expectState(vm, ['paused'], 'resume');
      await this.qmpAction(id, 'resume', 'cont');
      this.setState(id, 'running');
      return this.mustGet(id);
    });
  }

  reboot(id: string): Promise<Vm> {
    return this.withLock(id, async () => {
      const vm = this.mustGet(id);
      this.expectState(vm, ['running'], 'reboot');
      const live = this.mustLive(id);
      if (!live.hypervisor.resetExits) {
        await live.qmp.execute('system_reset');
        return this.mustGet(id);
      }
      live.intent = 'reboot';
      await live.qmp.execute('system_reset').catch(() => undefined); // the VMM may exit before it replies
      if (!(await this.waitExited(live, 10_000))) {
        kill(live.pid);
        await live.exited;
      }
      // A forced stop that came in meanwhile wins: no relaunch.
      if (this.forcedStops.has(id)) return this.mustGet(id);
      await this.launch(this.mustGet(id), 'reboot');
      return this.mustGet(id);
    });
  }

  private async killNow(live: LiveVm): Promise<Vm> {
    this.forcedStops.add(live.id);
    live.intent = 'stop';
    this.setState(live.id, 'stopping', live.pid);
    kill(live.pid);
    await live.exited;
    return this.mustGet(live.id);
  }

  /** Stops the VM if it runs (cleanly unless `force`), then forgets it and its files. */
  delete(id: string, force: boolean): Promise<void> {
    return this.withLock(id, async () => {
      const vm = this.mustGet(id);
      if (this.live.has(id)) await this.stopLive(vm, force);
      this.d.vms.delete(id);
      this.d.admission?.release(id);
      rmSync(this.paths(id).dir, { recursive: true, force: true });
      this.d.hub.publish(id, 'VM_DELETED', {}, vm.tenant); // the row is gone: name the tenant
      this.d.hub.forgetVm(id);
      this.onVmDeleted(vm);
      this.forcedStops.delete(id);
      this.resets.delete(id);
    });
  }

  /** On server start: reattach to every VMM that still runs, settle the rest. */
  async reattachAll(): Promise<void> {
    for (const vm of this.d.vms.list()) {
      if (!ACTIVE_STATES.includes(vm.state)) continue;
      await this.withLock(vm.id, () => this.reattach(vm)).catch((e: Error) => this.d.log.error({ vm: vm.id, err: e.message }, 'reattach failed'));
    }
    // What still runs holds host capacity again.
    this.d.admission?.rebuild(this.d.vms.list());
    // What is left on the host of VMs that no longer run (a kill -9 of the server before its cleanup).
    const live = new Set(this.live.keys());
    for (const c of this.components) {
      try {
        c.reconcile?.(live);
      } catch (e) {
        this.d.log.error({ component: c.name, err: (e as Error).message }, 'component reconcile failed');
      }
    }
  }

  /** Server shutdown: let go of the VMMs (they keep running) without changing any state. */
  detachAll(): void {
    this.closing = true;
    for (const live of this.live.values()) {
      live.qmp.removeAllListeners('close');
      live.qmp.close();
      live.console.close();
    }
    this.live.clear();
  }

  // ---- internals ----

  private async launch(vm: Vm, reason: 'start' | 'reboot' = 'start'): Promise<void> {
    const hypervisor = this.d.hypervisors.get(vm.hypervisor);
    const image = this.d.images.get(vm.image);
    if (!hypervisor || !hypervisor.availability().available) {
      throw new ApiError(409, 'hypervisor_unavailable', `hypervisor ${vm.hypervisor} is not available on this host: ${hypervisor?.availability().reason ?? 'unknown'}`);
    }
    if (!image) throw new ApiError(409, 'image_missing', `image ${vm.image} is no longer registered`);
    const jail = this.d.jail;
    if (jail?.mode === 'on' && !jail.enabled) throw new ApiError(409, 'jail_unavailable', `CAPSULE_JAIL=on: ${jail.unavailableReason()}`);
    const paths = this.paths(vm.id);
    mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
    removeFiles(paths.pidfile, paths.qmpSocket, paths.consoleSocket, paths.config);
    // The components' part of the launch (devices, files, grants); one that refuses the start
    // (a missing volume file) leaves the VM as it was.
    const jailUid = jail?.enabled ? jail.identity(vm.id).uid : undefined;
    const plan: LaunchPlan = emptyPlan();
    try {
      const snapshots = hypervisor.snapshotSupport().available;
      for (const c of this.components) c.prepare({ vm, image, paths, jailUid, snapshots }, plan);
    } catch (e) {
      this.cleanupComponents(vm.id);
      if (reason === 'reboot') {
        // A relaunch (the VM is `starting`): there is nobody to give the 4xx to.
        this.setState(vm.id, 'crashed');
        this.d.hub.publish(vm.id, 'CRASHED', { reason: `relaunch refused: ${(e as Error).message}` });
      }
      throw e;
    }
    this.setState(vm.id, 'starting');
    let pid: number | undefined;
    try {
      let consoleBridge: ConsoleBridge;
      let qmp: QmpClient;
      if (jail?.enabled) {
        // Jailed: the VMM runs in the foreground under `unshare`, whose host pid we track
        // (it lives as long as the VMM; killing it kills the VMM). Ready = QMP answers.
        let cmd: ReturnType<Jail['prepare']>;
        try {
          cmd = jail.prepare(hypervisor, vm, image, paths, plan.devices, plan.minFileSizeBytes, plan.netns);
        } catch (e) {
          throw new LaunchError('the jail could not be set up', (e as Error).message);
        }
        this.d.log.info({ vm: vm.id, hypervisor: hypervisor.name, uid: cmd.uid, gid: cmd.gid, reason }, 'launching jailed VMM');
        const record = `in the jail (uid ${cmd.uid}, gid ${cmd.gid}, root ${paths.root}): ${commandLine(cmd.vmm)}`;
        const proc = await spawnDetached(cmd.command, cmd.args, cmd.env, paths.log, record);
        const livePid = pid = proc.pid;
        writeFileSync(paths.pidfile, `${pid}\n`, { mode: 0o644 });
        qmp = await QmpClient.connectWithRetry(paths.qmpSocket, LAUNCH_TIMEOUT_MS, () => isAlive(livePid)).catch(async (e: Error) => {
          throw await jailedStartFailure(proc, e, () => jail.oomKilled(vm.id), paths.log);
        });
        consoleBridge = new ConsoleBridge(paths.consoleSocket);
        await consoleBridge.connect().catch((e: Error) => { qmp.close(); throw asLaunchError(e, 'the VMM\'s console did not answer'); });
      } else {
        const launch = hypervisor.launchCommand(vm, image, paths, plan.devices);
        const { env, config } = launch;
        // The VM's network namespace: the daemonized VMM lives there (nsenter --net execs it).
        const { command, args } = plan.netns === undefined ? launch : { command: 'nsenter', args: [`--net=${plan.netns}`, '--', launch.command, ...launch.args] };
        mkdirSync(paths.root, { recursive: true, mode: 0o700 });
        if (config !== undefined) writeFileSync(paths.config, config, { mode: 0o600, flag: 'wx' });
        this.d.log.info({ vm: vm.id, command, reason }, 'launching VMM');
        await runLauncher(command, args, env, paths.log);
        pid = readPidfile(paths.pidfile);
        if (pid === undefined) throw new LaunchError('the VMM did not report its pid', `the VMM wrote no pidfile (${paths.pidfile})`);
        consoleBridge = new ConsoleBridge(paths.consoleSocket);
        await consoleBridge.connect().catch((e: Error) => { throw asLaunchError(e, 'the VMM\'s console did not answer'); });
        const livePid = pid;
        qmp = await QmpClient.connectWithRetry(paths.qmpSocket, 10_000, () => isAlive(livePid)).catch((e: Error) => {
          throw asLaunchError(e, 'QMP did not answer within 10 s');
        });
      }
      if (plan.restore) await restoreSnapshot(hypervisor, qmp, plan.restore.dir, vm.memoryMiB);
      // The VMM read its config at start: the command line stays in no file.
      removeFiles(paths.config);
      const live = this.track(vm.id, pid, hypervisor, qmp, consoleBridge, undefined, jailUid);
      for (const c of this.components) c.attach?.(this.liveContext(live));
      this.setState(vm.id, 'running', pid);
    } catch (e) {
      if (pid !== undefined) kill(pid);
      if (pid !== undefined && jail?.enabled) await waitForExit(pid, 5000);
      removeFiles(paths.pidfile, paths.qmpSocket, paths.consoleSocket, paths.config);
      // The client gets the cause; the detail (host paths, uids, the command line, the log's
      // tail) goes to the operator: the server log and the VM's log.
      const failure = asLaunchError(e);
      this.d.log.error({ vm: vm.id, err: failure.message }, `VMM launch failed: ${failure.reason}`);
      logLine(paths.log, `launch failed: ${failure.reason}: ${failure.message}`);
      await jail?.cleanup(vm.id, paths.dir);
      this.cleanupComponents(vm.id);
      const message = `VMM launch failed: ${failure.reason}`;
      this.setState(vm.id, 'crashed');
      this.d.hub.publish(vm.id, 'CRASHED', { reason: message });
      throw new ApiError(500, 'launch_failed', `${message}; see GET /v1/vms/${vm.id}/log`);
    }
  }

  private get components(): readonly VmComponent[] {
    return this.d.components ?? [];
  }

  private liveContext(live: LiveVm): LiveVmContext {
    return { id: live.id, pid: live.pid, qmp: live.qmp, hypervisor: live.hypervisor, paths: this.paths(live.id), jailUid: live.jailUid };
  }

  /** The VMM is gone (or never came): every component lets go of it. */
  private cleanupComponents(id: string): void {
    for (const c of this.components) {
      try {
        c.cleanup(id);
      } catch (e) {
        this.d.log.error({ vm: id, component: c.name, err: (e as Error).message }, 'component cleanup failed');
      }
    }
  }

  private track(id: string, pid: number, hypervisor: Hypervisor, qmp: QmpClient, consoleBridge: ConsoleBridge, intent: Intent | undefined, jailUid: number | undefined): LiveVm {
    let resolveExited!: () => void;
    const exited = new Promise<void>((r) => { resolveExited = r; });
    const live: LiveVm = { id, pid, hypervisor, qmp, console: consoleBridge, jailUid, intent, shutdownReason: undefined, exited };
    this.live.set(id, live);
    onRateLimitedEvents(qmp, (ev, publish) => this.onQmpEvent(live, ev, publish),
      (dropped) => this.d.log.warn({ vm: id, dropped }, 'QMP events not published: the VMM sent more than the rate limit'));
    qmp.on('protocol-error', (what: string) => this.d.log.warn({ vm: id, what }, 'QMP protocol error: closing the connection'));
    qmp.once('close', () => { void this.onVmmGone(live).finally(resolveExited); });
    return live;
  }

  private onQmpEvent(live: LiveVm, ev: QmpEvent, publish: boolean): void {
    if (publish) this.d.hub.publish(live.id, ev.event, ev.data);
    const state = this.d.vms.get(live.id)?.state;
    if (ev.event === 'STOP' && state === 'running') this.setState(live.id, 'paused');
    else if (ev.event === 'RESUME' && state === 'paused') this.setState(live.id, 'running');
    else if (ev.event === 'SHUTDOWN') {
      live.shutdownReason = typeof ev.data.reason === 'string' ? ev.data.reason : 'unknown';
      if (live.intent !== 'reboot') this.setState(live.id, 'stopping');
    }
  }

  /** The QMP connection closed: the VMM is gone (or going). Decide what that means. */
  private async onVmmGone(live: LiveVm): Promise<void> {
    if (this.closing) return;
    if (!(await waitForExit(live.pid, 5000))) {
      this.d.log.warn({ vm: live.id, pid: live.pid }, 'VMM closed QMP but did not exit; killing it');
      kill(live.pid);
      await waitForExit(live.pid, 5000);
    }
    live.console.close();
    this.live.delete(live.id);
    const paths = this.paths(live.id);
    removeFiles(paths.pidfile, paths.qmpSocket, paths.consoleSocket);
    await this.d.jail?.cleanup(live.id, paths.dir);
    this.cleanupComponents(live.id);
    if (!this.d.vms.get(live.id)) return; // deleted meanwhile
    logLine(paths.log, `VMM ${live.pid} exited (${live.intent ? `requested ${live.intent}` : `shutdown reason: ${live.shutdownReason ?? 'none'}`})`);
    const guestReset = live.shutdownReason === 'guest-reset';
    if (live.intent === 'reboot') {
      this.setState(live.id, 'starting');
    } else if (live.intent === 'stop' || (live.shutdownReason !== undefined && !guestReset)) {
      this.setState(live.id, 'stopped');
    } else if (guestReset && !this.forcedStops.has(live.id) && this.allowReset(live.id)) {
      // The guest rebooted itself: boot it again, like a machine would.
      this.setState(live.id, 'starting');
      void this.withLock(live.id, () => (this.forcedStops.has(live.id) ? Promise.resolve() : this.launch(this.mustGet(live.id), 'reboot'))).catch((e: Error) =>
        this.d.log.error({ vm: live.id, err: e.message }, 'relaunch after guest reset failed'));
    } else {
      const reason = guestReset ? 'guest reset loop' : 'VMM exited unexpectedly';
      this.setState(live.id, 'crashed');
      this.d.hub.publish(live.id, 'CRASHED', { reason, pid: live.pid });
    }
  }

  /**
   * A QMP command for a lifecycle action. If it fails because the VMM went away meanwhile (a
   * forced stop, a crash), that is a conflict with the VM's new state (409), not a server error.
   */
  private async qmpAction(id: string, action: string, command: string): Promise<void> {
    const live = this.mustLive(id);
    try {
      await live.qmp.execute(command);
    } catch (e) {
      if (live.qmp.isClosed || live.intent === 'stop' || this.live.get(id) !== live) {
        throw new ApiError(409, 'invalid_state', `cannot ${action}: the VM's VMM went away meanwhile (state ${this.d.vms.get(id)?.state ?? 'deleted'})`);
      }
      throw e;
    }
  }

  private allowReset(id: string): boolean {
    const now = Date.now();
    const recent = (this.resets.get(id) ?? []).filter((t) => now - t < 60_000);
    recent.push(now);
    this.resets.set(id, recent);
    return recent.length <= MAX_RESETS_PER_MINUTE;
  }

  private async stopLive(vm: Vm, force: boolean): Promise<void> {
    const live = this.live.get(vm.id);
    if (!live) {
      this.setState(vm.id, 'stopped');
      return;
    }
    live.intent = 'stop';
    this.setState(vm.id, 'stopping', live.pid);
    if (!force) {
      try {
        if (vm.state === 'paused') await live.qmp.execute('cont');
        await live.qmp.execute('system_powerdown');
      } catch (e) {
        this.d.log.warn({ vm: vm.id, err: (e as Error).message }, 'clean power-off request failed');
      }
      if (await this.waitExited(live, this.d.stopTimeoutMs)) return;
      this.d.log.warn({ vm: vm.id }, 'guest did not power off in time; killing the VMM');
    }
    kill(live.pid);
    await live.exited;
  }

  private waitExited(live: LiveVm, ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), ms);
      void live.exited.then(() => { clearTimeout(t); resolve(true); });
    });
  }

  /**
   * The server died during a stop (kill -9 drill): nobody would finish it, and the VM would stay
   * `stopping` for good with its VMM running. Finish it as a clean stop (the guest gets the power
   * button again and CAPSULE_STOP_TIMEOUT before the kill), after the reattach and in the
   * background, so that the server's start does not wait on guests.
   */
  private finishInterruptedStop(id: string): void {
    void this.withLock(id, async () => {
      const vm = this.d.vms.get(id);
      if (vm?.state !== 'stopping' || !this.live.has(id)) return;
      this.d.log.info({ vm: id }, 'finishing a stop the previous server process left under way');
      await this.stopLive(vm, false);
    }).catch((e: Error) => this.d.log.error({ vm: id, err: e.message }, 'finishing an interrupted stop failed'));
  }

  private async reattach(vm: Vm): Promise<void> {
    const paths = this.paths(vm.id);
    const pid = readPidfile(paths.pidfile);
    if (pid !== undefined && isOurProcess(pid, vm.id)) {
      try {
        // A jailed VMM owns its sockets and could swap one for a link to some other socket.
        assertSockets(paths.qmpSocket, paths.consoleSocket);
        const consoleBridge = new ConsoleBridge(paths.consoleSocket);
        await consoleBridge.connect(2000);
        const qmp = await QmpClient.connectWithRetry(paths.qmpSocket, 5000, () => isAlive(pid));
        const hypervisor = this.d.hypervisors.get(vm.hypervisor)!;
        // A jailed VMM's root is the server's tmpfs mount: that says it runs jailed, whatever the jail setting is now.
        const jailUid = this.d.jail?.rootMounted(paths.dir) ? this.d.jail.identity(vm.id).uid : undefined;
        const live = this.track(vm.id, pid, hypervisor, qmp, consoleBridge, vm.state === 'stopping' ? 'stop' : undefined, jailUid);
        for (const c of this.components) c.reattach?.(this.liveContext(live));
        const status = await qmp.execute<{ running: boolean; status: string }>('query-status');
        if (vm.state !== 'stopping') this.setState(vm.id, status.running ? 'running' : 'paused', pid);
        this.d.log.info({ vm: vm.id, pid }, 'reattached to running VMM');
        if (vm.state === 'stopping') this.finishInterruptedStop(vm.id);
        return;
      } catch (e) {
        this.d.log.warn({ vm: vm.id, pid, err: (e as Error).message }, 'VMM alive but unreachable; killing it');
        kill(pid);
        await waitForExit(pid, 5000);
      }
    }
    // A VMM launched just before the previous server process died may have no pidfile yet (the
    // jailed launch writes it after the spawn): found by its command line, which names the VM, it
    // is ended rather than left running unseen with its mount and cgroups.
    await killProcessesNaming(vm.id, (pid) => this.d.log.warn({ vm: vm.id, pid }, 'VMM without a pidfile (the server died while launching it); killing it'));
    removeFiles(paths.pidfile, paths.qmpSocket, paths.consoleSocket);
    await this.d.jail?.cleanup(vm.id, paths.dir);
    this.cleanupComponents(vm.id);
    if (vm.state === 'stopping') {
      this.setState(vm.id, 'stopped');
    } else {
      this.setState(vm.id, 'crashed');
      this.d.hub.publish(vm.id, 'CRASHED', { reason: 'VMM gone while the server was down' });
    }
  }

  private setState(id: string, state: VmState, pid?: number): void {
    const before = this.d.vms.get(id);
    if (!before) return;
    const keepPid = state === 'stopped' || state === 'crashed' || state === 'starting' ? undefined : (pid ?? before.pid);
    this.d.vms.setState(id, state, keepPid);
    // Every way a VMM ends (stop, crash, failed launch) passes here: its host capacity is free again.
    if (state === 'stopped' || state === 'crashed') this.d.admission?.release(id);
    if (before.state !== state) this.d.hub.publish(id, 'STATE_CHANGED', { state, previous: before.state });
  }

  private mustGet(id: string): Vm {
    const vm = this.d.vms.get(id);
    if (!vm) throw new ApiError(404, 'not_found', `no VM with id ${id}`);
    return vm;
  }

  private mustLive(id: string): LiveVm {
    const live = this.live.get(id);
    if (!live) throw new ApiError(409, 'not_running', `VM ${id} has no running VMM`);
    return live;
  }

  private expectState(vm: Vm, allowed: readonly VmState[], action: string): void {
    if (!allowed.includes(vm.state)) {
      throw new ApiError(409, 'invalid_state', `cannot ${action} VM ${vm.name} in state ${vm.state} (allowed from: ${allowed.join(', ')})`);
    }
  }

  private withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(id) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const settled = next.catch(() => undefined);
    this.locks.set(id, settled);
    void settled.then(() => { if (this.locks.get(id) === settled) this.locks.delete(id); });
    return next;
  }
}
