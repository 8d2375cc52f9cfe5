// Fuzz: random and adversarial rings against the transport and real devices (blk on a sparse
// file, rng, vsock with its Unix listener). 0 crashes (an exception escaping the transport) and 0 accesses outside guest
// memory are required; rejected requests are counted and reported. Fixed seeds plus one random
// seed, printed so that a failure can be replayed with CAPSULE_FUZZ_SEED.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, rmSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkBackend, VirtioBlk } from '../devices/virtio/blk/device.js';
import { VirtioRng } from '../devices/virtio/rng/device.js';
import { VirtioNet } from '../devices/virtio/net/device.js';
import { FakeBackend, nullPoller } from '../devices/virtio/net/testing.js';
import { VirtioVsock } from '../devices/virtio/vsock/device.js';
import { encodeHeader } from '../devices/virtio/vsock/packet.js';
import { GuestAddress as GA, GuestMemory } from '../memory/guest-memory.js';
import { F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, STATUS } from './constants.js';
import type { VirtioDevice } from './device.js';
import { REG } from './mmio.js';
import { TEST_MEM_SIZE, TestDriver } from './testing/driver.js';

const CASES = Number(process.env.CAPSULE_FUZZ_CASES ?? 100_000);

/** mulberry32: small, fast, reproducible. */
function rng32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Stats { cases: number; crashes: number; oob: number; rejected: number; completed: number; resets: number }

/** Interesting values for addresses and lengths: edges of RAM, of u32, of u64. */
function pick<T>(r: () => number, xs: readonly T[]): T {
  return xs[Math.floor(r() * xs.length)] as T;
}

/** Writes a device-shaped request header at `at` (plausible enough to get past the first checks). */
type Shaper = (mem: GuestMemory, at: number, r: () => number) => void;

function fuzzDevice(name: string, make: () => VirtioDevice, seed: number, cases: number, shape?: Shaper): Stats {
  const r = rng32(seed);
  const mem = GuestMemory.fromBuffers(TEST_MEM_SIZE);
  const dev = make();
  const d = new TestDriver(dev, mem);
  const stats: Stats = { cases: 0, crashes: 0, oob: 0, rejected: 0, completed: 0, resets: 0 };
  const addrs = [0, 1, 0x200000, 0x200008, TEST_MEM_SIZE - 16, TEST_MEM_SIZE - 1, TEST_MEM_SIZE, 0xffff_ffff, 2 ** 53, 0x100000];
  const lens = [0, 1, 15, 16, 17, 512, 513, 4096, 65536, 0x7fff_ffff, 0xffff_ffff];
  const init = (): void => {
    stats.rejected += d.transport.queues.reduce((a, qq) => a + qq.rejected, 0);
    const f = F_VERSION_1 | (r() < 0.7 ? F_RING_INDIRECT_DESC : 0n) | (r() < 0.5 ? F_RING_EVENT_IDX : 0n) | dev.features;
    d.init(f, dev.queueSizes.map((s) => pick(r, [s, Math.max(1, s >> 1), 8, 1].filter((x) => x <= s))));
  };
  init();
  for (let c = 0; c < cases; c++) {
    stats.cases++;
    try {
      if (d.reg(REG.STATUS) & STATUS.DEVICE_NEEDS_RESET || r() < 0.002) {
        stats.resets++;
        init();
      }
      const q = Math.floor(r() * dev.queueSizes.length);
      const ring = d.rings[q];
      if (!ring) continue;
      // scribble over some descriptors: random, or a plausible request shape
      const n = 1 + Math.floor(r() * 6);
      for (let i = 0; i < n; i++) {
        const idx = Math.floor(r() * ring.size);
        const plausible = r() < 0.5;
        const addr = plausible ? 0x200000 + Math.floor(r() * 0x100000) : pick(r, addrs) + (r() < 0.3 ? Math.floor(r() * 64) : 0);
        const len = plausible ? pick(r, [1, 16, 512, 1024, 4096]) : pick(r, lens);
        const flags = plausible ? (i === n - 1 ? 2 : 1 | (r() < 0.5 ? 2 : 0)) : Math.floor(r() * 8);
        const next = plausible ? (idx + 1) % ring.size : Math.floor(r() * (ring.size + 3));
        d.writeDesc(ring.desc, idx, Math.min(addr, 2 ** 53 - 1), len >>> 0, flags, next);
      }
      // a blk-ish header at a plausible buffer now and then
      if (r() < 0.5) {
        const at = 0x200000 + Math.floor(r() * 0x100000 / 16) * 16;
        if (shape && r() < 0.7) {
          shape(mem, at, r);
          // and a descriptor that starts at it, so the shaped header is what the device parses
          d.writeDesc(ring.desc, Math.floor(r() * ring.size), at, pick(r, [20, 44, 60, 44 + 4096, 44 + 65536]), pick(r, [0, 0, 1, 2]), Math.floor(r() * ring.size));
        } else {
          mem.writeU32(GA(at), pick(r, [0, 1, 4, 8, 11, 13, 99]));
          mem.writeU64(GA(at + 8), BigInt(pick(r, [0, 1, 7, 2 ** 32, 2 ** 52])));
        }
      }
      // an indirect table somewhere, sometimes pointing at itself
      if (r() < 0.2) {
        const t = 0x300000 + Math.floor(r() * 0x1000) * 16;
        for (let i = 0; i < 4; i++) d.writeDesc(t, i, 0x200000 + i * 512, pick(r, lens), Math.floor(r() * 8), Math.floor(r() * 6));
        d.writeDesc(ring.desc, Math.floor(r() * ring.size), t, pick(r, [16, 64, 48, 0, 17, 16 * 4096]), 4 | (r() < 0.1 ? 1 : 0), 0);
      }
      // publish: usually a few heads, sometimes an absurd avail index
      if (r() < 0.02) mem.writeU16(GA(ring.avail + 2), Math.floor(r() * 65536));
      else {
        const k = 1 + Math.floor(r() * 3);
        for (let i = 0; i < k; i++) d.publish(q, Math.floor(r() * (ring.size + 2)), false);
      }
      if (r() < 0.05) mem.writeU16(GA(ring.avail + 4 + 2 * ring.size), Math.floor(r() * 65536)); // used_event
      d.setReg(REG.QUEUE_NOTIFY, q);
      stats.completed += d.takeUsed(q).length;
      d.ack();
      // random register pokes, including the config space
      if (r() < 0.05) d.setReg(Math.floor(r() * 0x40) * 4, Math.floor(r() * 2 ** 32));
      if (r() < 0.05) d.transport.write(REG.CONFIG + Math.floor(r() * 80), new Uint8Array([Math.floor(r() * 256)]));
    } catch (e) {
      if ((e as Error).name === 'GuestMemoryError') stats.oob++;
      else stats.crashes++;
      if (stats.crashes + stats.oob <= 3) console.error(`${name} seed ${seed} case ${c}: ${(e as Error).stack}`);
      init();
    }
  }
  stats.rejected += d.transport.queues.reduce((a, qq) => a + qq.rejected, 0);
  dev.close?.();
  return stats;
}

const dir = mkdtempSync(join(tmpdir(), 'capsule-fuzz-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function sparseFile(size: number): string {
  const f = join(dir, `disk-${Math.random().toString(36).slice(2)}.img`);
  const fd = openSync(f, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return f;
}

const randomSeed = Number(process.env.CAPSULE_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const seeds = [1, 0xc0ffee, randomSeed];
/** vsock headers from guest CID 3 to the host: every op, lengths around the limits, a few ports. */
const vsockShape: Shaper = (mem, at, r) => {
  mem.write(GA(at), encodeHeader({
    srcCid: r() < 0.9 ? 3n : 7n, dstCid: r() < 0.9 ? 2n : 3n, srcPort: pick(r, [1, 2, 1024, 0xffff_ffff]), dstPort: pick(r, [1, 5000, 2 ** 30]),
    len: pick(r, [0, 1, 16, 4096, 65536, 65537, 0xffff_ffff]), type: r() < 0.9 ? 1 : pick(r, [0, 2, 0xffff]), op: Math.floor(r() * 9),
    flags: Math.floor(r() * 4), bufAlloc: pick(r, [0, 4096, 262144, 0xffff_ffff]), fwdCnt: pick(r, [0, 100, 0xffff_ffff]),
  }));
};

const devices: Array<[string, () => VirtioDevice, Shaper?]> = [
  ['blk', () => new VirtioBlk(new BlkBackend({ file: sparseFile(1 << 20), readOnly: false, direct: false, noFlush: true }))],
  ['blk-ro', () => new VirtioBlk(new BlkBackend({ file: sparseFile(1 << 20), readOnly: true, direct: false, noFlush: false }))],
  ['rng', () => new VirtioRng({ file: '/dev/urandom' })],
  // no tap (that needs root and a netns): frames of every awkward size from a stand-in, rx
  // driven by rx notifications, with and without mergeable rx buffers
  ['net', () => new VirtioNet({ backend: fakeTap(), poller: nullPoller })],
  ['net-nomrg', () => new VirtioNet({ backend: fakeTap(), poller: nullPoller, mrgRxbuf: false })],
  // the listener is not bound: guest REQUESTs go to <uds>_PORT paths that do not exist (RST)
  ['vsock', () => new VirtioVsock({ guestCid: 3, udsPath: join(dir, 'vsock.sock') }), vsockShape],
];

/** Frame sizes a tap could return, with EAGAIN (0) in between so an rx pass stays short. */
function fakeTap(): FakeBackend {
  const sizes = [60, 0, 0, 1514, 0, 0, 11, 0, 0, 9000, 0, 0, 12, 0, 0, 3000, 1600, 0, 0, 60, 0, 0, 65562, 0, 0, 0];
  let i = 0;
  return new FakeBackend((buf) => {
    const n = Math.min(sizes[i++ % sizes.length] as number, buf.length);
    buf.fill(0xa5, 0, Math.min(n, 64));
    return n;
  });
}

test(`fuzz: ${CASES} hostile ring cases per seed, no crash, no access outside guest memory`, () => {
  const report: Record<string, Stats> = {};
  for (const seed of seeds) {
    for (const [name, make, shape] of devices) {
      const s = fuzzDevice(name, make, seed, Math.ceil(CASES / devices.length), shape);
      report[`${name}@${seed}`] = s;
      assert.equal(s.crashes, 0, `${name}: crashes with seed ${seed} (replay: CAPSULE_FUZZ_SEED=${seed})`);
      assert.equal(s.oob, 0, `${name}: out-of-bounds accesses with seed ${seed} (replay: CAPSULE_FUZZ_SEED=${seed})`);
      assert.ok(s.rejected > 0, `${name}: the fuzzer produced no invalid chain (seed ${seed})`);
      assert.ok(s.completed > 0, `${name}: no request completed (seed ${seed})`);
    }
  }
  const total = Object.values(report).reduce((a, s) => a + s.cases, 0);
  console.log(`fuzz: ${total} cases, random seed ${randomSeed}; ` +
    Object.entries(report).map(([k, s]) => `${k}: ${s.completed} completed, ${s.rejected} rejected, ${s.resets} resets`).join('; '));
  assert.ok(total >= CASES * seeds.length);
});
