// Prometheus metrics (prom-client) on a registry of our own, never prom-client's global one (so
// that nothing else in the process can add to it, and tests can make several).
//
// Two kinds of figure:
//   - counted as things happen: API request durations (api/request-metrics.ts), WebSockets
//     opening and closing, QMP round trips (QmpClient.roundTripObserver), VM lifecycle counts
//     (derived from the events the supervisor publishes, so they count what clients see on the
//     event stream);
//   - read at scrape time, so they cannot drift from the truth: VMs by state from the store,
//     events published and dropped from the hub's totals, host capacity from the admission
//     ledger, per-VM CPU and memory from the cgroups or /proc.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CapsuleEvent } from '../db/events.js';
import { VM_STATES, type HypervisorName, type Vm, type VmStore } from '../db/vms.js';
import type { EventHub } from '../events/hub.js';
import type { CgroupManager } from '../jail/cgroups.js';
import { QmpClient } from '../qmp/client.js';
import { ACTIVE_STATES, type HostAdmission } from '../supervisor/admission.js';
import { readVmUsage } from './vm-usage.js';

export type SocketKind = 'console' | 'exec' | 'events' | 'ports';

export interface MetricsSources {
  vms: VmStore;
  hub: EventHub;
  admission: HostAdmission;
  backends: readonly HypervisorName[];
  /** The jail's cgroups (per-VM CPU and memory); without: /proc. */
  cgroups?: CgroupManager;
  /** A tenant's name from its id: the `tenant` label (names are unique and readable; without: the id). */
  tenantName?: (id: string) => string | undefined;
}

const MIB = 1024 * 1024;

export class Metrics {
  readonly registry = new Registry();
  private readonly httpDuration: Histogram<'method' | 'route' | 'status'>;
  private readonly httpSeries = new Map<string, { observe(seconds: number): void }>();
  private readonly socketsOpen: Gauge<'kind'>;
  private readonly qmpRoundTrip: Histogram<'command' | 'outcome'>;
  private readonly starts: Counter<'backend' | 'tenant'>;
  private readonly stops: Counter<'backend' | 'tenant'>;
  private readonly crashes: Counter<'backend' | 'tenant'>;
  private readonly vmCpu: Counter<'vm' | 'tenant'>;
  private readonly vmMemory: Gauge<'vm' | 'tenant'>;

  /** The `tenant` label of a VM. */
  private readonly tenantLabel = (vm: Vm): string => this.src.tenantName?.(vm.tenant) ?? vm.tenant;

  constructor(private readonly src: MetricsSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    this.httpDuration = new Histogram({
      name: 'capsule_http_request_duration_seconds', help: 'API request duration by method, matched route pattern and status',
      labelNames: ['method', 'route', 'status'], registers,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    });
    this.socketsOpen = new Gauge({ name: 'capsule_websockets_open', help: 'Open WebSocket connections by kind', labelNames: ['kind'], registers });
    for (const kind of ['console', 'events'] as const) this.socketsOpen.set({ kind }, 0);
    this.qmpRoundTrip = new Histogram({
      name: 'capsule_qmp_round_trip_seconds', help: 'QMP command round trips (send to reply) by command and outcome (ok, error, timeout, closed)',
      labelNames: ['command', 'outcome'], registers,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    });

    const lifecycle = (name: string, help: string) => new Counter({ name, help, labelNames: ['backend', 'tenant'], registers });
    this.starts = lifecycle('capsule_vm_starts_total', 'VM starts (start requests admitted and launched; not reboots)');
    this.stops = lifecycle('capsule_vm_stops_total', 'VMs that reached stopped (asked to, or the guest powered off)');
    this.crashes = lifecycle('capsule_vm_crashes_total', 'VMs that crashed (the VMM exited unexpectedly, a failed launch, a reset loop, gone while the server was down)');
    for (const counter of [this.starts, this.stops, this.crashes]) for (const backend of src.backends) counter.inc({ backend, tenant: 'default' }, 0);
    src.hub.observe((ev) => this.onEvent(ev));

    const { vms, hub, admission } = src;
    const backends = src.backends;
    const tenantLabel = this.tenantLabel;
    new Gauge({
      name: 'capsule_vms', help: 'VMs by state, backend and tenant', labelNames: ['state', 'backend', 'tenant'], registers,
      collect() {
        this.reset();
        // Every state of every backend for the default tenant, zero or not: series do not vanish.
        for (const state of VM_STATES) for (const backend of backends) this.set({ state, backend, tenant: 'default' }, 0);
        for (const vm of vms.list()) this.inc({ state: vm.state, backend: vm.hypervisor, tenant: tenantLabel(vm) });
      },
    });
    new Counter({
      name: 'capsule_events_published_total', help: 'Events published (stored and offered to subscribers)', registers,
      collect() { this.reset(); this.inc(hub.stats.published); },
    });
    new Counter({
      name: 'capsule_events_dropped_total', help: 'Events a subscriber did not get: slow_subscriber (per subscriber that lost it), replay_limit (skipped by a ?since= replay)',
      labelNames: ['reason'], registers,
      collect() {
        this.reset();
        this.inc({ reason: 'slow_subscriber' }, hub.stats.droppedSlow);
        this.inc({ reason: 'replay_limit' }, hub.stats.droppedReplayLimit);
      },
    });

    const capacity = (name: string, help: string, value: () => number) =>
      new Gauge({ name, help, registers, collect() { this.set(value()); } });
    capacity('capsule_host_memory_capacity_bytes', 'Guest memory the host admits for all active VMs together', () => admission.capacity.hostMemoryMiB * MIB);
    capacity('capsule_host_memory_reserved_bytes', 'Guest memory reserved by active VMs', () => admission.usage().memoryMiB * MIB);
    capacity('capsule_host_memory_free_bytes', 'Guest memory still admissible', () => Math.max(0, admission.capacity.hostMemoryMiB - admission.usage().memoryMiB) * MIB);
    capacity('capsule_host_vcpus_capacity', 'vCPUs the host admits for all active VMs together', () => admission.capacity.hostVcpus);
    capacity('capsule_host_vcpus_reserved', 'vCPUs reserved by active VMs', () => admission.usage().vcpus);
    capacity('capsule_host_vcpus_free', 'vCPUs still admissible', () => Math.max(0, admission.capacity.hostVcpus - admission.usage().vcpus));

    this.vmCpu = new Counter({
      name: 'capsule_vm_cpu_seconds_total', help: 'CPU time of each active VM\'s VMM (cgroup, or its processes in /proc)',
      labelNames: ['vm', 'tenant'], registers,
    });
    this.vmMemory = new Gauge({
      name: 'capsule_vm_memory_bytes', help: 'Memory in use by each active VM\'s VMM, guest memory included (cgroup, or the RSS of its processes)',
      labelNames: ['vm', 'tenant'], registers,
    });

    QmpClient.roundTripObserver = (command, seconds, outcome) => this.qmpRoundTrip.observe({ command, outcome }, seconds);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    this.readVmUsage();
    return this.registry.metrics();
  }

  /**
   * Both per-VM families from one pass over the cgroups or /proc, made here rather than in two
   * collect() callbacks so that they agree and nothing depends on the order prom-client calls
   * them in. Only active VMs have series: a stopped VM's go away.
   */
  private readVmUsage(): void {
    this.vmCpu.reset();
    this.vmMemory.reset();
    for (const vm of this.src.vms.list()) {
      if (!ACTIVE_STATES.includes(vm.state)) continue;
      const usage = readVmUsage(vm.id, vm.pid, this.src.cgroups);
      if (!usage) continue;
      const labels = { vm: vm.id, tenant: this.tenantLabel(vm) };
      this.vmCpu.inc(labels, usage.cpuSeconds);
      this.vmMemory.set(labels, usage.memoryBytes);
    }
  }

  observeRequest(method: string, route: string, status: number, seconds: number): void {
    // One series per (method, route pattern, status): a bounded set, so its handle is kept
    // rather than found again from a labels object (hashed and sorted) on every request.
    const key = `${method} ${route} ${status}`;
    let series = this.httpSeries.get(key);
    if (!series) this.httpSeries.set(key, (series = this.httpDuration.labels({ method, route, status: String(status) })));
    series.observe(seconds);
  }

  socketOpened(kind: SocketKind): void {
    this.socketsOpen.inc({ kind });
  }

  socketClosed(kind: SocketKind): void {
    this.socketsOpen.dec({ kind });
  }

  private onEvent(ev: CapsuleEvent): void {
    const counter = ev.event === 'CRASHED' ? this.crashes : ev.event === 'STATE_CHANGED' ? this.lifecycleCounter(ev.data) : undefined;
    if (!counter) return;
    const vm = this.src.vms.get(ev.vm);
    counter.inc({ backend: vm?.hypervisor ?? 'unknown', tenant: vm ? this.tenantLabel(vm) : 'unknown' });
  }

  /** A start is `starting` entered from a resting state (a reboot's relaunch comes from running); a stop is `stopped` reached. */
  private lifecycleCounter(data: Record<string, unknown>): Counter<'backend' | 'tenant'> | undefined {
    if (data.state === 'starting' && (data.previous === 'created' || data.previous === 'stopped' || data.previous === 'crashed')) return this.starts;
    if (data.state === 'stopped') return this.stops;
    return undefined;
  }
}
