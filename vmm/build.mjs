// Bundles capsule-vmm (vmm/main.ts) and the modules its threads load by URL into dist/vmm-bin/,
// which bin/capsule-vmm runs. Why a bundle: every VMM thread is a V8 isolate that loads its own
// copy of the code, and esbuild keeps only the parts of zod the VMM uses (a plain import of zod
// loads every locale: ~10 MiB of private memory per VMM process, measured in docs/vmm.md).
// Whitespace and comments go. Identifiers stay, so stacks keep their function names; their
// positions are the minified file's (NODE_OPTIONS=--enable-source-maps maps them through the
// linked source map). Why: V8 keeps a module's source in the heap while it runs, and main.js was
// 500 KB of it, held as UTF-16 (979 KiB) because comments carried non-ASCII characters. Minified
// it is ~350 KB of ASCII (esbuild escapes the rest).
// The entries sit side by side, as the URLs in the code expect (`./vcpu-worker.js` next to the
// module that starts the worker); shared code goes into chunks, so a handler module that an
// iothread imports shares its modules with the iothread's own. koffi stays a package (native).
//   node vmm/build.mjs
import { build } from 'esbuild';
import { renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const final = join(here, '..', 'dist', 'vmm-bin');
// Built beside it, then swapped in: a VMM started during a build finds one whole bundle.
const outdir = `${final}.new`;
rmSync(outdir, { recursive: true, force: true });
await build({
  entryPoints: {
    main: join(here, 'main.ts'),
    'vcpu-worker': join(here, 'cpu', 'vcpu-worker.ts'),
    'iothread-worker': join(here, 'io', 'iothread-worker.ts'),
    'iothread-handler': join(here, 'devices', 'virtio', 'blk', 'iothread-handler.ts'),
    'net-iothread-handler': join(here, 'devices', 'virtio', 'net', 'net-iothread-handler.ts'),
  },
  outdir,
  bundle: true,
  splitting: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['koffi'],
  sourcemap: 'linked',
  legalComments: 'none',
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
});
rmSync(`${final}.old`, { recursive: true, force: true });
try {
  renameSync(final, `${final}.old`);
} catch { /* the first build */ }
renameSync(outdir, final);
rmSync(`${final}.old`, { recursive: true, force: true });
console.log(`vmm: built ${final}`);
