// The host admission ledger on its own (no server): reserve, release, rebuild, the numbers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HostAdmission } from './admission.js';
import { ApiError } from './errors.js';
import type { Vm } from '../db/vms.js';

const cfg = { hostMemoryMiB: 1000, hostVcpus: 4, maxVcpus: 4, memorySource: 'CAPSULE_HOST_MEMORY_MIB', vcpuSource: 'CAPSULE_HOST_VCPUS' };
const vm = (id: string, memoryMiB: number, vcpus = 1, state: Vm['state'] = 'created') => ({ id, memoryMiB, vcpus, state }) as Vm;

function refusal(fn: () => void): ApiError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ApiError);
    return e;
  }
  assert.fail('expected a refusal');
}

test('reserves until the capacity, refuses beyond with 503 host_full and the numbers', () => {
  const a = new HostAdmission(cfg);
  a.reserve(vm('a', 600));
  a.reserve(vm('b', 400));
  assert.deepEqual(a.usage(), { memoryMiB: 1000, vcpus: 2, vms: 2 });
  const e = refusal(() => a.reserve(vm('c', 64)));
  assert.equal(e.status, 503);
  assert.equal(e.code, 'host_full');
  assert.deepEqual(e.extras.details, { resource: 'memoryMiB', requested: 64, inUse: 1000, capacity: 1000 });
  assert.equal(e.extras.retryAfterSeconds, 10);
  assert.deepEqual(a.usage(), { memoryMiB: 1000, vcpus: 2, vms: 2 }, 'a refusal reserves nothing');
});

test('vCPUs are a limit of their own', () => {
  const a = new HostAdmission(cfg);
  a.reserve(vm('a', 64, 3));
  const e = refusal(() => a.reserve(vm('b', 64, 2)));
  assert.deepEqual(e.extras.details, { resource: 'vcpus', requested: 2, inUse: 3, capacity: 4 });
  a.reserve(vm('b', 64, 1));
});

test('release gives the room back; reserve and release are idempotent per VM', () => {
  const a = new HostAdmission(cfg);
  a.reserve(vm('a', 600));
  a.reserve(vm('a', 600));
  assert.equal(a.usage().memoryMiB, 600, 'a second reserve of the same VM takes nothing more');
  a.release('a');
  a.release('a');
  assert.deepEqual(a.usage(), { memoryMiB: 0, vcpus: 0, vms: 0 });
  a.reserve(vm('b', 1000));
});

test('a VM larger than the host is a 400 at reserve too', () => {
  const e = refusal(() => new HostAdmission(cfg).reserve(vm('a', 2000)));
  assert.equal(e.status, 400);
  assert.equal(e.field, 'memoryMiB');
});

test('rebuild counts the active VMs only, even beyond the capacity', () => {
  const a = new HostAdmission(cfg);
  a.reserve(vm('gone', 500));
  a.rebuild([vm('r', 700, 1, 'running'), vm('p', 500, 2, 'paused'), vm('s', 900, 1, 'stopped'), vm('c', 900, 1, 'crashed'), vm('x', 64, 1, 'stopping')]);
  assert.deepEqual(a.usage(), { memoryMiB: 1264, vcpus: 4, vms: 3 });
  assert.ok(!a.holds('gone'));
  assert.equal(refusal(() => a.reserve(vm('n', 64))).code, 'host_full');
  a.release('r');
  a.reserve(vm('n', 64));
});
