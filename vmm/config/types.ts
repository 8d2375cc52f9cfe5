// The validated configuration the VMM is built from (what buildConfig() returns). Paths are
// absolute. Device entries are parsed and checked here; the devices themselves are built elsewhere.

export interface DriveConfig {
  id: string;
  file: string;
  serial?: string | undefined;
  readOnly: boolean;
  direct: boolean;
  noFlush: boolean;
  iothread?: string | undefined;
  iops?: number | undefined;
  bps?: number | undefined;
  /** 'threads': requests on libuv's threadpool, several in flight (devices/virtio/blk/device.ts) */
  aio: 'inline' | 'threads';
}

export interface NetConfig {
  id: string;
  /** host tap device name (`netdev=`); exactly one of ifname and fd is set */
  ifname?: string | undefined;
  /** name of a tap fd (`fd=`) */
  fd?: string | undefined;
  /** lower case */
  mac?: string | undefined;
  iothread?: string | undefined;
  vhost: boolean;
}

export interface VsockConfig {
  id: string;
  guestCid: number;
  /** host side: a Unix socket, Firecracker style */
  udsPath: string;
}

export interface RngConfig {
  file: string;
  bytesPerSec?: number | undefined;
}

export interface BalloonConfig {
  deflateOnOom: boolean;
}

/** read-only image mapped into guest memory */
export interface PmemConfig {
  id: string;
  file: string;
}

/** hvc on a Unix socket the VMM listens on */
export interface VirtioConsoleConfig {
  id: string;
  path: string;
}

/** the serial console on a Unix socket the VMM listens on */
export interface SerialSocketConfig {
  /** the -chardev id */
  id: string;
  path: string;
}

/** -incoming: restore a snapshot instead of booting (vmm/snapshot/, docs/snapshots.md) */
export type IncomingConfig = { mode: 'defer' } | { mode: 'file'; dir: string };

export interface VmConfig {
  machine: { type: 'microvm'; dumpGuestCore: boolean; memShare: boolean };
  cpus: number;
  memSize: number;
  memPath?: string | undefined;
  kernel: string;
  cmdline: string;
  initrd?: string | undefined;
  serialStdio: boolean;
  /** serial console on a Unix socket the VMM listens on */
  console?: SerialSocketConfig | undefined;
  /** QMP socket path */
  apiChannel?: string | undefined;
  daemonize: boolean;
  pidfile?: string | undefined;
  /** -D: enabled (to stderr, or to file when set) */
  log: { enabled: boolean; file?: string | undefined };
  disableSeccomp: boolean;
  /** what the filter does with a syscall outside its list: kill the process (default) or only log it */
  seccompMode: 'kill' | 'log';
  drives: DriveConfig[];
  nets: NetConfig[];
  vsock?: VsockConfig | undefined;
  rng?: RngConfig | undefined;
  balloon?: BalloonConfig | undefined;
  pmems: PmemConfig[];
  consoles: VirtioConsoleConfig[];
  /** -iothread ids, in order */
  iothreads: string[];
  /** virtio-mmio slots reserved empty at boot for QMP hot-replace (0-16; devices + slots <= 16) */
  hotplugSlots: number;
  incoming?: IncomingConfig | undefined;
}
