import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadLayoutFixture } from './fixtures.js';
import { SIZEOF, OFFSETOF } from './layout.js';
import * as io from './ioctls.js';
import { IOCTLS, _IOR, _IOWR } from './ioctls.js';
import * as epoll from '../io/epoll.js';
import * as eventfd from '../io/eventfd.js';
import * as net from '../devices/virtio/net/sys.js';

const fx = loadLayoutFixture();

test('struct sizes match the C headers', () => {
  assert.ok(fx.sizeof.size > 10);
  for (const [name, size] of fx.sizeof) assert.equal(SIZEOF[name] ?? net.NET_SIZEOF[name], size, name);
});

test('field offsets match the C headers', () => {
  for (const [name, off] of fx.offsetof) assert.equal(OFFSETOF[name] ?? net.NET_OFFSETOF[name], off, name);
});

test('ioctl numbers match the C headers and are unsigned', () => {
  const all: Record<string, number> = { ...IOCTLS, ...net.NET_IOCTLS };
  assert.equal(fx.ioctl.size, Object.keys(all).length);
  for (const [name, nr] of fx.ioctl) {
    assert.equal(all[name], nr, `${name} 0x${(all[name] ?? 0).toString(16)} vs 0x${nr.toString(16)}`);
    assert.ok((all[name] ?? -1) >= 0, name);
  }
  assert.equal(_IOR(0xae, 0x83, 312), 0x8138ae83);
  assert.equal(_IOWR(0xae, 0x05, 8), 0xc008ae05);
  assert.throws(() => _IOR(0xae, 1, 1 << 14), RangeError);
});

test('flags and capabilities match the C headers', () => {
  // every const the C program prints is exported under its C name by one of these modules
  const js: Record<string, unknown> = { ...io, ...epoll, ...eventfd, ...net };
  assert.ok(fx.consts.size >= 29, `${fx.consts.size} consts`);
  for (const [name, value] of fx.consts) {
    const v = js[name];
    assert.equal(typeof v, 'number', `${name} is not exported`);
    assert.equal((v as number) >>> 0, value >>> 0, name);
  }
});
