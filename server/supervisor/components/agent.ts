// The guest agent's per-VM state (docs/agent.md): a fresh secret per boot, passed on the kernel
// command line (capsule.agent_token=; the guest's init moves it to a root-only file and hides it
// from /proc/cmdline) and kept in vms/<id>/agent.token (0600) so that a restarted server still
// talks to a VM that kept running.
//
// The fallback path to the agent for VMs without per-VM networking (CAPSULE_AGENT_USERNET=1):
// a QEMU user-mode NIC (slirp, restrict=on: no egress, no way to the host) with one host
// forward, 127.0.0.1:PORT -> guest 10.0.2.15:49983, and a static guest address. Only for
// unjailed QEMU (a jailed VMM has its own network namespace, where the forward would listen).
// The port is kept in vms/<id>/agent.port.
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { AGENT_PORT } from '../../../agent/protocol.js';
import type { LaunchContext, LaunchPlan, LiveVmContext, VmComponent } from './types.js';

export const AGENT_TOKEN_FILE = 'agent.token';
export const AGENT_PORT_FILE = 'agent.port';
/** The guest's address on QEMU's user network, and its gateway (the host, unreachable with restrict=on). */
export const USERNET_GUEST_ARGS = 'capsule.ip=10.0.2.15/24,10.0.2.2';

export interface AgentComponentDeps {
  vmsDir: string;
  /** CAPSULE_AGENT_USERNET: give unjailed QEMU VMs a user-mode NIC forwarding a host port to the agent. */
  usernet: boolean;
  log: Logger;
}

export class AgentComponent implements VmComponent {
  readonly name = 'agent';
  private readonly tokens = new Map<string, string>();
  private readonly ports = new Map<string, number>();
  /** Told when a VM's VMM is gone (the agent client ends its open operations on it). */
  onVmGone: (vmId: string) => void = () => undefined;

  constructor(private readonly d: AgentComponentDeps) {}

  /** The running VM's agent secret (undefined: it has none: not running). */
  token(vmId: string): string | undefined {
    return this.tokens.get(vmId);
  }

  /** The host port forwarded to the VM's agent (usernet only). */
  usernetPort(vmId: string): number | undefined {
    return this.ports.get(vmId);
  }

  prepare(ctx: LaunchContext, plan: LaunchPlan): void {
    const { vm, paths } = ctx;
    // A restored guest's agent holds the secret it had when the snapshot was written.
    const token = plan.restore?.agentToken ?? randomBytes(24).toString('hex');
    writeFileSync(join(paths.dir, AGENT_TOKEN_FILE), `${token}\n`, { mode: 0o600 });
    this.tokens.set(vm.id, token);
    // Before the other components' arguments (root=, capsule.overlay= stay last, as tests and
    // clients read them).
    plan.devices.kernelArgs.unshift(`capsule.agent_token=${token}`);
    rmSync(join(paths.dir, AGENT_PORT_FILE), { force: true });
    this.ports.delete(vm.id);
    // A VM with its own NIC (the network component ran first) is reached through it.
    if (!this.d.usernet || plan.devices.net) return;
    if (vm.hypervisor !== 'qemu' || ctx.jailUid !== undefined) {
      this.d.log.warn({ vm: vm.id, hypervisor: vm.hypervisor, jailed: ctx.jailUid !== undefined },
        'CAPSULE_AGENT_USERNET: only unjailed QEMU VMs get the user-mode NIC (CAPSULE_JAIL=off); this VM\'s agent is unreachable that way');
      return;
    }
    const port = pickFreePort(new Set(this.ports.values()));
    writeFileSync(join(paths.dir, AGENT_PORT_FILE), `${port}\n`, { mode: 0o600 });
    this.ports.set(vm.id, port);
    plan.devices.userNet = { hostForwards: [{ hostPort: port, guestPort: AGENT_PORT }] };
    plan.devices.kernelArgs.splice(1, 0, USERNET_GUEST_ARGS);
  }

  attach(live: LiveVmContext): void {
    this.load(live.id, live.paths.dir);
  }

  reattach(live: LiveVmContext): void {
    this.load(live.id, live.paths.dir);
  }

  cleanup(vmId: string): void {
    this.onVmGone(vmId);
    this.tokens.delete(vmId);
    this.ports.delete(vmId);
    const dir = join(this.d.vmsDir, vmId);
    rmSync(join(dir, AGENT_TOKEN_FILE), { force: true });
    rmSync(join(dir, AGENT_PORT_FILE), { force: true });
  }

  private load(vmId: string, dir: string): void {
    try {
      this.tokens.set(vmId, readFileSync(join(dir, AGENT_TOKEN_FILE), 'utf8').trim());
    } catch { /* a VMM started before the agent existed: none */ }
    try {
      const port = Number(readFileSync(join(dir, AGENT_PORT_FILE), 'utf8').trim());
      if (Number.isInteger(port) && port > 0 && port < 65536) this.ports.set(vmId, port);
    } catch { /* no usernet */ }
  }
}

/**
 * A TCP port nobody listens on (from /proc/net/tcp{,6}), at random in 20000-59999 and not one
 * handed out already. prepare() is synchronous: no trial bind; QEMU fails to start if another
 * process takes the port meanwhile (the start then says so).
 */
export function pickFreePort(taken: ReadonlySet<number>): number {
  const used = new Set(taken);
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    try {
      for (const line of readFileSync(f, 'utf8').split('\n').slice(1)) {
        const local = line.trim().split(/\s+/)[1];
        const port = local ? parseInt(local.split(':').pop() ?? '', 16) : NaN;
        if (Number.isInteger(port)) used.add(port);
      }
    } catch { /* not Linux */ }
  }
  for (let i = 0; i < 1000; i++) {
    const p = 20000 + Math.floor(Math.random() * 40000);
    if (!used.has(p)) return p;
  }
  throw new Error('no free TCP port for the agent\'s user-mode forward');
}
