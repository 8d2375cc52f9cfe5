// Ways the server reaches guest TCP port 49983 of a VM (AgentTransport, client.ts).
//
// The default path is per-VM networking (docs/network.md: each VM in its own network namespace,
// the same guest address everywhere, a unique host-side address DNATed to the guest). On hosts
// without it (not root, no nftables, CAPSULE_NETWORK=off) the fallback is QEMU's user network
// with a host forward (CAPSULE_AGENT_USERNET=1, components/agent.ts). RoutedTransport picks,
// per VM, the first path that VM has.
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { AGENT_PORT } from '../../agent/protocol.js';
import type { AgentComponent } from '../supervisor/components/agent.js';
import type { NetworkComponent } from '../supervisor/components/network.js';
import { NoAgentPathError, type AgentTransport } from './client.js';

/** A path to some VMs' agents: `has` says whether this VM is reachable this way now. */
export interface GuestPath extends AgentTransport {
  has(vmId: string): boolean;
}

/** Per-VM networking: the VM's host-side address, DNATed to the guest's agent port. */
export class NetworkTransport implements GuestPath {
  constructor(private readonly network: Pick<NetworkComponent, 'endpoint' | 'connectGuest'>) {}

  has(vmId: string): boolean {
    return this.network.endpoint(vmId) !== undefined;
  }

  async connect(vmId: string): Promise<Duplex> {
    const s = await this.network.connectGuest(vmId, AGENT_PORT);
    s.setNoDelay(true);
    return s;
  }
}

/** The first path that has the VM; none: an error that says why the agent cannot be reached. */
export class RoutedTransport implements AgentTransport {
  constructor(private readonly paths: readonly GuestPath[], private readonly why: string) {}

  connect(vmId: string): Promise<Duplex> {
    const path = this.paths.find((p) => p.has(vmId));
    return path ? path.connect(vmId) : Promise.reject(new NoAgentPathError(this.why));
  }
}

/**
 * QEMU user networking: 127.0.0.1:PORT forwarded to the guest's agent. slirp listens on the
 * forward with a backlog of 1 and accepts from QEMU's main loop, which a busy TCG guest keeps
 * busy: 20 connections at once saw resets. So at most CONNECTING_PER_VM connections per VM are
 * being set up at a time; one counts until the agent's first byte arrives (or it closes).
 */
export const CONNECTING_PER_VM = 8;

export class UsernetTransport implements GuestPath {
  private readonly connecting = new Map<string, { n: number; waiters: Array<() => void> }>();

  constructor(private readonly agents: AgentComponent) {}

  has(vmId: string): boolean {
    return this.agents.usernetPort(vmId) !== undefined;
  }

  async connect(vmId: string): Promise<Duplex> {
    const port = this.agents.usernetPort(vmId);
    if (port === undefined) throw new Error('this VM has no user-mode NIC forwarding to its agent (CAPSULE_AGENT_USERNET needs unjailed QEMU)');
    await this.acquire(vmId);
    let released = false;
    const release = () => { if (!released) { released = true; this.release(vmId); } };
    try {
      const s = await new Promise<Socket>((resolve, reject) => {
        const sock = connect({ host: '127.0.0.1', port }, () => { sock.removeListener('error', reject); sock.setNoDelay(true); resolve(sock); });
        sock.once('error', reject);
      });
      // (The agent speaks only after the request, which the client writes after taking the socket: no byte is missed here.)
      s.once('data', release);
      s.once('close', release);
      return s;
    } catch (e) {
      release();
      throw e;
    }
  }

  private acquire(vmId: string): Promise<void> {
    let slot = this.connecting.get(vmId);
    if (!slot) this.connecting.set(vmId, (slot = { n: 0, waiters: [] }));
    if (slot.n < CONNECTING_PER_VM) { slot.n++; return Promise.resolve(); }
    return new Promise((resolve) => slot!.waiters.push(resolve));
  }

  private release(vmId: string): void {
    const slot = this.connecting.get(vmId);
    if (!slot) return;
    const next = slot.waiters.shift();
    if (next) return next(); // the place passes to the next waiter
    slot.n--;
    if (slot.n === 0) this.connecting.delete(vmId);
  }
}
