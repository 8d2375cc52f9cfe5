// The virtual machine: KVM VM + vCPUs + memory, and its lifecycle (running / paused / shut down;
// a guest or QMP reset rebuilds the KVM VM over the same memory). A machine either boots a kernel
// (start) or is built from a snapshot's state (restore); a paused one gives its whole state
// (captureState) for a snapshot. Guest memory itself is the snapshot module's. Devices, buses and interrupt
// lines belong to the DeviceManager; the Machine creates the legacy ones and dispatches exits.
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { ACPI_GED_GSI, ACPI_GED_PORT, ACPI_SLEEP_CONTROL_PORT, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, VMGENID_ADDR } from './boot/layout.js';
import { filterCpuid } from './boot/cpuid.js';
import { loadLinux, type BootSource } from './boot/loader.js';
import { bootFpu, bootMsrs, bootRegs, bootSregs, configureLapic } from './boot/regs.js';
import { VcpuThreads } from './cpu/vcpus.js';
import { msrsToSave } from './cpu/msrs.js';
import { describeVcpu, restoreVcpuState, restoreVmState, savableMsrs, saveVcpuState, saveVmState, type VcpuState, type VmState } from './cpu/state.js';
import { AcpiGed, AcpiSleep, GED_EVENT_POWER_BUTTON, GED_EVENT_VMGENID } from './devices/legacy/acpi-pm.js';
import { Cmos } from './devices/legacy/cmos.js';
import { DeviceManager } from './devices/manager.js';
import { mainPoller } from './io/poller.js';
import { I8042 } from './devices/legacy/i8042.js';
import { Serial } from './devices/legacy/serial.js';
import { Kvm, type CpuidEntry, type VcpuFd, type VmFd } from './kvm/kvm.js';
import { EXIT, EXIT_IO_OUT, RUN, SYSTEM_EVENT } from './kvm/layout.js';
import { KVM_CAP_READONLY_MEM, KVM_MEM_READONLY } from './kvm/ioctls.js';
import { munmap } from './kvm/sys.js';
import { logger } from './log.js';
import { GuestAddress, type GuestMemory } from './memory/guest-memory.js';

const log = logger('machine');

export type RunState = 'prelaunch' | 'running' | 'paused' | 'shutdown';
export interface ShutdownInfo {
  guest: boolean;
  reason: 'guest-shutdown' | 'guest-reset' | 'host-qmp-system-reset' | 'host-qmp-quit' | 'host-signal' | 'guest-panic' | 'host-error';
}

export interface MachineOptions {
  cpus: number;
  memory: GuestMemory;
  boot: BootSource;
  consoleOut: (b: Uint8Array) => void;
  /**
   * Called once the vCPU threads exist and before any of them runs guest code, at every build
   * (boot, restore, a guest reset's rebuild): the VMM ends its start-up without huge pages there
   * (memory/huge-pages.ts).
   */
  onVcpuThreads?: () => void;
}

/** What a snapshot holds of a machine besides guest memory. */
export interface MachineState {
  vcpus: VcpuState[];
  vm: VmState;
  /** in DeviceManager.snapshotDevices() order */
  devices: Buffer[];
}

const SERIAL_BASE = 0x3f8;
const SERIAL_IRQ = 4;

/**
 * Events: 'stop', 'resume', 'reset' (after a guest or host reset), 'shutdown' (ShutdownInfo; the
 * machine is gone), 'guest-reset' (ShutdownInfo reason guest-reset, before the rebuild).
 */
export class Machine extends EventEmitter {
  state: RunState = 'prelaunch';
  readonly devices: DeviceManager;
  readonly serial: Serial;
  readonly i8042: I8042;
  readonly ged: AcpiGed;
  private kvm: Kvm;
  private supportedCpuid: CpuidEntry[];
  private vm: VmFd | null = null;
  private vcpus: VcpuFd[] = [];
  private threads: VcpuThreads | null = null;
  private unknownPorts = new Set<number>();
  private unknownMmio = new Set<number>();
  private busy: Promise<void> = Promise.resolve();
  /** MSRs a snapshot saves: chosen once, at the first build (KVM_GET_MSR_INDEX_LIST is init-only) */
  private msrIndices: number[] | null = null;
  /** the VM's XSAVE size (KVM_CHECK_EXTENSION, which the seccomp filter allows only during init) */
  private xsaveSize = 0;
  exits = 0;
  /**
   * A reset ends the machine (shutdown with reason guest-reset / host-qmp-system-reset) instead of
   * rebuilding it: set once the seccomp filter is on, which forbids KVM_CREATE_VM/VCPU and new
   * threads. The parent relaunches the VMM (QEMU's -no-reboot behaviour).
   */
  resetExits = false;
  /** per-port exit counts, kept when CAPSULE_DEBUG_DUMP_SECS is set */
  portStats: Map<string, number> | null = process.env.CAPSULE_DEBUG_DUMP_SECS ? new Map() : null;

  constructor(private readonly opts: MachineOptions) {
    super();
    this.kvm = new Kvm();
    this.supportedCpuid = this.kvm.supportedCpuid();
    const irq = (line: number) => (level: boolean): void => {
      log.trace(`irq ${line} -> ${level ? 1 : 0}`);
      try {
        this.vm?.setIrqLine(line, level);
      } catch (e) {
        log.warn(`irq ${line}: ${(e as Error).message}`);
      }
    };
    this.devices = new DeviceManager(opts.memory, irq);
    this.serial = new Serial(opts.consoleOut, irq(SERIAL_IRQ));
    if (process.env.CAPSULE_LOG_LEVEL === 'trace') this.serial.trace = (m) => log.trace(`serial: ${m}`);
    this.i8042 = new I8042(() => this.guestReset());
    this.ged = new AcpiGed(irq(ACPI_GED_GSI));
    const sleep = new AcpiSleep(() => this.guestPowerOff());
    const ignore = { read: (_o: number, d: Uint8Array) => d.fill(0), write: () => {} };
    const d = this.devices;
    d.addPio(SERIAL_BASE, 8, this.serial, 'serial0');
    d.addPio(0x60, 5, this.i8042, 'i8042');
    d.addPio(0x70, 2, new Cmos(), 'cmos');
    d.addPio(0x80, 1, ignore, 'post-code');
    d.addPio(ACPI_SLEEP_CONTROL_PORT, 2, sleep, 'acpi-sleep');
    d.addPio(ACPI_GED_PORT, 1, this.ged, 'acpi-ged');
  }

  /** Create the KVM VM, load the kernel, start the vCPU threads. */
  start(): Promise<void> {
    return this.serial_(async () => {
      if (this.state !== 'prelaunch') return;
      await this.build();
      this.state = 'running';
    });
  }

  /**
   * Builds the machine from a snapshot's state instead of booting (the memory already holds the
   * snapshot's pages): it ends paused where the snapshot was taken; resume() lets it run on.
   * `beforeRun` runs before any other lifecycle operation can (the VMM installs its filter there).
   */
  restore(state: MachineState, beforeRun?: () => Promise<void>): Promise<void> {
    return this.serial_(async () => {
      if (this.state !== 'prelaunch') throw new Error(`cannot restore into a machine that is ${this.state}`);
      if (state.vcpus.length !== this.opts.cpus) throw new Error(`the state has ${state.vcpus.length} vCPUs, the machine ${this.opts.cpus}`);
      try {
        await this.build(state);
      } catch (e) {
        await this.teardown();
        throw e;
      }
      this.newGeneration();
      this.state = 'paused';
      // still inside the lifecycle queue: a `cont` sent meanwhile waits for this (the seccomp filter)
      await beforeRun?.();
    });
  }

  /**
   * This guest is now one of possibly many copies of a snapshot: a new VM generation ID, and the
   * GED event that makes the guest read it (Linux reseeds its RNG when it changed). The guest
   * sees the interrupt once it runs.
   */
  private newGeneration(): void {
    this.opts.memory.write(GuestAddress(VMGENID_ADDR), randomBytes(16));
    this.ged.trigger(GED_EVENT_VMGENID);
  }

  /** The CPUID vCPU `i` is configured with (what a restoring host must compute the same). */
  configuredCpuid(i = 0): CpuidEntry[] {
    return filterCpuid(this.supportedCpuid, i, this.opts.cpus);
  }

  /** Every vCPU's, the in-kernel devices' and the devices' state of a paused machine. */
  captureState(): MachineState {
    if (this.state !== 'paused' || !this.vm) throw new Error(`the machine is ${this.state}: only a paused machine can be saved`);
    // refuse before reading anything: a device whose rings another thread owns
    const devices = this.devices.saveStates();
    const opts = { msrIndices: this.msrIndices ?? [], xsaveSize: this.xsaveSize };
    const vcpus = this.vcpus.map((v) => saveVcpuState(v, opts));
    return { vcpus, vm: saveVmState(this.vm), devices };
  }

  private async build(restore?: MachineState): Promise<void> {
    const { memory, cpus } = this.opts;
    const vm = this.kvm.createVm();
    this.vm = vm;
    for (const r of memory.regions) vm.setUserMemoryRegion(r.slot, BigInt(r.guestBase), BigInt(r.size), memory.regionHostAddr(r));
    // device memory (virtio-pmem windows above RAM), again at every rebuild
    const devMem = this.devices.deviceMemory;
    if (devMem.some((r) => r.readOnly) && this.kvm.checkExtension(KVM_CAP_READONLY_MEM) <= 0) {
      throw new Error('KVM lacks KVM_CAP_READONLY_MEM: a read-only virtio-pmem cannot be mapped');
    }
    for (const r of devMem) vm.setUserMemoryRegion(r.slot, BigInt(r.guestBase), BigInt(r.size), r.hostAddr, r.readOnly ? KVM_MEM_READONLY : 0);
    // order matters: identity map before any vCPU, then TSS, irqchip, PIT
    vm.setIdentityMapAddr(BigInt(KVM_IDENTITY_MAP_ADDR));
    vm.setTssAddr(KVM_TSS_ADDR);
    vm.createIrqchip();
    vm.createPit2(1);
    this.xsaveSize = vm.xsaveSize();
    this.devices.attachNotifiers(vm, mainPoller());
    this.vcpus = [];
    if (restore) {
      // Firecracker's order: vCPUs created, the VM's in-kernel devices, then each vCPU's state
      for (let i = 0; i < cpus; i++) this.vcpus.push(vm.createVcpu(i));
      restoreVmState(vm, restore.vm);
      restore.vcpus.forEach((s, i) => restoreVcpuState(this.vcpus[i] as VcpuFd, s, this.xsaveSize));
      this.chooseMsrs();
      this.devices.restoreStates(restore.devices);
      log.info(`restored ${cpus} vCPU(s) and ${restore.devices.length} device states`);
    } else {
      this.bootVcpus(vm);
    }
    const threads = new VcpuThreads({
      onExit: (v) => this.serviceExit(v),
      onShutdown: (id) => {
        // what the vCPU held when it gave up: the first clue to a guest that died (the vCPU
        // thread waits outside KVM_RUN, so its registers can be read here). On AMD, KVM has
        // already reset the vCPU (the VMCB is undefined after a shutdown intercept): RIP 0xfff0.
        const v = this.vcpus[id];
        log.info(`vcpu${id}: triple fault (KVM_EXIT_SHUTDOWN): resetting; ${v ? describeVcpu(v) : ''}`);
        this.guestReset();
      },
      onSystemEvent: (id, type) => {
        log.info(`vcpu${id}: system event ${type}`);
        if (type === SYSTEM_EVENT.RESET) this.guestReset();
        else if (type === SYSTEM_EVENT.CRASH) void this.shutdown({ guest: true, reason: 'guest-panic' });
        else this.guestPowerOff();
      },
      onFatal: (id, detail) => {
        log.error(`vcpu${id}: ${detail}`);
        void this.shutdown({ guest: false, reason: 'host-error' });
      },
    });
    this.threads = threads;
    // parked until the hook has run; a restored machine stays parked for its caller's resume()
    const hook = this.opts.onVcpuThreads;
    await threads.start(this.vcpus, this.devices.fastInterruptRegisters(), { paused: restore !== undefined || hook !== undefined });
    if (hook) {
      hook();
      if (!restore) threads.resume();
    }
  }

  /** The MSRs a snapshot will save: those KVM lists that vCPU 0 (CPUID set) can read. */
  private chooseMsrs(): void {
    const v0 = this.vcpus[0];
    if (this.msrIndices || !v0) return;
    const { msrs, refused } = savableMsrs(v0, msrsToSave(this.kvm.msrIndexList(), v0.getCpuid()));
    if (refused.length) log.debug(`MSRs KVM does not read for this guest (left out of snapshots): ${refused.map((i) => `0x${i.toString(16)}`).join(' ')}`);
    this.msrIndices = msrs;
  }

  /** A fresh boot: the kernel loaded, vCPU 0 at its entry point, the others waiting for INIT/SIPI. */
  private bootVcpus(vm: VmFd): void {
    const { memory, cpus } = this.opts;
    const loaded = loadLinux(memory, { ...this.opts.boot, acpiDevices: this.devices.acpiDevices() });
    log.info(`kernel protocol 0x${loaded.image.version.toString(16)}, entry 0x${loaded.entry.toString(16)}` +
      (loaded.initrd ? `, initrd at 0x${loaded.initrd.addr.toString(16)} (${loaded.initrd.size} bytes)` : ''));
    for (let i = 0; i < cpus; i++) {
      const v = vm.createVcpu(i);
      this.vcpus.push(v);
      v.setCpuid(filterCpuid(this.supportedCpuid, i, cpus));
      const msrs = bootMsrs();
      const n = v.setMsrs(msrs);
      if (n !== msrs.length) log.debug(`vcpu${i}: KVM set ${n} of ${msrs.length} MSRs`);
      v.setLapic(configureLapic(v.getLapic()));
      if (i === 0) {
        v.setRegs(bootRegs(loaded.entry));
        v.setSregs(bootSregs(v.getSregs()));
        v.setFpu(bootFpu());
      }
    }
    this.chooseMsrs();
  }

  private async teardown(): Promise<void> {
    if (this.threads) await this.threads.stop();
    this.threads = null;
    for (const v of this.vcpus) {
      try { munmap(v.runAddr, v.runSize); } catch { /* ignore */ }
      v.close();
    }
    this.vcpus = [];
    this.vm?.close();
    this.vm = null;
  }

  /** The exit handler: runs on the main thread while the vCPU waits. */
  serviceExit(v: VcpuFd): void {
    this.exits++;
    const run = v.runView;
    const reason = run.getUint32(RUN.exitReason, true);
    if (reason === EXIT.IO) {
      const dir = run.getUint8(RUN.ioDirection);
      const size = run.getUint8(RUN.ioSize);
      const port = run.getUint16(RUN.ioPort, true);
      const count = run.getUint32(RUN.ioCount, true);
      const off = Number(run.getBigUint64(RUN.ioDataOffset, true));
      if (this.portStats) {
        const k = `${dir === EXIT_IO_OUT ? 'out' : 'in'}:${port.toString(16)}`;
        this.portStats.set(k, (this.portStats.get(k) ?? 0) + count);
      }
      if (![1, 2, 4].includes(size) || count === 0 || off + size * count > v.runSize) return;
      for (let i = 0; i < count; i++) {
        const data = new Uint8Array(run.buffer, off + i * size, size);
        if (dir === EXIT_IO_OUT) {
          if (!this.devices.pio.write(port, data)) this.unknownPort(port, 'write');
        } else if (!this.devices.pio.read(port, data)) {
          data.fill(0xff);
          this.unknownPort(port, 'read');
        }
      }
    } else if (reason === EXIT.MMIO) {
      const addr = Number(run.getBigUint64(RUN.mmioPhysAddr, true));
      const len = run.getUint32(RUN.mmioLen, true);
      if (len < 1 || len > 8) return;
      const data = new Uint8Array(run.buffer, RUN.mmioData, len);
      if (run.getUint8(RUN.mmioIsWrite)) {
        if (!this.devices.mmio.write(addr, data)) this.unknownAddr(addr, 'write');
      } else if (!this.devices.mmio.read(addr, data)) {
        data.fill(0xff);
        this.unknownAddr(addr, 'read');
      }
    }
  }

  private unknownPort(port: number, what: string): void {
    if (this.unknownPorts.has(port) || this.unknownPorts.size > 1024) return;
    this.unknownPorts.add(port);
    log.debug(`unhandled PIO ${what} at port 0x${port.toString(16)} (logged once)`);
  }
  private unknownAddr(addr: number, what: string): void {
    const page = Math.floor(addr / 4096);
    if (this.unknownMmio.has(page) || this.unknownMmio.size > 1024) return;
    this.unknownMmio.add(page);
    log.debug(`unhandled MMIO ${what} at 0x${addr.toString(16)} (logged once per page)`);
  }

  /** Serialise lifecycle operations. */
  private serial_<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.busy.then(fn);
    this.busy = p.then(() => undefined, () => undefined);
    return p;
  }

  pause(): Promise<void> {
    return this.serial_(async () => {
      if (this.state !== 'running') return;
      await this.threads?.pause();
      this.state = 'paused';
      this.emit('stop');
    });
  }

  resume(): Promise<void> {
    return this.serial_(async () => {
      if (this.state !== 'paused') return;
      this.threads?.resume();
      this.state = 'running';
      this.emit('resume');
    });
  }

  /** Rebuild the VM: fresh vCPUs, irqchip and kernel load over the same memory and devices. */
  reset(): Promise<void> {
    if (this.resetExits) return this.shutdown({ guest: false, reason: 'host-qmp-system-reset' });
    return this.serial_(async () => {
      if (this.state === 'shutdown') return;
      const wasPaused = this.state === 'paused';
      await this.teardown();
      this.serial.reset();
      // reset first (a notification still queued then starts nothing), then let the disk
      // requests still running finish: they would land in the rebuilt machine's memory
      this.devices.reset();
      await this.devices.quiesce();
      await this.build();
      if (wasPaused) await this.threads?.pause();
      this.emit('reset');
    }).catch((e: unknown) => {
      // half rebuilt (e.g. a boot file that became unreadable): nothing can run; end cleanly
      log.error(`reset failed: ${(e as Error).message}`);
      return this.shutdown({ guest: false, reason: 'host-error' });
    });
  }

  private guestReset(): void {
    if (this.state === 'shutdown') return;
    if (this.resetExits) {
      void this.shutdown({ guest: true, reason: 'guest-reset' });
      return;
    }
    this.emit('guest-reset', { guest: true, reason: 'guest-reset' } satisfies ShutdownInfo);
    void this.reset();
  }

  private guestPowerOff(): void {
    void this.shutdown({ guest: true, reason: 'guest-shutdown' });
  }

  /** ACPI power button (QMP system_powerdown). */
  powerButton(): void {
    this.ged.trigger(GED_EVENT_POWER_BUTTON);
  }

  shutdown(info: ShutdownInfo): Promise<void> {
    return this.serial_(async () => {
      if (this.state === 'shutdown') return;
      this.state = 'shutdown';
      await this.teardown();
      this.devices.close();
      this.emit('shutdown', info);
    });
  }

  /** Debug: pause, read every vCPU's RIP/RFLAGS and MP state, resume. */
  async dumpState(): Promise<string> {
    if (this.state !== 'running') return `state ${this.state}`;
    await this.threads?.pause();
    const out: string[] = [`exits=${this.exits}`];
    for (const v of this.vcpus) out.push(`vcpu${v.id}: ${describeVcpu(v)} mp_state=${v.getMpState()}`);
    this.threads?.resume();
    if (this.portStats) out.push([...this.portStats].map(([k, n]) => `${k}=${n}`).join(','));
    this.portStats?.clear();
    return out.join(' ');
  }

  vcpuThreadIds(): number[] {
    return this.threads?.tids() ?? [];
  }
}
