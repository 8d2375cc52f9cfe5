// The key tables every option group is built from: kv parsing, usage syntax, JSON shape.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as z from 'zod';
import { ConfigError, KeyTable, onOff, size, text, uint } from './options.js';
import { GROUPS, USAGE } from './config.js';

const T = new KeyTable({
  name: text({ cli: 'name', json: 'the_name', metavar: 'NAME', required: true }),
  count: uint({ cli: 'count', min: 1, max: 9 }),
  on: onOff({ cli: 'on', jsonAliases: ['enabled'] }),
  bytes: size({ cli: 'bytes', min: 4096, max: 1 << 30, align: 4096, range: '4K-1G' }),
}, 'name');

test('kv: positional first key, values typed, errors name the option and key', () => {
  assert.deepEqual(T.parseKv('-t', 'x,count=3,on=off,bytes=8K'), { name: 'x', count: 3, on: false, bytes: 8192 });
  assert.deepEqual(T.parseKv('-t', 'name=y,on=true'), { name: 'y', on: true });
  const fails = (v: string, re: RegExp): void => assert.throws(() => T.parseKv('-t', v), (e: Error) => e instanceof ConfigError && re.test(e.message), v);
  fails('x,count=10', /^-t: count must be an integer in range 1-9 \(got '10'\)$/);
  fails('x,count=1,count=2', /^-t: 'count' given twice$/);
  fails('x,,on=on', /^-t: empty item/);
  fails('x,y', /^-t: 'y' is not key=value \(allowed keys: name, count, on, bytes\)$/);
  fails('count=1', /^-t: needs name=NAME \(got 'count=1'\)$/);
  fails('x,bytes=4097', /^-t: bytes must be 4K-1G, a multiple of 4096 bytes/);
});

test('JSON: the same keys under their JSON names, checked by the same rules', () => {
  const schema = T.jsonObject();
  assert.deepEqual(T.fromJson(schema.parse({ the_name: 'x', count: 2, enabled: true })), { name: 'x', count: 2, on: true });
  const r = schema.safeParse({ the_name: 'x', count: 0 });
  assert.equal(r.success, false);
  assert.match(r.error?.issues[0]?.message ?? '', /must be an integer in range 1-9 \(got 0\)/);
  assert.equal(z.strictObject(T.jsonShape()).safeParse({ count: 1 }).success, false, 'the required key');
});

test('usage syntax is generated from the keys', () => {
  assert.equal(T.syntax(), '[name=]NAME[,count=N][,on=on|off][,bytes=N[M|G]]');
});

test('USAGE lists every option of every group, and each group has a JSON form', () => {
  for (const g of GROUPS) {
    for (const o of g.options) assert.ok(USAGE.includes(o.driver === undefined ? `  ${o.name}` : `  -device ${o.driver},`), o.name);
    assert.ok(Object.keys(g.json).length > 0, g.options[0]?.name);
  }
});
