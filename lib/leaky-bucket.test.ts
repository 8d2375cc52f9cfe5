import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LeakyBucket } from './leaky-bucket.js';

test('the bucket admits its capacity, then leaks at its rate', () => {
  let now = 0;
  const b = new LeakyBucket(10, 3, () => now);
  assert.deepEqual([b.tryTake(), b.tryTake(), b.tryTake(), b.tryTake()], [true, true, true, false]);
  assert.equal(b.msUntil(), 100);
  now = 99;
  assert.equal(b.tryTake(), false);
  now = 100;
  assert.equal(b.tryTake(), true);
  now = 10_000;
  assert.equal(b.msUntil(), 0);
  assert.equal(b.tryTake(3), true);
  assert.equal(b.tryTake(1), false);
});
