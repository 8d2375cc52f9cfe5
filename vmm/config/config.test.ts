import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildConfig, ConfigError, parseMemSize, DEFAULT_CMDLINE } from './config.js';

const K = ['-kernel', '/k'];

test('defaults', () => {
  const c = buildConfig(K);
  assert.equal(c.cpus, 1);
  assert.equal(c.memSize, 256 * 1024 * 1024);
  assert.equal(c.cmdline, DEFAULT_CMDLINE);
  assert.deepEqual(c.machine, { type: 'microvm', dumpGuestCore: true, memShare: false });
  assert.equal(c.daemonize, false);
  assert.deepEqual(c.log, { enabled: false });
});

test('every option', () => {
  const c = buildConfig(['-machine', 'microvm,dump-guest-core=off,mem-share=on', '-smp', 'cpus=4', '-m', 'size=1G',
    '-mem-path', '/dev/hugepages', '-kernel', '/k', '-append', 'console=ttyS0 quiet', '-initrd', '/i',
    '-chardev', 'id=c0,path=/run/c.sock', '-api-channel', 'unix:/run/q.sock', '-daemonize', '-pidfile', '/run/p',
    '-D', '/run/log', '-disable-seccomp']);
  assert.equal(c.cpus, 4);
  assert.equal(c.memSize, 1024 ** 3);
  assert.equal(c.memPath, '/dev/hugepages');
  assert.deepEqual(c.machine, { type: 'microvm', dumpGuestCore: false, memShare: true });
  assert.equal(c.cmdline, 'console=ttyS0 quiet');
  assert.equal(c.initrd, '/i');
  assert.deepEqual(c.console, { id: 'c0', path: '/run/c.sock' });
  assert.equal(c.apiChannel, '/run/q.sock');
  assert.equal(c.daemonize, true);
  assert.equal(c.pidfile, '/run/p');
  assert.deepEqual(c.log, { enabled: true, file: '/run/log' });
  assert.equal(c.disableSeccomp, true);
  assert.equal(c.seccompMode, 'kill');
  assert.equal(buildConfig([...K, '-seccomp', 'log']).seccompMode, 'log');
  assert.equal(buildConfig(['-config', 'x.json'], () => '{"boot-source":{"kernel_image_path":"/k"},"seccomp":"log"}').seccompMode, 'log');
  assert.throws(() => buildConfig([...K, '-seccomp', 'trap']), /-seccomp: expected kill or log/);
  assert.equal(buildConfig([...K, '-D']).log.enabled, true);
  assert.equal(buildConfig([...K, '-smp', '254']).cpus, 254);
  assert.equal(buildConfig([...K, '-machine', 'type=microvm']).machine.type, 'microvm');
});

test('memory sizes', () => {
  assert.equal(parseMemSize('256M'), 256 * 1024 ** 2);
  assert.equal(parseMemSize('805306368'), 805306368);
  assert.equal(parseMemSize('512G'), 512 * 1024 ** 3);
  for (const bad of ['255M', '513G', '1T', 'abc', '', '268435457', '-1G']) {
    assert.throws(() => parseMemSize(bad), (e: Error) => e instanceof ConfigError && /-m/.test(e.message) && /256M-512G/.test(e.message), bad);
  }
});

test('errors name the option and its range', () => {
  const cases: Array<[string[], RegExp]> = [
    [['-smp', '0'], /-smp.*1-254/],
    [['-smp', '255'], /-smp.*1-254/],
    [['-smp', 'cpus=x'], /-smp.*1-254/],
    [['-smp', 'cores=2'], /-smp: unknown key 'cores'/],
    [['-m', '128M'], /-m:.*256M-512G/],
    [['-machine', 'pc'], /-machine.*microvm/],
    [['-machine', 'microvm,mem-share=maybe'], /-machine: mem-share must be 'on' or 'off'/],
    [['-mem-path', 'rel/path'], /-mem-path.*absolute/],
    [['-serial', 'pty'], /-serial.*stdio/],
    [['-api-channel', '/no/prefix'], /-api-channel: expected unix:PATH/],
    [['-chardev', 'id=x'], /-chardev: needs id=ID,path=SOCKET/],
    [['-bogus'], /unknown option '-bogus'/],
    [['-m'], /-m: missing value/],
    [['-daemonize', '-serial', 'stdio'], /-serial stdio cannot be used with -daemonize/],
  ];
  for (const [args, re] of cases) assert.throws(() => buildConfig([...K, ...args]), (e: Error) => e instanceof ConfigError && re.test(e.message), args.join(' '));
  assert.throws(() => buildConfig([]), /-kernel: a kernel image is required/);
});

test('JSON config, command line overrides it', () => {
  const json = JSON.stringify({
    'machine-config': { type: 'MicroVm', vcpu_count: 2, mem_size: 805306368, dump_guest_core: false },
    'boot-source': { kernel_image_path: '/json/k', boot_args: 'json args', initrd_fs_path: '/json/i' },
    serial: { stdio: true },
    'api-channel': 'unix:/json/q',
  });
  const c = buildConfig(['-config', 'x.json', '-smp', '3'], () => json);
  assert.equal(c.cpus, 3);
  assert.equal(c.memSize, 805306368);
  assert.equal(c.kernel, '/json/k');
  assert.equal(c.cmdline, 'json args');
  assert.equal(c.initrd, '/json/i');
  assert.equal(c.serialStdio, true);
  assert.equal(c.apiChannel, '/json/q');
  assert.equal(c.machine.dumpGuestCore, false);
  assert.throws(() => buildConfig(['-config', 'x.json'], () => '{"machine-config":{"vcpu_count":300}}'), /vcpu_count.*1-254/);
  assert.throws(() => buildConfig(['-config', 'x.json'], () => '{"boot-source":{"kernel_image_path":"/k"},"floppy":[]}'),
    /-config x\.json: \(top level\): unknown key 'floppy' \(allowed keys: machine-config, .*drive/);
  assert.throws(() => buildConfig(['-config', 'x.json'], () => '{"machine-config":{"vcpus":2}}'), /machine-config: unknown key 'vcpus' \(allowed keys: .*vcpu_count/);
  assert.throws(() => buildConfig(['-config', 'x.json'], () => '{nope'), /invalid JSON/);
  assert.throws(() => buildConfig(['-config', 'x.json'], () => { throw new Error('ENOENT'); }), /-config: cannot read/);
});

test('-incoming: defer or file:DIR (made absolute), in the JSON file too; anything else names the forms', () => {
  const Q = [...K, '-api-channel', 'unix:/q.sock'];
  assert.equal(buildConfig(K).incoming, undefined);
  assert.deepEqual(buildConfig([...Q, '-incoming', 'defer']).incoming, { mode: 'defer' });
  assert.deepEqual(buildConfig([...Q, '-incoming', 'file:/snap/a']).incoming, { mode: 'file', dir: '/snap/a' });
  assert.deepEqual(buildConfig(['-config', 'x.json'], () => '{"boot-source":{"kernel_image_path":"/k"},"api-channel":"unix:/q.sock","incoming":"defer"}').incoming, { mode: 'defer' });
  assert.throws(() => buildConfig([...Q, '-incoming', 'tcp:0:4444']), /-incoming: expected defer or file:DIR/);
  assert.throws(() => buildConfig([...Q, '-incoming', 'file:']), /-incoming: expected defer or file:DIR/);
  assert.throws(() => buildConfig(['-config', 'x.json'], () => '{"boot-source":{"kernel_image_path":"/k"},"incoming":"exec:cat"}'), /must be defer or file:DIR/);
  // Restored paused, with no QMP to send cont: refused rather than a VMM paused for ever.
  assert.throws(() => buildConfig([...K, '-incoming', 'file:/snap/a']), /-incoming needs -api-channel unix:PATH/);
  assert.throws(() => buildConfig(['-config', 'x.json'], () => '{"boot-source":{"kernel_image_path":"/k"},"incoming":"defer"}'), /-incoming needs -api-channel/);
});
