// The agent protocol's framing (agent/protocol.ts), both directions: whatever the frames and
// however the byte stream is cut into reads, the reader gives back exactly what was written;
// hostile input (oversized lengths, unknown kinds, bad JSON) is an error, never a hang or an
// allocation of what the length claims.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DATA_CHUNK, FrameReader, KIND_DATA, KIND_JSON, MAX_FRAME, PING_FRAME, jsonFrame, writeDataFrames, type Frame } from './protocol.js';

/** A FrameSink that keeps what is written, and counts writev batches (cork/uncork pairs). */
class Sink {
  readonly parts: Buffer[] = [];
  batches = 0;
  private corked = 0;
  write(b: Buffer): boolean { this.parts.push(b); return true; }
  cork(): void { this.corked++; }
  uncork(): void { if (--this.corked === 0) this.batches++; }
  get bytes(): Buffer { return Buffer.concat(this.parts); }
}

type Msg = { json: Record<string, unknown> } | { data: Buffer; ch: number } | { ping: true };

function encode(msgs: Msg[]): Buffer {
  const sink = new Sink();
  for (const m of msgs) {
    if ('json' in m) sink.write(jsonFrame(m.json));
    else if ('data' in m) writeDataFrames(sink, m.ch, m.data);
    else sink.write(PING_FRAME);
  }
  return sink.bytes;
}

/** Feeds `bytes` to a reader in pieces cut at `cuts`; the frames it gave, and its error if any. */
function decode(bytes: Buffer, cuts: number[], maxFrame = MAX_FRAME): { frames: Frame[]; error?: string } {
  const frames: Frame[] = [];
  let error: string | undefined;
  const r = new FrameReader((f) => frames.push(f), (why) => { error = why; }, maxFrame);
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  let prev = 0;
  for (const c of [...at, bytes.length]) {
    if (c > prev) r.push(Buffer.from(bytes.subarray(prev, c)));
    prev = Math.max(prev, c);
  }
  return { frames, ...(error !== undefined ? { error } : {}) };
}

const msgArb: fc.Arbitrary<Msg> = fc.oneof(
  fc.record({ json: fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string(), fc.integer(), fc.boolean())) }),
  fc.record({ data: fc.uint8Array({ minLength: 0, maxLength: 20_000 }).map((a) => Buffer.from(a)), ch: fc.integer({ min: 0, max: 2 }) }),
  fc.constant({ ping: true as const }),
);

/**
 * What a consumer sees: JSON messages, pings, and runs of bytes per channel (data is a byte
 * stream: how it is cut into frames and pieces is not part of the meaning).
 */
function meaning(items: Array<Msg | Frame>): unknown[] {
  const out: unknown[] = [];
  for (const it of items) {
    const json = 'json' in it ? it.json : 'kind' in it && it.kind === KIND_JSON ? it.msg : undefined;
    const data = 'data' in it ? { ch: 'ch' in it ? it.ch : (it as { channel: number }).channel, bytes: it.data } : undefined;
    const last = out[out.length - 1] as { ch: number; bytes: Buffer } | undefined;
    if (json) out.push(JSON.parse(JSON.stringify(json)));
    else if (data && last && typeof last === 'object' && 'bytes' in last && last.ch === data.ch) last.bytes = Buffer.concat([last.bytes, data.bytes]);
    else if (data) out.push({ ch: data.ch, bytes: Buffer.from(data.bytes) });
    else out.push('ping');
  }
  return out;
}

test('frames survive any cutting of the stream into reads; data comes back byte for byte', () => {
  fc.assert(fc.property(fc.array(msgArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 30 }), (msgs, cuts) => {
    const { frames, error } = decode(encode(msgs), cuts);
    assert.equal(error, undefined);
    assert.deepEqual(meaning(frames), meaning(msgs));
    // No empty pieces, except the one frame of an empty write.
    const empties = frames.filter((f) => f.kind === KIND_DATA && f.data.length === 0).length;
    assert.equal(empties, msgs.filter((m) => 'data' in m && m.data.length === 0).length);
  }), { numRuns: 300 });
});

test('a data frame is passed on as its bytes arrive, before the frame is complete', () => {
  const pieces: number[] = [];
  const r = new FrameReader((f) => { if (f.kind === KIND_DATA) pieces.push(f.data.length); }, (why) => assert.fail(why));
  const sink = new Sink();
  writeDataFrames(sink, 0, Buffer.alloc(100_000, 9));
  const bytes = sink.bytes;
  r.push(bytes.subarray(0, 50_006));
  assert.deepEqual(pieces, [50_000]);
  r.push(bytes.subarray(50_006));
  assert.deepEqual(pieces, [50_000, 50_000]);
});

test('a large write: DATA_CHUNK frames in one corked batch, the payload not copied', () => {
  const data = Buffer.alloc(DATA_CHUNK * 2 + 5, 7);
  const sink = new Sink();
  writeDataFrames(sink, 1, data);
  assert.equal(sink.batches, 1);
  // Heads and pieces alternate; each piece is a view of `data` (same memory), not a copy.
  assert.equal(sink.parts.length, 6);
  for (let k = 1; k < 6; k += 2) assert.equal(sink.parts[k]!.buffer, data.buffer);
  const { frames } = decode(sink.bytes, []);
  assert.deepEqual(frames.map((f) => (f.kind === KIND_DATA ? f.data.length : -1)), [DATA_CHUNK, DATA_CHUNK, 5]);
  // Read in one piece, the large frames are views of the read (no copy); the small one is copied.
  const whole = sink.bytes;
  const viewed: boolean[] = [];
  new FrameReader((f) => { if (f.kind === KIND_DATA) viewed.push(f.data.buffer === whole.buffer); }, (why) => assert.fail(why)).push(whole);
  assert.deepEqual(viewed, [true, true, false]);
  // An empty write is one empty frame (an explicit "nothing"), as before.
  const empty = new Sink();
  writeDataFrames(empty, 0, Buffer.alloc(0));
  assert.deepEqual(decode(empty.bytes, []).frames, [{ kind: KIND_DATA, channel: 0, data: Buffer.alloc(0) }]);
});

test('views handed on stay intact while the reader goes on reading', () => {
  const a = Buffer.alloc(10_000, 1);
  const b = Buffer.alloc(10_000, 2);
  const bytes = encode([{ data: a, ch: 1 }, { data: b, ch: 1 }]);
  const frames: Frame[] = [];
  const r = new FrameReader((f) => frames.push(f), (why) => assert.fail(why));
  r.push(bytes); // both frames in one read: two views of it
  r.push(encode([{ data: Buffer.alloc(9000, 3), ch: 2 }]));
  assert.deepEqual(frames.map((f) => (f.kind === KIND_DATA ? [f.channel, f.data[0], f.data.length] : [])), [[1, 1, 10_000], [1, 2, 10_000], [2, 3, 9000]]);
});

test('hostile streams: oversized length, zero length, unknown kind, bad JSON, a non-object, data without a channel', () => {
  const head = (len: number, kind: number) => { const h = Buffer.alloc(5); h.writeUInt32BE(len, 0); h[4] = kind; return h; };
  const cases: Array<[string, Buffer, RegExp]> = [
    ['oversized', head(0xffff_fff0, KIND_DATA), /limit/],
    ['zero', head(0, KIND_JSON), /frame of 0 bytes/],
    ['kind', Buffer.concat([head(2, 9), Buffer.from('x')]), /unknown frame kind 9/],
    ['json', Buffer.concat([head(4, KIND_JSON), Buffer.from('{{{')]), /bad JSON/],
    ['array', Buffer.concat([head(3, KIND_JSON), Buffer.from('[]')]), /not an object/],
    ['channel', head(1, KIND_DATA), /without a channel/],
    ['data', head(MAX_FRAME + 1, KIND_DATA), /limit/],
  ];
  for (const [name, bytes, want] of cases) {
    const { frames, error } = decode(bytes, [1, 3]);
    assert.equal(frames.length, 0, name);
    assert.match(error ?? '', want, name);
  }
  // After an error the reader takes nothing more.
  const errors: string[] = [];
  const r = new FrameReader(() => assert.fail('no frame after an error'), (why) => errors.push(why), 100);
  r.push(head(101, KIND_DATA));
  r.push(jsonFrame({ ok: true }));
  assert.equal(errors.length, 1);
});
