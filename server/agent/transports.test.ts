// RoutedTransport: each VM's agent is reached by the first path that has it (its own network,
// then the user-mode fallback); a VM on none gets an error that says why.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type AddressInfo } from 'node:net';
import { PassThrough, type Duplex } from 'node:stream';
import { AgentClient, agentAnswer, noAnswer, NoAgentPathError } from './client.js';
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

test('agentAnswer: stops at once when the VM has no path to its agent (NoAgentPathError, still 502); an agent that refuses is polled until the time is up, with its last error', async () => {
  const none = new AgentClient({ transport: new RoutedTransport([], 'per-VM networking is off here'), token: () => 'x'.repeat(32), callTimeoutMs: 1000 });
  await assert.rejects(none.health('vm'), (e: unknown) => e instanceof NoAgentPathError && e.status === 502 && e.code === 'agent_unreachable');
  const a = await agentAnswer(none, 'vm', 20_000);
  assert.deepEqual({ ...a }, { ok: false, noPath: true, lastError: 'the guest agent cannot be reached: this VM has no network path to its agent: per-VM networking is off here' });
  if (a.ok) return;
  assert.equal(noAnswer(a, 'did not answer'), a.lastError, 'no path: the reason, not "did not answer"');

  // A path that exists but nothing listens behind it: not answering yet, which waiting may mend.
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const refusing: GuestPath = {
    has: () => true,
    connect: () => new Promise((res, rej) => { const s = connect(port, '127.0.0.1', () => res(s)); s.once('error', rej); }),
  };
  const client = new AgentClient({ transport: new RoutedTransport([refusing], 'unused'), token: () => 'x'.repeat(32), callTimeoutMs: 1000 });
  const b = await agentAnswer(client, 'vm', 800);
  assert.equal(b.ok, false);
  if (b.ok) return;
  assert.equal(b.noPath, false);
  assert.match(b.lastError ?? '', /ECONNREFUSED/);
  assert.match(noAnswer(b, 'the agent did not answer within 0.8 s'), /^the agent did not answer within 0\.8 s \(last: .*ECONNREFUSED/);
});
