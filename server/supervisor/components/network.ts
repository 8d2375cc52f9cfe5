// The VM's network (docs/network.md): a NIC on a tap in the VM's own network namespace, where
// the guest always has the same address (169.254.0.21/30, gateway .22) and the host reaches it
// through a unique host-side address (a veth pair from the root namespace + DNAT); egress is NAT
// to the host's uplink, switchable at run time; nftables keep VMs from each other and from the
// host.
//
//   prepare   the namespace, veth pair, tap (owned by the jailed VMM's uid) and both nftables
//             tables; the NIC and `capsule.ip=` go into the launch plan, and the plan names the
//             namespace the VMM is launched in.
//   reattach  the server found the VMM running: make sure the root side is there and right.
//   cleanup   remove the VM's namespace, veth pair and tables (idempotent).
//   reconcile at the server's start: remove what is left of VMs that no longer run.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import type { Vm, VmNetwork, VmStore } from '../../db/vms.js';
import {
  AGENT_PORT, egressRules, findTools, GUEST_ADDRESS, GUEST_GATEWAY, GUEST_PREFIX, guestKernelArg, instanceTag, namespaceTable, NS_VETH, poolSlots,
  probeNetwork, rootTable, run, slotAddresses, TAP_NAME, vmMac, vmNames, type NetworkConfig, type Tools, type VmNet,
} from '../../network/host.js';
import { ApiError } from '../errors.js';
import type { LaunchContext, LaunchPlan, LiveVmContext, VmComponent } from './types.js';

const NETNS_DIR = '/run/netns';
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** How the server reaches a running VM's guest. */
export interface GuestEndpoint {
  /** Connect here from the server's (root) namespace: DNAT to the guest. */
  hostAddress: string;
  /** The guest's own address (inside the VM's namespace). */
  guestAddress: string;
  /** The VM's network namespace (`ip netns exec NAME ...` reaches guestAddress directly). */
  netns: string;
}

/** A TCP connection from the root namespace to `port` of the guest behind `ep` (its host-side address; DNAT in the VM's namespace). */
export function connectToGuest(ep: Pick<GuestEndpoint, 'hostAddress'>, port: number = AGENT_PORT, timeoutMs = 10_000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: ep.hostAddress, port });
    const t = setTimeout(() => { s.destroy(); reject(new Error(`connecting to the guest's port ${port} timed out after ${timeoutMs} ms`)); }, timeoutMs);
    s.once('connect', () => { clearTimeout(t); s.removeAllListeners('error'); resolve(s); });
    s.once('error', (e) => { clearTimeout(t); s.destroy(); reject(e); });
  });
}

export interface NetworkDeps {
  vms: VmStore;
  dataDir: string;
  config: NetworkConfig;
  log: Logger;
}

export class NetworkComponent implements VmComponent {
  readonly name = 'network';
  readonly tag: string;
  readonly available: boolean;
  readonly reason: string;
  private readonly tools: Tools;
  /** VMs whose network is set up (by id). */
  private readonly active = new Map<string, VmNet>();
  private hostPrepared = false;

  constructor(private readonly d: NetworkDeps) {
    this.tag = instanceTag(d.dataDir);
    const t = findTools();
    this.tools = t as Tools;
    if (d.config.mode === 'off') {
      this.available = false;
      this.reason = 'CAPSULE_NETWORK=off';
    } else {
      const p = probeNetwork(t);
      this.available = p.ok;
      this.reason = p.ok ? `${p.reason}; pool ${slotAddresses(d.config.pool, 0).network.replace(/\/30$/, '')}/${d.config.pool.prefix}, tag ${this.tag}` : p.reason;
    }
    if (d.config.mode !== 'off' && !this.available) d.log.warn({ reason: this.reason }, 'VMs get no network on this host');
    d.vms.setNetwork((id, slot, enabled, egress) => this.view(id, slot, enabled, egress), (used) => this.allocate(used));
  }

  status(): { enabled: boolean; reason: string } {
    return { enabled: this.available, reason: this.reason };
  }

  // ---- what the API and other components use ----

  /** Where the server reaches the guest of a running VM; undefined when it has no network now. */
  endpoint(vmId: string): GuestEndpoint | undefined {
    const v = this.active.get(vmId);
    return v && { hostAddress: v.hostAddress, guestAddress: GUEST_ADDRESS, netns: v.names.netns };
  }

  /**
   * A TCP connection from the server to `port` of the VM's guest (the agent: AGENT_PORT), through
   * the VM's host-side address (DNAT in its namespace). Rejects when the VM has no network now,
   * or on a connect error or timeout.
   */
  connectGuest(vmId: string, port: number = AGENT_PORT, timeoutMs = 10_000): Promise<Socket> {
    const ep = this.endpoint(vmId);
    if (!ep) return Promise.reject(new ApiError(409, 'no_network', `VM ${vmId} has no running network`));
    return connectToGuest(ep, port, timeoutMs);
  }

  /** Switches a VM's egress (the caller holds the VM's lock): stored, and applied now if its network is up. */
  setEgress(vm: Vm, egress: boolean): Vm {
    if (!vm.network.enabled) throw new ApiError(409, 'no_network', `VM ${vm.name} was created without a network ("network": {"enabled": false})`, 'network.egress');
    const v = this.active.get(vm.id);
    if (v) {
      run(this.tools.nft, ['-f', '-'], egressRules(v, egress));
      v.egress = egress;
    }
    return this.d.vms.setEgress(vm.id, egress)!;
  }

  // ---- the four steps ----

  prepare(ctx: LaunchContext, plan: LaunchPlan): void {
    const { vm } = ctx;
    if (!vm.network.enabled) return;
    if (!this.available) {
      if (this.d.config.mode === 'on') throw new ApiError(409, 'network_unavailable', `CAPSULE_NETWORK=on: ${this.reason}`);
      return; // auto: VMs run without a NIC where the host cannot give them one (GET /v1/health says why)
    }
    let slot: number;
    try {
      slot = this.d.vms.networkSlot(vm.id);
      // Another server on this host (another pool overlapping ours) may have taken the addresses
      // since the slot was given: then the VM gets a free one (its hostAddress changes).
      if (this.takenOnHost(slot, vmNames(this.tag, vm.id).hostVeth)) slot = this.d.vms.reassignNetworkSlot(vm.id);
    } catch (e) {
      throw new ApiError(409, 'network_pool_exhausted', (e as Error).message);
    }
    const v = this.describe(vm, slot, ctx.jailUid === undefined ? undefined : { uid: ctx.jailUid, gid: ctx.jailUid });
    this.prepareHost();
    this.teardown(vm.id);
    try {
      this.setup(v);
    } catch (e) {
      this.teardown(vm.id);
      this.d.log.error({ vm: vm.id, err: (e as Error).message }, 'network set-up failed');
      throw new ApiError(500, 'network_setup_failed', 'the VM\'s network could not be set up (see the server log)');
    }
    this.active.set(vm.id, v);
    plan.devices.net = { tap: TAP_NAME, mac: v.mac };
    // Before the other components' arguments (root=, capsule.overlay= stay last, as tests and clients read them).
    plan.devices.kernelArgs.unshift(guestKernelArg(this.d.config.dns));
    plan.netns = `${NETNS_DIR}/${v.names.netns}`;
  }

  reattach(live: LiveVmContext): void {
    const vm = this.d.vms.get(live.id);
    if (!vm?.network.enabled || !this.available) return;
    const names = vmNames(this.tag, vm.id);
    if (!existsSync(`${NETNS_DIR}/${names.netns}`)) {
      this.d.log.warn({ vm: vm.id }, 'running VM has no network namespace (started without a network): it keeps running without one');
      return;
    }
    const v = this.describe(vm, this.d.vms.networkSlot(vm.id), undefined);
    try {
      this.prepareHost();
      if (!existsSync(`/sys/class/net/${names.hostVeth}`)) {
        // The root side went missing (its peer in the namespace went with it): a new pair, configured as at set-up.
        this.rootLinks(v);
        this.inNamespace(v, [`ip addr add ${v.hostAddress}/30 dev ${NS_VETH}`, `ip link set ${NS_VETH} up`, `ip route replace default via ${v.gateway}`]);
      }
      run(this.tools.nft, ['-f', '-'], rootTable(v));
      this.active.set(vm.id, v);
    } catch (e) {
      this.d.log.error({ vm: vm.id, err: (e as Error).message }, 'restoring the network of a running VM failed');
    }
  }

  cleanup(vmId: string): void {
    this.active.delete(vmId);
    if (!this.available) return;
    this.teardown(vmId);
  }

  reconcile(live: ReadonlySet<string>): void {
    if (!this.available) return;
    const gone = new Set<string>();
    const prefix = `capsule-${this.tag}-`;
    let netns: string[] = [];
    try { netns = readdirSync(NETNS_DIR); } catch { /* none */ }
    for (const n of netns) if (n.startsWith(prefix) && !live.has(n.slice(prefix.length))) gone.add(n.slice(prefix.length));
    const tables = this.ourTables();
    for (const t of tables) if (!live.has(t)) gone.add(t);
    for (const id of gone) if (UUID.test(id)) this.teardown(id);
    // Host-side veths whose namespace is gone (named by the id's first 8 hex digits).
    const shorts = new Set([...live].map((id) => vmNames(this.tag, id).hostVeth));
    let links: string[] = [];
    try { links = readdirSync('/sys/class/net'); } catch { /* none */ }
    for (const l of links) {
      if (l.startsWith(`cap${this.tag}`) && l.length === 15 && !shorts.has(l)) {
        try { run(this.tools.ip, ['link', 'del', l]); } catch (e) { this.d.log.warn({ link: l, err: (e as Error).message }, 'removing a left-over veth failed'); }
      }
    }
    if (gone.size > 0) this.d.log.info({ vms: [...gone] }, 'removed the network objects of VMs that no longer run');
  }

  // ---- internals ----

  private view(id: string, slot: number | null, enabled: boolean, egress: boolean): VmNetwork {
    if (!enabled || slot === null || !this.available) return { enabled, egress };
    return { enabled, egress, guestAddress: GUEST_ADDRESS, hostAddress: slotAddresses(this.d.config.pool, slot).hostAddress, mac: vmMac(id) };
  }

  /** The lowest free slot whose addresses nothing on the host uses already (another server's pool, say). */
  private allocate(used: ReadonlySet<number>): number {
    const onHost = new Set<string>();
    for (const addrs of Object.values(networkInterfaces())) for (const a of addrs ?? []) if (a.family === 'IPv4') onHost.add(a.address);
    const n = poolSlots(this.d.config.pool);
    for (let s = 0; s < n; s++) {
      if (used.has(s)) continue;
      const a = slotAddresses(this.d.config.pool, s);
      if (onHost.has(a.gateway) || onHost.has(a.hostAddress)) continue;
      return s;
    }
    throw new Error(`the host-side address pool (CAPSULE_NET_POOL, ${n} VMs) is full`);
  }

  /** Whether an interface other than `own` has the slot's addresses. */
  private takenOnHost(slot: number, own: string): boolean {
    const a = slotAddresses(this.d.config.pool, slot);
    for (const [name, addrs] of Object.entries(networkInterfaces())) {
      if (name === own) continue;
      if ((addrs ?? []).some((x) => x.address === a.gateway || x.address === a.hostAddress)) return true;
    }
    return false;
  }

  private describe(vm: Vm, slot: number, owner: VmNet['owner']): VmNet {
    const a = slotAddresses(this.d.config.pool, slot);
    return { vmId: vm.id, names: vmNames(this.tag, vm.id), gateway: a.gateway, hostAddress: a.hostAddress, mac: vmMac(vm.id), egress: vm.network.egress, owner };
  }

  /** Once per server: forwarding on, and a host firewall that drops forwarded traffic (Docker's) told to let the VMs' through. */
  private prepareHost(): void {
    if (this.hostPrepared) return;
    try {
      if (readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim() !== '1') {
        run('sh', ['-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward']);
        this.d.log.info('net.ipv4.ip_forward set to 1 (VM egress is routed)');
      }
    } catch (e) {
      this.d.log.warn({ err: (e as Error).message }, 'cannot enable IPv4 forwarding');
    }
    // Docker's FORWARD chain drops what it does not know; DOCKER-USER is where it takes exceptions.
    // Our own tables still decide (a drop in any table is final): these only keep Docker's from dropping.
    if (this.tools.iptables) {
      try {
        run(this.tools.nft, ['list', 'chain', 'ip', 'filter', 'DOCKER-USER']);
        for (const dir of ['-i', '-o']) {
          const rule = ['DOCKER-USER', dir, 'cap+', '-j', 'ACCEPT'];
          try { run(this.tools.iptables, ['-C', ...rule]); } catch { run(this.tools.iptables, ['-I', ...rule]); }
        }
      } catch { /* no Docker here */ }
    }
    this.hostPrepared = true;
  }

  private rootLinks(v: VmNet): void {
    run(this.tools.ip, ['-batch', '-'], [
      `link add ${v.names.hostVeth} type veth peer name ${NS_VETH} netns ${v.names.netns}`,
      `link set ${v.names.hostVeth} alias capsule:${this.tag}:${v.vmId}`,
      `addr add ${v.gateway}/30 dev ${v.names.hostVeth}`,
      `link set ${v.names.hostVeth} up`,
    ].join('\n') + '\n');
  }

  /** Commands run in the VM's namespace (one sh), with optional nft input on stdin. */
  private inNamespace(v: VmNet, lines: string[], nftInput?: string): void {
    const script = ['set -e', ...lines, ...(nftInput === undefined ? [] : ['nft -f -'])].join('\n');
    run(this.tools.ip, ['netns', 'exec', v.names.netns, 'sh', '-c', script], nftInput);
  }

  private setup(v: VmNet): void {
    run(this.tools.ip, ['netns', 'add', v.names.netns]);
    this.rootLinks(v);
    const owner = v.owner ? ` user ${v.owner.uid} group ${v.owner.gid}` : '';
    this.inNamespace(v, [
      'echo 1 > /proc/sys/net/ipv4/ip_forward',
      'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6',
      'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6',
      'ip link set lo up',
      `ip addr add ${v.hostAddress}/30 dev ${NS_VETH}`,
      `ip link set ${NS_VETH} up`,
      `ip tuntap add dev ${TAP_NAME} mode tap${owner}`,
      `ip addr add ${GUEST_GATEWAY}/${GUEST_PREFIX} dev ${TAP_NAME}`,
      `ip link set ${TAP_NAME} up`,
      `ip route add default via ${v.gateway}`,
    ], namespaceTable(v));
    run(this.tools.nft, ['-f', '-'], rootTable(v));
  }

  /** Removes everything of one VM's network; each part only if it is there. */
  private teardown(vmId: string): void {
    const names = vmNames(this.tag, vmId);
    const tryRun = (args: string[], tool = this.tools.ip) => {
      try { run(tool, args); } catch (e) { this.d.log.warn({ vm: vmId, err: (e as Error).message }, 'network clean-up step failed'); }
    };
    // The veth first: its namespace may outlive `ip netns del` for a moment (the kernel frees it
    // later), and the pair's name must be free for the next start.
    if (existsSync(`/sys/class/net/${names.hostVeth}`)) tryRun(['link', 'del', names.hostVeth]);
    if (existsSync(`${NETNS_DIR}/${names.netns}`)) tryRun(['netns', 'del', names.netns]);
    try {
      run(this.tools.nft, ['delete', 'table', 'inet', names.table]);
    } catch { /* not there */ }
  }

  /** Ids of the VMs whose root-namespace table exists (this server's tag). */
  private ourTables(): string[] {
    const prefix = `capsule-${this.tag}-`;
    try {
      const out = JSON.parse(run(this.tools.nft, ['-j', 'list', 'tables'])) as { nftables: Array<{ table?: { family: string; name: string } }> };
      return out.nftables.flatMap((e) => (e.table && e.table.family === 'inet' && e.table.name.startsWith(prefix) ? [e.table.name.slice(prefix.length)] : []));
    } catch {
      return [];
    }
  }
}
