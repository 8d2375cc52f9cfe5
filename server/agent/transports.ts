// Ways the server reaches guest TCP port 49983 of a VM (AgentTransport, client.ts).
//
// The default path is per-VM networking (each VM in its own network namespace, the same guest
// address everywhere): its helper connects into the VM's namespace; wiring it is one line in
// server/main.ts. Until then, and on hosts without root networking, the fallback is QEMU's user
// network with a host forward (CAPSULE_AGENT_USERNET=1, components/agent.ts).
import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import type { AgentComponent } from '../supervisor/components/agent.js';
import type { AgentTransport } from './client.js';

/** QEMU user networking: 127.0.0.1:PORT forwarded to the guest's agent. */
export class UsernetTransport implements AgentTransport {
  constructor(private readonly agents: AgentComponent) {}

  connect(vmId: string): Promise<Duplex> {
    const port = this.agents.usernetPort(vmId);
    if (port === undefined) return Promise.reject(new Error('this VM has no user-mode NIC forwarding to its agent (CAPSULE_AGENT_USERNET needs unjailed QEMU)'));
    return new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port }, () => { s.removeListener('error', reject); s.setNoDelay(true); resolve(s); });
      s.once('error', reject);
    });
  }
}

/** No path to any guest (neither per-VM networking nor the user-mode fallback is on). */
export class NoTransport implements AgentTransport {
  connect(): Promise<Duplex> {
    return Promise.reject(new Error('this server has no network path to guests yet: per-VM networking is not enabled (CAPSULE_AGENT_USERNET=1 uses QEMU user networking instead; docs/agent.md)'));
  }
}
