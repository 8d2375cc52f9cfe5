// The ports proxy's pure parts: the port, the target the guest gets, /proc/net/tcp{,6}.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ApiError } from '../supervisor/errors.js';
import { guestTarget, parsePort, parseProcNetTcp, procAddress } from './ports.js';

test('parsePort: 1-65535 in decimal digits, else 400 naming the range', () => {
  assert.equal(parsePort('1'), 1);
  assert.equal(parsePort('8000'), 8000);
  assert.equal(parsePort('65535'), 65535);
  for (const bad of ['0', '65536', '70000', '-1', '1e3', '0x50', ' 80', '', '123456', undefined]) {
    assert.throws(() => parsePort(bad), (e: unknown) => e instanceof ApiError && e.status === 400 && /1-65535/.test(e.message), String(bad));
  }
});

test('guestTarget: the rest of the raw target, "/" for none, the query less access_token', () => {
  const p = '/v1/vms/abc/ports/8000';
  assert.equal(guestTarget(p), '/');
  assert.equal(guestTarget(`${p}/`), '/');
  assert.equal(guestTarget(`${p}?a=1`), '/?a=1');
  assert.equal(guestTarget(`${p}/x/y%20z?a=1&b=%2F`), '/x/y%20z?a=1&b=%2F');
  assert.equal(guestTarget(`${p}/x?access_token=cap_123&a=1&access%5Ftoken=cap_4&a=2`), '/x?a=1&a=2');
  assert.equal(guestTarget(`${p}/x?access_token=cap_123`), '/x');
  assert.equal(guestTarget(`${p}/x?access_token`), '/x');
  assert.equal(guestTarget(`${p}/x?%zz=1`), '/x?%zz=1', 'bad percent-encoding is kept, not thrown on');
  assert.equal(guestTarget('/v1/vms/a%2Fb/ports/80/p'), '/p');
});

test('procAddress: IPv4 and IPv6 as /proc/net/tcp{,6} write them (x86: 32-bit words little-endian)', () => {
  assert.equal(procAddress('00000000'), '0.0.0.0');
  assert.equal(procAddress('0100007F'), '127.0.0.1');
  assert.equal(procAddress('1500FEA9'), '169.254.0.21');
  assert.equal(procAddress('00000000000000000000000000000000'), '::');
  assert.equal(procAddress('00000000000000000000000001000000'), '::1');
  assert.equal(procAddress('0000000000000000FFFF00001500FEA9'), '::ffff:169.254.0.21');
  assert.equal(procAddress('B80D0120000000000000000001000000'), '2001:db8::1');
});

test('parseProcNetTcp: listening sockets only (state 0A), deduplicated by port', () => {
  const tcp = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 11 1 0 100 0 0 10 0',
    '   1: 0100007F:1F43 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12 1 0 100 0 0 10 0',
    '   2: 1500FEA9:C2D6 0200C80A:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 13 1 0 100 0 0 10 0',
    '   3: 00000000:C2CF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 14 1 0 100 0 0 10 0',
    '',
  ].join('\n');
  const tcp6 = [
    '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 21 1 0 100 0 0 10 0',
    '   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 22 1 0 100 0 0 10 0',
  ].join('\n');
  const found = parseProcNetTcp([tcp, tcp6, 'garbage\nmore garbage 0A\n']);
  assert.deepEqual([...found.keys()].sort((a, b) => a - b), [80, 8000, 8003, 49871]);
  assert.deepEqual([...found.get(8000)!].sort(), ['0.0.0.0', '::']);
  assert.deepEqual([...found.get(8003)!], ['127.0.0.1']);
  assert.deepEqual([...found.get(80)!], ['::1']);
});
