import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EscapeDetector } from './escape.js';

const feed = (d: EscapeDetector, s: string) => {
  const r = d.feed(Buffer.from(s, 'latin1'));
  return { forward: r.forward.toString('latin1'), exit: r.exit };
};

test('Ctrl-] leaves from anywhere; the keys before it still go to the guest', () => {
  assert.deepEqual(feed(new EscapeDetector(), 'ls\x1dmore'), { forward: 'ls', exit: true });
});

test('~. leaves at the start of the session or after Enter (CR or LF), in one chunk or across chunks', () => {
  assert.deepEqual(feed(new EscapeDetector(), '~.'), { forward: '', exit: true });
  assert.deepEqual(feed(new EscapeDetector(), 'ls\r~.'), { forward: 'ls\r', exit: true });
  assert.deepEqual(feed(new EscapeDetector(), 'ls\n~.'), { forward: 'ls\n', exit: true });
  const d = new EscapeDetector();
  assert.deepEqual(feed(d, 'x\r~'), { forward: 'x\r', exit: false }, 'the ~ is held');
  assert.deepEqual(feed(d, '.'), { forward: '', exit: true });
});

test('a ~ that is not followed by . is typed; ~~ types one ~; ~. in mid-line is typed', () => {
  const d = new EscapeDetector();
  assert.deepEqual(feed(d, '~'), { forward: '', exit: false });
  assert.deepEqual(feed(d, '/x'), { forward: '~/x', exit: false });
  assert.deepEqual(feed(new EscapeDetector(), '~~.'), { forward: '~.', exit: false });
  assert.deepEqual(feed(new EscapeDetector(), 'echo a~.b\r'), { forward: 'echo a~.b\r', exit: false });
  // After a held "~x" the line has started: a later "~." on it is typed.
  assert.deepEqual(feed(new EscapeDetector(), '~x~.'), { forward: '~x~.', exit: false });
});
