// ApiRateLimits: a call is charged to the token's bucket and the tenant's together, or to neither.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiRateLimits } from './middleware.js';
import { BucketMap } from '../util/leaky-bucket.js';
import type { TokenRecord } from '../db/tokens.js';

const token = (id: string, tenantId: string) => ({ id, tenantId }) as TokenRecord;

test('a call one token is refused costs its tenant nothing; a full tenant refuses every token of it', () => {
  // Tokens: burst 2, tenant: burst 3; both refill far too slowly to matter within the test.
  const limits = new ApiRateLimits(new BucketMap(0.001, 2), new BucketMap(0.001, 3));
  const a = token('a', 't'), b = token('b', 't');
  assert.equal(limits.take(a), undefined);
  assert.equal(limits.take(a), undefined);
  for (let i = 0; i < 50; i++) assert.equal(limits.take(a)?.what, 'token');
  // Token a's 50 refusals left the tenant with one unit to spend: b gets it, then the tenant is full.
  assert.equal(limits.take(b), undefined);
  assert.equal(limits.take(b)?.what, 'tenant');
  assert.equal(limits.take(token('c', 'other')), undefined, 'another tenant is unaffected');
});
