// The web UI: static files built into dist/web by web/build.mjs.
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';
import { Hono } from 'hono';
import { errorResponse } from './errors.js';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon', '.json': 'application/json', '.map': 'application/json',
  '.woff2': 'font/woff2',
};

export function staticRoutes(webDir: string) {
  const root = normalize(webDir + sep);
  return new Hono().get('/*', async (c) => {
    let rel: string;
    try {
      rel = c.req.path === '/' ? 'index.html' : decodeURIComponent(c.req.path.slice(1));
    } catch {
      return errorResponse(c, 400, 'invalid_request', 'malformed percent-encoding in the path');
    }
    if (rel.includes('\0')) return c.notFound();
    const file = normalize(join(root, rel));
    if (!file.startsWith(root)) return c.notFound();
    try {
      const body = await readFile(file);
      return c.body(body, 200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-cache' });
    } catch {
      return c.notFound();
    }
  });
}
