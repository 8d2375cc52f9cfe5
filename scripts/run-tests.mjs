#!/usr/bin/env node
// Runs the whole suite from dist/ (npm test builds first):
//   1. host tests: dist/**/*.test.js except KVM and browser tests, one file at a time
//      (several boot real guests under TCG; two cores are not enough to run them together);
//   2. KVM tests (*.kvm.test.js): directly where /dev/kvm works, else in the nested lab;
//   3. browser tests: dist/e2e/*.test.js (Playwright + Debian's chromium).
// `node scripts/run-tests.mjs FILTER` runs only the files whose path contains FILTER.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const filter = process.argv[2];

function find(dir, out = []) {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) find(p, out);
    else if (name.endsWith('.test.js')) out.push(relative(root, p));
  }
  return out.sort();
}

const all = ['agent', 'cli', 'lib', 'server', 'vmm', 'seccomp', 'bench', 'scripts', 'e2e'].flatMap((d) => find(join(root, 'dist', d)))
  .filter((f) => !filter || f.includes(filter));
const kvm = all.filter((f) => f.endsWith('.kvm.test.js'));
const e2e = all.filter((f) => f.startsWith('dist/e2e/') && !kvm.includes(f));
const host = all.filter((f) => !kvm.includes(f) && !e2e.includes(f));

// Build the guest images once for every test that boots one (both builds are cached; the
// sandbox image takes ~1-2 min the first time).
const images = process.env.CAPSULE_TEST_IMAGES ?? '/tmp/capsule-test-images';
for (const [script, name] of [['build-image.sh', 'default'], ['build-sandbox-image.sh', 'sandbox']]) {
  const build = spawnSync('bash', [join(root, 'scripts', script), join(images, name)], { stdio: 'inherit' });
  if (build.status !== 0) process.exit(build.status ?? 1);
}

let failed = false;
const run = (label, cmd, args) => {
  // With no file, node --test would search the whole tree: run nothing instead.
  if (!args.some((a) => a.endsWith('.js'))) return;
  console.log(`\n# ${label}: ${args.filter((a) => a.endsWith('.js')).length} file(s)`);
  const env = { ...process.env, CAPSULE_TEST_IMAGES: images, CAPSULE_NO_BUILD: '1' };
  // The lab cannot see this host's /tmp: it builds its own copy of the image in its work folder.
  if (label === 'KVM tests') { delete env.CAPSULE_TEST_IMAGES; env.CAPSULE_HOST_TEST_IMAGES = images; }
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, env });
  if (r.status !== 0) failed = true;
};

run('host tests', process.execPath, ['--test', '--test-concurrency=1', ...host]);
if (kvm.length > 0) {
  const harness = join(root, 'scripts/kvm-tests.sh');
  if (existsSync(harness)) run('KVM tests', 'bash', [harness, ...kvm]);
  else { console.error('KVM tests found but scripts/kvm-tests.sh is missing'); failed = true; }
}
run('browser tests', process.execPath, ['--test', '--test-concurrency=1', ...e2e]);
process.exit(failed ? 1 : 0);
