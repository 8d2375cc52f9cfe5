import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatTable, formatFields, terminalWidth, mib, shortTime, type Column } from './output.js';
import { driveSpec, expiry, sizeMiB } from './args.js';
import { pickByRef } from './resolve.js';
import { ApiError, CliError } from './errors.js';

interface Row { name: string; id: string; n: number; note?: string }
const rows: Row[] = [
  { name: 'alpha', id: '0f9c1c2e-1111-4aaa-8bbb-123456789abc', n: 1 },
  { name: 'a-much-longer-name-for-this-row', id: '5d1e0a7b-2222-4ccc-9ddd-abcdefabcdef', n: 22, note: 'with\ta tab' },
];
const columns: Column<Row>[] = [
  { header: 'NAME', value: (r) => r.name },
  { header: 'N', value: (r) => r.n, right: true },
  { header: 'NOTE', value: (r) => r.note, optional: true },
  { header: 'ID', value: (r) => r.id },
];

test('formatTable: aligned columns, numbers right-aligned, missing values as -, no trailing spaces, control characters blanked', () => {
  assert.equal(formatTable(rows, columns), [
    'NAME                              N  NOTE        ID',
    'alpha                             1  -           0f9c1c2e-1111-4aaa-8bbb-123456789abc',
    'a-much-longer-name-for-this-row  22  with a tab  5d1e0a7b-2222-4ccc-9ddd-abcdefabcdef',
    '',
  ].join('\n'));
});

test('formatTable fits any width: the widest columns are truncated with …, then optional columns go, then everything is cut', () => {
  for (let w = 100; w >= 10; w--) {
    for (const line of formatTable(rows, columns, w).trimEnd().split('\n')) assert.ok([...line].length <= w, `${w}: ${line}`);
  }
  const narrow = formatTable(rows, columns, 60);
  assert.match(narrow, /^NAME\s+N\s+NOTE\s+ID$/m, 'at 60 all columns stay, truncated');
  assert.match(narrow, /a-much-longer-name-f…/);
  assert.doesNotMatch(formatTable(rows, columns, 30), /NOTE/, 'at 30 the optional column is left out');
});

test('terminalWidth: COLUMNS first, then a terminal\'s width, else none (a pipe)', () => {
  const tty = { isTTY: true, columns: 132 } as NodeJS.WriteStream;
  const pipe = { isTTY: false } as NodeJS.WriteStream;
  assert.equal(terminalWidth({ COLUMNS: '70' }, tty), 70);
  assert.equal(terminalWidth({}, tty), 132);
  assert.equal(terminalWidth({}, pipe), undefined);
  assert.equal(terminalWidth({ COLUMNS: 'wide' }, pipe), undefined);
});

test('formatFields, mib, shortTime', () => {
  assert.equal(formatFields([['name', 'x'], ['memory', mib(2048)], ['pid', undefined]]), 'name:   x\nmemory: 2 GiB\npid:    -\n');
  assert.equal(mib(192), '192 MiB');
  assert.equal(shortTime('2026-12-01T21:42:05.123Z'), '2026-12-01 21:42:05');
});

test('option values: sizes, drive specs, expiries', () => {
  assert.equal(sizeMiB('512'), 512);
  assert.equal(sizeMiB('512M'), 512);
  assert.equal(sizeMiB('2G'), 2048);
  assert.equal(sizeMiB('1TiB'), 1024 * 1024);
  assert.throws(() => sizeMiB('1.5G'));
  assert.throws(() => sizeMiB('0'));
  assert.deepEqual(driveSpec('data'), { volume: 'data' });
  assert.deepEqual(driveSpec('data,ro,cache=none,iops=100'), { volume: 'data', readOnly: true, cache: 'none', iops: 100 });
  assert.throws(() => driveSpec('data,cache=fast'));
  assert.throws(() => driveSpec(',ro'));
  const now = Date.parse('2026-12-01T00:00:00Z');
  assert.equal(expiry('30d', now), '2026-12-31T00:00:00.000Z');
  assert.equal(expiry('12h', now), '2026-12-01T12:00:00.000Z');
  assert.equal(expiry('2027-01-31T00:00:00Z', now), '2027-01-31T00:00:00.000Z');
  assert.throws(() => expiry('soon', now));
});

test('pickByRef: an id, then a name, then a unique id prefix (4 or more characters)', () => {
  const items = [{ id: 'aaaa1111', name: 'web' }, { id: 'aaaa2222', name: 'db' }, { id: 'bbbb3333', name: 'aaaa2222' }];
  assert.equal(pickByRef(items, 'aaaa2222', 'VM').name, 'db', 'an exact id wins over a name');
  assert.equal(pickByRef(items, 'web', 'VM').id, 'aaaa1111');
  assert.equal(pickByRef(items, 'bbbb', 'VM').name, 'aaaa2222');
  assert.throws(() => pickByRef(items, 'aaaa', 'VM'), (e: unknown) => e instanceof CliError && e.code === 'ambiguous');
  assert.throws(() => pickByRef(items, 'bbb', 'VM'), (e: unknown) => e instanceof ApiError && e.code === 'not_found', 'too short for a prefix');
  assert.throws(() => pickByRef([{ id: '1', name: 'x' }, { id: '2', name: 'x' }], 'x', 'token'), /2 tokens are named x/);
});
