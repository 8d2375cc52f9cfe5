// The Node flags every capsule-vmm process runs with: the server's spawn (server/hypervisors/
// native.ts), the test and bench launcher (vmm/testing/clients.ts) and bin/capsule-vmm's own
// shebang, for a VMM started by hand. Measured in docs/vmm.md ("Idle memory and Node's flags"):
// together they take ~3 MiB off each idle VMM's private memory (bench/vmm-mem.ts).

export const VMM_NODE_FLAGS: readonly string[] = [
  // One V8 platform thread instead of one per core (4): fewer thread stacks and malloc arenas
  // in each idle VMM. Not none (--single-threaded saves ~1 MiB more): then optimizing compiles
  // and GC marking run on the isolates' own threads, and a guest took ~30 % longer to boot.
  '--v8-pool-size=1',
  // Young generation of each isolate (main, each vCPU and iothread) capped at 1 MiB semi-spaces.
  // Boot allocates in a burst that grows the default up to 16 MiB, and V8 keeps what it grew;
  // a VMM's per-request garbage is small, so scavenges stay cheap.
  '--max-semi-space-size=1',
];
