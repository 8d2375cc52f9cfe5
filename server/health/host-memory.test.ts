import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { THP_ENABLED, thpMode } from '../../lib/thp.js';
import { thpAdvice } from './host-memory.js';

test('the THP mode is the bracketed word; only "always" gets advice', () => {
  assert.equal(thpMode('[always] madvise never\n'), 'always');
  assert.equal(thpMode('always [madvise] never\n'), 'madvise');
  assert.equal(thpMode('garbage'), undefined);
  assert.match(thpAdvice(() => '[always] madvise never\n') ?? '', /"always".*echo madvise > \/sys\/kernel\/mm\/transparent_hugepage\/enabled/);
  assert.equal(thpAdvice(() => 'always [madvise] never\n'), undefined);
  assert.equal(thpAdvice(() => 'always madvise [never]\n'), undefined);
  assert.equal(thpAdvice(() => { throw new Error('ENOENT'); }), undefined);
});

test('this host\'s file parses', { skip: !existsSync(THP_ENABLED) && 'no THP in this kernel' }, () => {
  const mode = thpMode(readFileSync(THP_ENABLED, 'utf8'));
  assert.ok(mode === 'always' || mode === 'madvise' || mode === 'never', String(mode));
  assert.equal(thpAdvice() !== undefined, mode === 'always');
});
