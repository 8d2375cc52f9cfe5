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

// The agent's static helpers, beside the bundle; without gcc the agent does without them:
// capsule-spawn (agent/capsule-spawn.c) starts processes (else Node's spawn, agent/spawner.ts),
// capsule-recv (agent/capsule-recv.c) takes large uploads off the connection (else frames).
for (const [name, without] of [['capsule-spawn', "the agent will use Node's spawn"], ['capsule-recv', 'uploads will come in frames']]) {
  const helper = join(dirname(out), name);
  try {
    execFileSync('gcc', ['-static', '-Os', '-s', '-Wall', '-Wextra', '-Werror', '-o', helper, join(here, `${name}.c`)], { stdio: ['ignore', 'ignore', 'inherit'] });
    console.log(`agent: built ${helper}`);
  } catch (e) {
    rmSync(helper, { force: true });
    console.log(`agent: ${name} not built (${e.code === 'ENOENT' ? 'no gcc' : 'gcc failed'}): ${without}`);
  }
}
