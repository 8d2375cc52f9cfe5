// Node flags for capsule-vmm processes, in one place for the server's spawn (server/hypervisors/
// native.ts), the test and bench launcher (vmm/testing/clients.ts) and the benches.

/**
 * What every VMM runs with. None today: see MEMORY_FLAGS. libuv's pool keeps Node's four threads
 * too (UV_THREADPOOL_SIZE=1 would save ~1-2 MiB per idle VMM, but virtio-blk's default
 * aio=threads does its reads, writes and flushes on that pool: docs/vmm.md, "Idle memory").
 */
export const VMM_NODE_FLAGS: readonly string[] = [];

/**
 * Measured and not used (docs/vmm.md, "Idle memory and Node's flags"): with several VMMs up they
 * took 0.8–3.5 MiB off each idle VMM's private memory (none for a lone VMM), and cost the native
 * boot 7–11 % and, in one disk run, queue-depth-1 IOPS below QEMU's. The benches run them as a
 * variant (bench:mem's nativeMemoryFlags, BENCH_GUESTS=…,nativeMemoryFlags for bench:blk) so the
 * trade can be weighed again.
 */
export const MEMORY_FLAGS: readonly string[] = [
  // One V8 platform thread instead of Node's default four: fewer thread stacks and malloc arenas.
  // (--single-threaded, no platform thread at all, saved ~1 MiB more and cost ~30 % of boot:
  // compiles and GC marking move onto the isolates' own threads.)
  '--v8-pool-size=1',
  // Each isolate's young generation (main, vCPU and iothread workers) stays at 1 MiB semi-spaces
  // instead of growing up to 16 MiB in boot's allocation burst and keeping it; the price is more
  // scavenges, and earlier promotion to the old generation.
  '--max-semi-space-size=1',
];
