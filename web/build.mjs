// Builds the web UI: bundles web/src (TypeScript) with esbuild into dist/web/
// {index.html, app.js, app.css, xterm.css}. Offline: everything comes from node_modules.
//   node web/build.mjs            production build (minified, with source maps)
//   node web/build.mjs --watch    rebuild on change
import { build, context } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const out = join(root, 'dist', 'web');
const require = createRequire(import.meta.url);
const watch = process.argv.includes('--watch');

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const options = {
  absWorkingDir: root,
  entryPoints: { app: join(here, 'src', 'main.ts'), app_css: join(here, 'src', 'app.css') },
  outdir: out,
  entryNames: '[name]',
  bundle: true,
  format: 'esm',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  minify: !watch,
  sourcemap: true,
  legalComments: 'linked',
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"' },
};

function copyStatic() {
  writeFileSync(join(out, 'index.html'), readFileSync(join(here, 'src', 'index.html')));
  copyFileSync(require.resolve('@xterm/xterm/css/xterm.css'), join(out, 'xterm.css'));
}

function renameCss() {
  // Two entries named "app" would clash on app.js; the CSS entry is app_css.css -> app.css.
  const css = readFileSync(join(out, 'app_css.css'), 'utf8').replace('app_css.css.map', 'app.css.map');
  writeFileSync(join(out, 'app.css'), css);
  copyFileSync(join(out, 'app_css.css.map'), join(out, 'app.css.map'));
  rmSync(join(out, 'app_css.css'));
  rmSync(join(out, 'app_css.css.map'));
}

if (watch) {
  const ctx = await context({
    ...options,
    plugins: [{ name: 'static', setup: (b) => b.onEnd(() => { copyStatic(); try { renameCss(); } catch {} }) }],
  });
  await ctx.watch();
  console.log('web: watching web/src');
} else {
  const t0 = Date.now();
  await build(options);
  renameCss();
  copyStatic();
  console.log(`web: built dist/web in ${Date.now() - t0} ms`);
}
