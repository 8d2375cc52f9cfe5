// The bundle bin/capsule-vmm runs (vmm/build.mjs → dist/vmm-bin/, made by `npm run build`):
// every module the code loads by URL is there beside main.js, zod is inside it without the
// locales a plain `import { z } from 'zod'` drags in (~10 MiB per VMM, docs/vmm.md), and the
// bundle starts: its usage text and a refused option come out of it, not out of dist/vmm/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { REPO_ROOT, VMM_BIN } from './testing/clients.js';
import { VMM_NODE_FLAGS } from '../lib/vmm-node-flags.js';

const OUT = join(REPO_ROOT, 'dist', 'vmm-bin');
const ENTRIES = ['main.js', 'vcpu-worker.js', 'iothread-worker.js', 'iothread-handler.js'];
/** The entries and the chunks of code they share. */
const files = (): string[] => readdirSync(OUT).filter((f) => f.endsWith('.js'));

test('the bundle has every entry, and each `new URL(\'./x.js\', import.meta.url)` in it names a file beside it', () => {
  for (const e of ENTRIES) assert.ok(existsSync(join(OUT, e)), `${e} missing in ${OUT} (npm run build)`);
  const code = files().map((f) => readFileSync(join(OUT, f), 'utf8')).join('\n');
  const urls = [...code.matchAll(/new URL\("\.\/([\w.-]+\.js)", ?import\.meta\.url\)/g)].map((m) => m[1] as string);
  assert.ok(urls.length >= 3, `expected the worker and handler URLs, found ${JSON.stringify(urls)}`);
  for (const u of urls) assert.ok(existsSync(join(OUT, u)), `the bundle loads ./${u}, which is not in ${OUT}`);
});

test('the bundle is ASCII, without comments: V8 keeps each module\'s source for as long as it runs', () => {
  // One non-ASCII character anywhere (a comment's dash or arrow was enough) makes V8 hold the
  // whole source as UTF-16: main.js cost 979 KiB of heap that way, against ~350 KiB now.
  for (const f of files()) {
    const code = readFileSync(join(OUT, f), 'utf8');
    const i = code.search(/[^\x00-\x7f]/);
    assert.equal(i, -1, `${f}: non-ASCII at ${i}: ${JSON.stringify(code.slice(Math.max(0, i - 40), i + 40))}`);
    assert.doesNotMatch(code, /^\s*\/\/ /m, `${f} keeps comments: is vmm/build.mjs still minifying whitespace?`);
  }
});

test('zod is bundled without its locales (only the English one zod sets up)', () => {
  const sources: string[] = [];
  for (const f of files()) sources.push(...(JSON.parse(readFileSync(join(OUT, `${f}.map`), 'utf8')) as { sources: string[] }).sources);
  const zod = sources.filter((s) => s.includes('node_modules/zod/'));
  assert.ok(zod.length > 0, 'zod is not in the bundle at all: is it imported from node_modules at run time?');
  const locales = zod.filter((s) => /\/locales\/(?!en\.js$)/.test(s));
  assert.deepEqual(locales, [], 'a module imports zod as `{ z }`: use `import * as z from \'zod\'` so that esbuild can drop what is unused');
  for (const f of files()) assert.doesNotMatch(readFileSync(join(OUT, f), 'utf8'), /from "zod"/, f);
});

test('bin/capsule-vmm runs the bundle: usage, and a refused option with its reason, exit 2', () => {
  const help = spawnSync(process.execPath, [VMM_BIN, '-help'], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^usage: capsule-vmm -kernel VMLINUZ/);
  const bad = spawnSync(process.execPath, [VMM_BIN, '-kernel', '/k', '-incoming', 'defer'], { encoding: 'utf8' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /-incoming needs -api-channel unix:PATH/);
});

test('bin/capsule-vmm run as a program starts node with the VMM\'s flags (lib/vmm-node-flags.ts)', () => {
  const first = readFileSync(VMM_BIN, 'utf8').split('\n')[0];
  assert.equal(first, VMM_NODE_FLAGS.length ? `#!/usr/bin/env -S node ${VMM_NODE_FLAGS.join(' ')}` : '#!/usr/bin/env node');
  const help = spawnSync(VMM_BIN, ['-help'], { encoding: 'utf8', env: { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}` } });
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /^usage: capsule-vmm -kernel VMLINUZ/);
});
