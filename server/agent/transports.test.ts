// RoutedTransport: each VM's agent is reached by the first path that has it (its own network,
// then the user-mode fallback); a VM on none gets an error that says why.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough, type Duplex } from 'node:stream';
import { RoutedTransport, type GuestPath } from './transports.js';

function path(name: string, vms: string[], used: string[]): GuestPath {
  return {
    has: (id) => vms.includes(id),
    connect: async (id): Promise<Duplex> => { used.push(`${name}:${id}`); return new PassThrough(); },
  };
}

test('RoutedTransport: the first path that has the VM; none: the reason', async () => {
  const used: string[] = [];
  const t = new RoutedTransport([path('net', ['a'], used), path('usernet', ['a', 'b'], used)], 'per-VM networking is off here');
  await t.connect('a');
  await t.connect('b');
  assert.deepEqual(used, ['net:a', 'usernet:b']);
  await assert.rejects(t.connect('c'), /no network path to its agent: per-VM networking is off here/);
});
