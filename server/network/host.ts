// Per-VM networks on the host (docs/network.md): names, addresses, and the iproute2 / nftables
// commands that make and remove a VM's network namespace, veth pair, tap and firewall tables.
// Only `ip` and `nft` (Debian's iproute2 and nftables) are used; everything a VM gets is named
// from an instance tag (one server's data directory) and the VM's id, so that reconciliation
// finds exactly this server's objects and never another server's on the same host.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { which } from '../jail/host.js';

/** The address every guest has, in its own namespace (E2B's design: snapshots restore without renumbering). */
export const GUEST_ADDRESS = '169.254.0.21';
/** The guest's gateway: the tap's address in the VM's namespace. */
export const GUEST_GATEWAY = '169.254.0.22';
export const GUEST_PREFIX = 30;
/** In the VM's namespace: the tap the VMM opens and the namespace's end of the veth pair. */
export const TAP_NAME = 'tap0';
export const NS_VETH = 'veth0';
/** The guest agent's port (the agent issue): reached through connectGuest(). */
export const AGENT_PORT = 49983;

export interface NetworkConfig {
  /** auto: per-VM networks where the host allows (root, ip, nft, /dev/net/tun); on: required; off: VMs get no NIC. */
  mode: 'auto' | 'on' | 'off';
  /** Host-side addresses: one /30 per VM out of this IPv4 network. */
  pool: { base: number; prefix: number };
  /** The guest's resolver. */
  dns: string;
}

export function ipToInt(s: string): number {
  const p = s.split('.').map(Number);
  if (p.length !== 4 || p.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) throw new Error(`not an IPv4 address: ${s}`);
  return ((p[0]! << 24) | (p[1]! << 16) | (p[2]! << 8) | p[3]!) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

export function parsePool(s: string): { base: number; prefix: number } {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(s.trim());
  if (!m) throw new Error(`CAPSULE_NET_POOL: expected an IPv4 network like 10.200.0.0/16, got ${JSON.stringify(s)}`);
  const prefix = Number(m[2]);
  if (prefix < 8 || prefix > 29) throw new Error('CAPSULE_NET_POOL: the prefix must be between /8 and /29');
  const mask = prefix === 0 ? 0 : (~0 << (32 - prefix)) >>> 0;
  return { base: (ipToInt(m[1]!) & mask) >>> 0, prefix };
}

/** The host's resolver when it is a plain remote address (not loopback: a VM cannot reach the host), else 1.1.1.1. */
export function defaultDns(): string {
  try {
    for (const line of readFileSync('/etc/resolv.conf', 'utf8').split('\n')) {
      const m = /^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(line);
      if (m && !m[1]!.startsWith('127.') && !m[1]!.startsWith('169.254.') && m[1] !== '0.0.0.0') return m[1]!;
    }
  } catch { /* none */ }
  return '1.1.1.1';
}

export function networkConfigFromEnv(env: NodeJS.ProcessEnv = process.env): NetworkConfig {
  const mode = env.CAPSULE_NETWORK ?? 'auto';
  if (mode !== 'auto' && mode !== 'on' && mode !== 'off') throw new Error(`CAPSULE_NETWORK must be auto, on or off, not ${JSON.stringify(mode)}`);
  const dns = env.CAPSULE_NET_DNS ?? defaultDns();
  ipToInt(dns);
  return { mode, pool: parsePool(env.CAPSULE_NET_POOL ?? '10.200.0.0/16'), dns };
}

/** How many VMs the pool holds (one /30 each). */
export function poolSlots(pool: { prefix: number }): number {
  return 2 ** (32 - pool.prefix) / 4;
}

/** A VM's host-side pair: the root namespace's end (its gateway) and the VM's unique address (the namespace's end). */
export function slotAddresses(pool: { base: number }, slot: number): { gateway: string; hostAddress: string; network: string } {
  const net = pool.base + slot * 4;
  return { network: `${intToIp(net)}/30`, gateway: intToIp(net + 1), hostAddress: intToIp(net + 2) };
}

/** Four hex digits naming one server (its data directory): objects of other servers on the host are not ours. */
export function instanceTag(dataDir: string): string {
  let real = dataDir;
  try { real = realpathSync(dataDir); } catch { /* not made yet */ }
  return createHash('sha256').update(real).digest('hex').slice(0, 4);
}

/** Names of a VM's objects. The VM id is a UUID; its first 8 hex digits name the host-side veth (15 bytes at most). */
export function vmNames(tag: string, vmId: string): { netns: string; hostVeth: string; table: string } {
  const short = vmId.replace(/-/g, '').slice(0, 8);
  return { netns: `capsule-${tag}-${vmId}`, hostVeth: `cap${tag}${short}`, table: `capsule-${tag}-${vmId}` };
}

/** A locally administered unicast MAC derived from the VM id (stable across restarts). */
export function vmMac(vmId: string): string {
  const h = createHash('sha256').update(`mac:${vmId}`).digest();
  return ['02', 'ca', ...[0, 1, 2, 3].map((i) => h[i]!.toString(16).padStart(2, '0'))].join(':');
}

/** The kernel argument both images understand (scripts/guest/net.sh): static address, gateway, resolver. */
export function guestKernelArg(dns: string): string {
  return `capsule.ip=${GUEST_ADDRESS}/${GUEST_PREFIX},${GUEST_GATEWAY},${dns}`;
}

export interface VmNet {
  vmId: string;
  names: { netns: string; hostVeth: string; table: string };
  gateway: string;
  hostAddress: string;
  mac: string;
  egress: boolean;
  /** The jailed VMM's uid/gid (the tap's owner), or undefined (root). */
  owner: { uid: number; gid: number } | undefined;
}

export class CommandError extends Error {}

/** Runs a tool; throws with its stderr. */
export function run(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input, timeout: 30_000, stdio: ['pipe', 'pipe', 'pipe'] });
  if (r.error) throw new CommandError(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) throw new CommandError(`${cmd} ${args.slice(0, 6).join(' ')}: ${(r.stderr || r.stdout || `status ${r.status}`).trim()}`);
  return r.stdout;
}

/** The root namespace's nftables table of one VM (docs/network.md, "The rules"). */
export function rootTable(v: VmNet): string {
  const ifn = JSON.stringify(v.names.hostVeth);
  const t = `inet ${v.names.table}`;
  return [
    `table ${t} {}`,
    `delete table ${t}`,
    `table ${t} {`,
    // Before any DNAT (docker's published ports included): nothing from the VM to an address of the host, except replies.
    '  chain prerouting {',
    '    type filter hook prerouting priority -160; policy accept;',
    `    iifname ${ifn} ct state established,related accept`,
    `    iifname ${ifn} fib daddr type { local, broadcast, multicast } drop`,
    '  }',
    '  chain input {',
    '    type filter hook input priority filter - 10; policy accept;',
    `    iifname ${ifn} ct state established,related accept`,
    `    iifname ${ifn} drop`,
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter - 10; policy accept;',
    `    iifname ${ifn} meta nfproto ipv6 drop`,
    `    iifname ${ifn} ip saddr != ${v.hostAddress} drop`,
    // Never to another VM (of this server or any other on the host).
    `    iifname ${ifn} oifname "cap*" drop`,
    `    iifname ${ifn} jump egress`,
    // Into the VM only replies (the host itself reaches it through the output hook, not here).
    `    oifname ${ifn} ct state established,related accept`,
    `    oifname ${ifn} drop`,
    '  }',
    '  chain egress {',
    `    ${v.egress ? 'accept' : 'drop'}`,
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ip saddr ${v.hostAddress} oifname != ${ifn} masquerade`,
    '  }',
    '}',
  ].join('\n');
}

/** Egress on or off: the table's egress chain, replaced atomically. */
export function egressRules(v: Pick<VmNet, 'names'>, egress: boolean): string {
  const t = `inet ${v.names.table}`;
  return [`flush chain ${t} egress`, `add rule ${t} egress ${egress ? 'accept' : 'drop'}`].join('\n');
}

/** The VM namespace's own table: DNAT of the unique address to the guest, SNAT of the guest to it, nothing into the namespace itself. */
export function namespaceTable(v: VmNet): string {
  return [
    'table ip capsule {',
    '  chain prerouting {',
    '    type nat hook prerouting priority dstnat; policy accept;',
    `    iifname "${NS_VETH}" ip daddr ${v.hostAddress} dnat to ${GUEST_ADDRESS}`,
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    oifname "${NS_VETH}" ip saddr ${GUEST_ADDRESS} snat to ${v.hostAddress}`,
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter; policy accept;',
    `    iifname "${TAP_NAME}" ip saddr != ${GUEST_ADDRESS} drop`,
    '  }',
    '  chain input {',
    '    type filter hook input priority filter; policy accept;',
    `    iifname "${TAP_NAME}" ct state established,related accept`,
    `    iifname "${TAP_NAME}" icmp type echo-request accept`,
    `    iifname "${TAP_NAME}" drop`,
    '  }',
    '}',
  ].join('\n');
}

export interface Tools { ip: string; nft: string; nsenter: string | undefined; iptables: string | undefined }

export function findTools(): Partial<Tools> {
  return { ip: which('ip'), nft: which('nft'), nsenter: which('nsenter'), iptables: which('iptables') };
}

/** What the host offers: per-VM networks need root, ip, nft and /dev/net/tun. */
export function probeNetwork(t: Partial<Tools>): { ok: boolean; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'the server is not root: it cannot make network namespaces' };
  const missing = (['ip', 'nft'] as const).filter((k) => !t[k]);
  if (missing.length > 0) return { ok: false, reason: `missing tools: ${missing.join(', ')} (apt-get install iproute2 nftables)` };
  if (!existsSync('/dev/net/tun')) {
    try { execFileSync(which('modprobe') ?? 'modprobe', ['tun'], { stdio: 'ignore', timeout: 10_000 }); } catch { /* checked below */ }
    if (!existsSync('/dev/net/tun')) return { ok: false, reason: 'no /dev/net/tun (modprobe tun)' };
  }
  try {
    run(t.nft!, ['list', 'tables']);
  } catch (e) {
    return { ok: false, reason: `nft cannot list tables: ${(e as Error).message}` };
  }
  return { ok: true, reason: 'per-VM network namespaces, veth + NAT, nftables' };
}

/** Writes a sysctl of the server's (root) namespace through /proc/sys. */
export function sysctl(key: string, value: string): void {
  writeFileSync(`/proc/sys/${key.replace(/\./g, '/')}`, `${value}\n`);
}
