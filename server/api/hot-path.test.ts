// The hot-path shortcuts answer exactly as the slow paths they replace: the shared event
// frame is the frame ws would build, and the bearer header read from Node's raw headers is
// the value Hono's c.req.header() gives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Hono } from 'hono';
import * as ws from 'ws';
import { textFrame } from './events.js';
import { requestHeader } from '../auth/middleware.js';

// ws's frame builder (exported by ws, not in its type definitions).
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, opts: Record<string, unknown>): Buffer[] } };

test('textFrame is the unmasked text frame ws would send, at every length encoding', () => {
  for (const n of [0, 1, 125, 126, 127, 65_535, 65_536, 200_000]) {
    const payload = Buffer.alloc(n, 'x');
    const expected = Buffer.concat(Sender.frame(payload, { fin: true, rsv1: false, opcode: 1, mask: false, readOnly: true }));
    assert.deepEqual(textFrame(payload), expected, `length ${n}`);
    assert.equal(textFrame(payload), textFrame(payload), 'built once per message');
  }
});

test('requestHeader from raw headers equals c.req.header(): repeats joined, outer whitespace trimmed, case-insensitive', async () => {
  const cases: Array<Array<[string, string]>> = [
    [['Authorization', 'Bearer abc']],
    [['authorization', '  Bearer abc \t']],
    [['AUTHORIZATION', 'Bearer a'], ['Host', 'x'], ['authorization', 'Bearer b']],
    [['Host', 'x']],
  ];
  for (const headers of cases) {
    let fromHono: string | undefined;
    let fromRaw: string | undefined;
    const app = new Hono().get('/', (c) => {
      fromHono = c.req.header('authorization');
      fromRaw = requestHeader(c, 'authorization');
      return c.body(null, 204);
    });
    const h = new Headers();
    for (const [k, v] of headers) h.append(k, v);
    await app.request('http://x/', { headers: h }, { incoming: { rawHeaders: headers.flat() } });
    assert.equal(fromRaw, fromHono, JSON.stringify(headers));
  }
});
