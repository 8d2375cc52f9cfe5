// Bundles the guest agent (agent/main.ts and what it imports: Node built-ins only) into one
// file for Debian bookworm's Node.js 18: dist/agent/capsule-agent.cjs (or the path given).
//   node agent/build.mjs [OUT]
// scripts/build-sandbox-image.sh runs this and installs the result as
// /usr/lib/capsule/capsule-agent.cjs.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, '..', 'dist', 'agent', 'capsule-agent.cjs'));
await build({
  entryPoints: [join(here, 'main.ts')],
  outfile: out,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node18',
  minify: false,
  legalComments: 'none',
  logLevel: 'warning',
  banner: { js: '#!/usr/bin/env node\n// capsule-agent: bundled from agent/ in the capsule repository (agent/build.mjs).' },
});
console.log(`agent: built ${out}`);

// capsule-spawn (agent/capsule-spawn.c), static, beside the bundle: the agent starts processes
// through it (agent/spawner.ts). Without gcc the agent uses Node's spawn for everything.
const helper = join(dirname(out), 'capsule-spawn');
try {
  execFileSync('gcc', ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', helper, join(here, 'capsule-spawn.c')], { stdio: ['ignore', 'ignore', 'inherit'] });
  console.log(`agent: built ${helper}`);
} catch (e) {
  rmSync(helper, { force: true });
  console.log(`agent: capsule-spawn not built (${e.code === 'ENOENT' ? 'no gcc' : 'gcc failed'}): the agent will use Node's spawn`);
}
