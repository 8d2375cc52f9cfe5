// The baseline for bench/api-list.ts: a bare Hono app on @hono/node-server that answers
// GET /v1/vms with a pre-serialized body (no auth, no database, no middleware). Run as its own
// process, like the capsule server, so that both sides get the same CPU arrangement:
//   node dist/bench/bare-hono.js PORT BODY_FILE   (prints "listening" when ready)
import { readFileSync } from 'node:fs';
import { Hono } from 'hono';
import { serve } from '@hono/node-server';

const [port, bodyFile] = process.argv.slice(2);
const body = readFileSync(bodyFile!, 'utf8');
const app = new Hono().get('/v1/vms', (c) => c.body(body, 200, { 'content-type': 'application/json' }));
serve({ fetch: app.fetch, port: Number(port), hostname: '127.0.0.1' }, () => process.stdout.write('listening\n'));
