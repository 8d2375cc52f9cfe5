// API fuzz drill (issue 10, "Hostile input and crash drills"): fast-check sends ≥ 10,000 requests
// over every route the server's OpenAPI document lists (plus the routes outside it), with tokens of
// every scope from two tenants and the admin: adversarial paths, ids, query strings, methods,
// headers and JSON bodies (wrong types, huge strings, deep nesting, unicode, prototype keys).
// Asserted for every request: never a 5xx; a tenant's answer never holds the other tenant's ids or
// names (unless the request itself carried them: an echo in a 404 is no leak), and never a 2xx on
// the other tenant's resources; a refused (4xx) request leaves the resource tables as they were.
// Afterwards: the server is alive and `PRAGMA integrity_check` is ok.
// FUZZ_SEED and FUZZ_RUNS override the seed and the count; a failure prints the seed to replay.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { TestServer } from '../test/harness.js';
import { writeFigures } from '../test/figures.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261201);
const RUNS = Number(process.env.FUZZ_RUNS ?? 10_000);

let s: TestServer;
before(async () => {
  s = await TestServer.start({ env: { CAPSULE_RATE_LIMIT: '1000000', CAPSULE_RATE_BURST: '1000000', CAPSULE_TENANT_RATE: '1000000', CAPSULE_TENANT_BURST: '1000000' } });
});
after(async () => { await s.stop(); });

interface Caller { label: string; tenant: 'a' | 'b' | 'admin'; token: string; tokenId: string }
interface Fixture { tenantId: string; tenantName: string; vmIds: string[]; vmNames: string[]; volumeIds: string[]; volumeNames: string[]; tokenIds: string[] }

const ok = (r: { status: number; body: unknown }, what: string) => assert.ok(r.status < 300, `${what}: ${r.status} ${JSON.stringify(r.body)}`);

/** A tenant with two VMs and a volume, all with names no generator produces, and a token per scope. */
async function fixture(tag: 'a' | 'b', callers: Caller[]): Promise<Fixture> {
  const salt = Math.random().toString(16).slice(2, 10);
  const tenantName = `fuzz-${tag}-${salt}`;
  // vcpus 0: a start is refused by quota (409) before a VMM launches: this drill is about the API.
  const t = await s.api('POST', '/v1/tenants', { name: tenantName, quotas: { vcpus: 0 } });
  ok(t, 'tenant');
  const f: Fixture = { tenantId: t.body.id, tenantName, vmIds: [], vmNames: [], volumeIds: [], volumeNames: [], tokenIds: [] };
  for (const scope of ['write', 'read', 'write'] as const) {
    const k = await s.api('POST', '/v1/tokens', { tenant: t.body.id, name: `${scope}-${salt}`, scope });
    ok(k, 'token');
    f.tokenIds.push(k.body.id);
    callers.push({ label: `${tag}:${scope}`, tenant: tag, token: k.body.token, tokenId: k.body.id });
  }
  const as = (method: string, path: string, body: unknown) => s.api(method, path, body, { authorization: `Bearer ${callers.find((c) => c.tenant === tag)!.token}` });
  const vol = await as('POST', '/v1/volumes', { name: `secret${tag}vol${salt}`, sizeMiB: 1 });
  ok(vol, 'volume');
  f.volumeIds.push(vol.body.id);
  f.volumeNames.push(vol.body.name);
  for (let i = 0; i < 2; i++) {
    const vm = await as('POST', '/v1/vms', { name: `secret${tag}vm${i}${salt}`, memoryMiB: 128, drives: i === 0 ? [{ volume: vol.body.name, readOnly: true }] : [] });
    ok(vm, 'vm');
    f.vmIds.push(vm.body.id);
    f.vmNames.push(vm.body.name);
  }
  return f;
}

/** Strings that break naive parsers, paths and templates. */
const NASTY = [
  '', ' ', '..', '../..', '%2e%2e', '%2F', '%00', '\u0000', '__proto__', 'constructor', 'prototype', 'toString', 'null', 'undefined',
  'true', '-1', '0', '1e309', 'NaN', '9'.repeat(400), "' OR 1=1 --", '"; DROP TABLE vms; --', '${7*7}', '{{7*7}}', '<script>alert(1)</script>',
  '\u202e\u0645\u0631\u062d\u0628\u0627', '😀'.repeat(50), '\ud800', 'é'.repeat(3000), 'a'.repeat(70_000), '%', '%zz', '/', '//', '\\', '*', 'default',
];

const jsonScalar = fc.oneof(
  fc.constantFrom(...NASTY), fc.string({ maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 40 }), fc.integer(), fc.double(),
  fc.constantFrom(0, -1, 1, 2 ** 31, 2 ** 53 + 1, -(2 ** 63), 1e308, 64, 128, 256, 1_000_000_001), fc.boolean(), fc.constant(null),
);
/** JSON with prototype-pollution keys mixed into the ordinary ones. */
const jsonKey = fc.oneof({ weight: 4, arbitrary: fc.string({ maxLength: 12 }) }, { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'prototype', 'path', 'file', 'tenant', 'id', 'state', 'pid') });
const { json: jsonValue } = fc.letrec((tie) => ({
  json: fc.oneof({ depthSize: 'small', withCrossShrink: true }, jsonScalar, fc.array(tie('json'), { maxLength: 5 }), fc.dictionary(jsonKey, tie('json'), { maxKeys: 6 })),
}));
/** An array or object nested `depth` levels deep (a parser that recurses must not fall over). */
const deep = fc.integer({ min: 100, max: 5000 }).map((depth) => '['.repeat(depth) + ']'.repeat(depth));

interface Route { method: string; path: string; schema?: Record<string, unknown> }

/** JSON Schema (as the OpenAPI document writes it) → arbitrary values, mostly valid, sometimes not. */
function fromSchema(doc: any, schema: any, names: fc.Arbitrary<string>, refs: fc.Arbitrary<string>, depth = 0): fc.Arbitrary<unknown> {
  if (!schema || depth > 4) return jsonValue;
  if (schema.$ref) return fromSchema(doc, doc.components.schemas[schema.$ref.split('/').pop()], names, refs, depth + 1);
  const alternatives = schema.anyOf ?? schema.oneOf;
  if (alternatives) return fc.oneof(...alternatives.map((x: unknown) => fromSchema(doc, x, names, refs, depth + 1)));
  const wrong = jsonScalar;
  const valid = ((): fc.Arbitrary<unknown> => {
    if (schema.enum) return fc.constantFrom(...schema.enum);
    switch (schema.type) {
      case 'string': return fc.oneof(names, refs, fc.string({ maxLength: 80 }), fc.date({ noInvalidDate: true }).map((d) => d.toISOString()));
      case 'integer': return fc.oneof(fc.integer({ min: schema.minimum ?? -10, max: Math.min(schema.maximum ?? 1e6, 1e6) }), fc.integer());
      case 'number': return fc.double();
      case 'boolean': return fc.boolean();
      case 'array': return fc.array(fromSchema(doc, schema.items, names, refs, depth + 1), { maxLength: 20 });
      case 'object': {
        const props: Record<string, fc.Arbitrary<unknown>> = {};
        for (const [k, v] of Object.entries(schema.properties ?? {})) props[k] = k === 'name' ? names : fromSchema(doc, v, names, refs, depth + 1);
        return fc.tuple(fc.record(props, { requiredKeys: [] }), fc.dictionary(jsonKey, jsonValue, { maxKeys: 2 }), fc.nat(9))
          .map(([known, extra, roll]) => (roll === 0 ? { ...extra, ...known } : roll === 1 ? JSON.parse(`{"__proto__":{"polluted":1},"constructor":{"prototype":{"polluted":1}},${JSON.stringify(known).slice(1)}`.replace(/,}$/, '}')) : known));
      }
      default: return jsonValue;
    }
  })();
  return fc.oneof({ weight: 5, arbitrary: valid }, { weight: 1, arbitrary: wrong });
}

/** Bodies that pass validation, so that creates succeed too and later answers have content to leak. */
const GOOD_BODIES: Record<string, (name: string, ref: string) => unknown> = {
  'POST /v1/vms': (name) => ({ name, memoryMiB: 128 }),
  'POST /v1/volumes': (name) => ({ name, sizeMiB: 1 }),
  'POST /v1/tenants': (name) => ({ name, quotas: { vcpus: 0 } }),
  'POST /v1/tokens': (name) => ({ name, scope: 'read' }),
  'POST /v1/vms/{id}/drives': (_name, ref) => ({ volume: ref, readOnly: true }),
  'PUT /v1/vms/{id}/balloon': () => ({ targetMiB: 64 }),
  'PATCH /v1/tenants/{id}': (name) => ({ name }),
};
function goodBody(route: Route, names: fc.Arbitrary<string>, refs: fc.Arbitrary<string>): fc.Arbitrary<string> {
  const make = GOOD_BODIES[`${route.method} ${route.path}`] ?? (() => ({}));
  return fc.tuple(names.filter((n) => /^[a-z0-9][a-z0-9_.-]{0,20}$/.test(n)), refs).map(([n, r]) => JSON.stringify(make(n, r)));
}

interface Req { caller: Caller; method: string; path: string; body?: string | Buffer; headers: Record<string, string>; route: string }

interface Answer { status: number; text: string; reset?: boolean }

/** Sends bytes as they are (node:http leaves the target alone; fetch would normalize it). */
function send(r: Req): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { ...r.headers };
    if (r.body !== undefined) headers['content-length'] = Buffer.byteLength(r.body);
    const req = request({ host: '127.0.0.1', port: s.port, method: r.method, path: r.path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', (e) => {
      // Node's parser answers a request head over its 16 KiB limit with 431 and closes at once;
      // a client still writing may see the reset instead of the answer. Anything else is a failure.
      if (r.path.length > 16 * 1024) resolve({ status: 431, text: '', reset: true });
      else reject(e);
    });
    req.end(r.body);
  });
}

test('API fuzz: ≥ 10,000 adversarial requests over every route, every scope, two tenants: no 5xx, no leak, no rows from refusals, database intact', { timeout: 10 * 60_000 }, async () => {
  const callers: Caller[] = [];
  const whoami = (await s.api('GET', '/v1/whoami')).body;
  callers.push({ label: 'admin', tenant: 'admin', token: s.token, tokenId: whoami.id });
  const A = await fixture('a', callers);
  const B = await fixture('b', callers);
  const sacrificial = (await s.api('POST', '/v1/tenants', { name: 'fuzz-c' })).body;
  // The admin's own VMs cannot start either.
  ok(await s.api('PATCH', `/v1/tenants/${whoami.tenant.id}`, { quotas: { vcpus: 0 } }), 'admin quota');
  const fx = { a: A, b: B };

  const doc = (await s.api('GET', '/v1/openapi.json')).body;
  const routes: Route[] = [];
  for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, any>>)) {
    for (const [method, op] of Object.entries(ops)) {
      routes.push({ method: method.toUpperCase(), path, schema: op.requestBody?.content?.['application/json']?.schema });
    }
  }
  // Served but not in the document (WebSockets answer plain requests with 400).
  for (const [method, path] of [['GET', '/v1/vms/{id}/log'], ['GET', '/v1/vms/{id}/console'], ['GET', '/v1/vms/{id}/events'], ['GET', '/v1/events'], ['GET', '/metrics'], ['GET', '/v1/health'], ['GET', '/'], ['GET', '/v1/nope/{id}']] as const) {
    routes.push({ method, path });
  }
  assert.ok(routes.length >= 25, `routes: ${routes.length}`);
  const seen = new Set<string>();
  for (let i = routes.length - 1; i >= 0; i--) {
    const key = `${routes[i]!.method} ${routes[i]!.path}`;
    if (seen.has(key)) routes.splice(i, 1);
    seen.add(key);
  }

  // Ids a caller may put in a path or body: its own, the other tenant's (probes), random, nasty.
  // The admin never gets the fixtures' tenants or tokens (it could delete them and end the drill early).
  const fixtureTokenIds = new Set([...A.tokenIds, ...B.tokenIds, whoami.id]);
  const idsFor = (c: Caller): string[] => {
    const res = [...A.vmIds, ...A.vmNames, ...A.volumeIds, ...A.volumeNames, ...B.vmIds, ...B.vmNames, ...B.volumeIds, ...B.volumeNames, 'drive-0', 'drive-1', 'vda'];
    return c.tenant === 'admin' ? [...res, sacrificial.id, 'fuzz-c'] : [...res, A.tenantId, B.tenantName, whoami.tenant.id, 'default'];
  };
  const names = fc.oneof(fc.stringMatching(/^[a-z0-9][a-z0-9_.-]{0,20}$/), fc.constantFrom(...NASTY), fc.string({ maxLength: 70 }));
  const query = fc.array(fc.tuple(fc.constantFrom('force', 'tenant', 'since', 'until', 'limit', 'vm', 'access_token', '__proto__[x]', 'constructor', 'a'), fc.oneof(fc.constantFrom('true', '1', 'false', '-1', '0', '1e999', 'default', '2026-01-01T00:00:00Z', 'fuzz-c'), fc.string({ maxLength: 20 }))), { maxLength: 4 })
    .map((pairs) => (pairs.length ? '?' + pairs.map(([k, v]) => `${pct(k)}=${pct(v)}`).join('&') : ''));
  const contentType = fc.constantFrom('application/json', 'application/json', 'application/json', 'text/plain', 'application/json; charset=utf-16', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded', '');
  const auth = fc.oneof({ weight: 20, arbitrary: fc.constant('own') }, { weight: 1, arbitrary: fc.constantFrom('none', 'garbage', 'basic', 'cap_bad') });

  const reqArb: fc.Arbitrary<Req> = fc.integer({ min: 0, max: callers.length - 1 }).chain((ci) => {
    const caller = callers[ci]!;
    const pool = idsFor(caller);
    const refs = fc.oneof(fc.constantFrom(...pool), fc.uuid());
    const idArb = fc.oneof(
      { weight: 6, arbitrary: fc.constantFrom(...pool).map(pct) },
      { weight: 2, arbitrary: fc.uuid() },
      { weight: 2, arbitrary: fc.constantFrom(...NASTY).map(pct) },
      { weight: 1, arbitrary: fc.constantFrom('%', '%zz', '..', '.', '%2e%2e%2f', 'x%00y', '%ff%fe', 'a/b', '%E0%A4%A') },
      { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 30 }).map(pct) },
    );
    return fc.constantFrom(...routes).chain((route) => fc.record({
      method: fc.oneof({ weight: 8, arbitrary: fc.constant(route.method) }, { weight: 1, arbitrary: fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS', 'TRACE', 'PROPFIND') }),
      path: fc.tuple(idArb, idArb).map(([id, id2]) => route.path.replace('{id}', id).replace('{driveId}', id2)),
      suffix: fc.oneof({ weight: 9, arbitrary: fc.constant('') }, { weight: 1, arbitrary: fc.constantFrom('/', '/..', '//x', '/%2e%2e/tenants', '#frag', ';x=1') }),
      query,
      body: fc.oneof(
        { weight: GOOD_BODIES[`${route.method} ${route.path}`] ? 4 : 0, arbitrary: goodBody(route, names, refs) },
        { weight: route.schema ? 8 : 1, arbitrary: fromSchema(doc, route.schema, names, refs).map((v) => JSON.stringify(v) ?? 'null') },
        { weight: 2, arbitrary: jsonValue.map((v) => JSON.stringify(v) ?? 'null') },
        { weight: 1, arbitrary: fromSchema(doc, route.schema, names, refs).chain((v) => { const t = JSON.stringify(v) ?? 'null'; return fc.nat(t.length).map((n) => t.slice(0, n)); }) },
        { weight: 1, arbitrary: deep },
        { weight: 1, arbitrary: fc.constantFrom('{"name":"' + 'x'.repeat(60_000) + '"}', '{"name":"' + 'y'.repeat(70_000) + '"}', '\u0000\u0001{', '{"a":1,"a":2}', '{"name":"\\ud800"}', 'null', '[]', '""', '{}') },
        { weight: 2, arbitrary: fc.constant(undefined) },
      ),
      contentType,
      auth,
      extra: fc.dictionary(fc.constantFrom('x-forwarded-for', 'x-tenant', 'origin', 'accept', 'accept-encoding', 'x-http-method-override', 'cookie'), fc.stringMatching(/^[\x20-\x7e]{0,60}$/), { maxKeys: 2 }),
    }).map((r) => ({ ...r, route }))).map((r) => {
      const headers: Record<string, string> = { ...r.extra };
      if (r.contentType) headers['content-type'] = r.contentType;
      headers.authorization = r.auth === 'own' ? `Bearer ${caller.token}` : r.auth === 'garbage' ? 'Bearer \u00ff\u00fe' : r.auth === 'basic' ? 'Basic YTpi' : r.auth === 'cap_bad' ? `Bearer cap_${'0'.repeat(64)}` : '';
      if (!headers.authorization) delete headers.authorization;
      const method = r.method;
      const body = method === 'GET' || method === 'HEAD' ? undefined : r.body;
      return { caller, method, path: r.path + r.suffix + r.query, body, headers, route: `${r.route.method} ${r.route.path}` };
    });
  });

  const db = new Database(join(s.dataDir, 'capsule.db'), { readonly: true, fileMustExist: true });
  const counts = () => db.prepare(`SELECT (SELECT count(*) FROM vms) || '/' || (SELECT count(*) FROM volumes) || '/' || (SELECT count(*) FROM tenants) || '/' || (SELECT count(*) FROM tokens) || '/' || (SELECT count(*) FROM vm_drives)`).pluck().get() as string;
  const secretsOf = (f: Fixture) => [f.tenantId, ...f.vmIds, ...f.vmNames, ...f.volumeIds, ...f.volumeNames, ...f.tokenIds];

  const statuses = new Map<number, number>();
  const perRoute = new Map<string, number>();
  let sent = 0;
  let refusedWrites = 0;
  let fiveXx = 0;
  let headResets = 0;
  const t0 = Date.now();
  const failures: string[] = [];
  try {
    await fc.assert(fc.asyncProperty(reqArb, async (r) => {
      const before = r.method === 'GET' || r.method === 'HEAD' ? undefined : counts();
      const res = await send(r);
      sent++;
      if (res.reset) headResets++;
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      perRoute.set(r.route, (perRoute.get(r.route) ?? 0) + 1);
      const what = `seed ${SEED}: ${r.caller.label} ${r.method} ${r.path.slice(0, 300)} body ${String(r.body ?? '').slice(0, 300)} → ${res.status} ${res.text.slice(0, 300)}`;
      if (res.status >= 500) fiveXx++;
      assert.ok(res.status < 500, what);
      if (res.status >= 400 && res.status < 500) {
        if (before !== undefined) {
          refusedWrites++;
          assert.equal(counts(), before, `a refused request changed rows: ${what}`);
        }
        if (res.status !== 401 && res.text !== '' && r.method !== 'HEAD') assert.match(res.text, /^\{"error":\{"code":"[a-z_]+","message":/, `error shape: ${what}`);
      }
      if (r.caller.tenant !== 'admin' && r.headers.authorization === `Bearer ${r.caller.token}`) {
        const other = fx[r.caller.tenant === 'a' ? 'b' : 'a'];
        const asked = decodeURIComponentSafe(r.path) + String(r.body ?? '');
        for (const secret of secretsOf(other)) {
          if (asked.includes(secret)) {
            // A probe of the other tenant's resource by path must not succeed.
            if (decodeURIComponentSafe(r.path.split('?')[0]!).includes(secret)) assert.ok(res.status >= 400, `a probe succeeded: ${what}`);
            continue;
          }
          assert.ok(!res.text.includes(secret), `cross-tenant leak of ${secret}: ${what}`);
        }
      }
    }), { seed: SEED, numRuns: RUNS, endOnFailure: true });
  } catch (e) {
    const cause = (e as Error & { cause?: Error }).cause;
    failures.push(((cause?.message ?? '') + '\n' + (e as Error).message).slice(0, 3000));
    if (cause) console.error(`cause: ${cause.message}`);
    console.error(`API fuzz failed: replay with FUZZ_SEED=${SEED}`);
    throw e;
  } finally {
    const durationS = (Date.now() - t0) / 1000;
    const health = await fetch(`${s.url}/v1/health`).then((res) => res.status, () => 0);
    const integrity = db.pragma('integrity_check', { simple: true });
    db.close();
    writeFigures('api-fuzz', {
      seed: SEED, requests: sent, routes: routes.length, routesHit: perRoute.size, callers: callers.map((c) => c.label),
      statuses: Object.fromEntries([...statuses].sort(([x], [y]) => x - y)), fiveXx, oversizedHeadResets: headResets, refusedWritesRowChecked: refusedWrites,
      durationS, requestsPerS: Math.round(sent / durationS), healthAfter: health, integrityCheck: integrity, failures,
    });
    assert.equal(health, 200, 'the server is alive');
    assert.equal(integrity, 'ok');
  }
  assert.ok(sent >= RUNS, `requests: ${sent}`);
  assert.equal(perRoute.size, routes.length, `every route was hit: ${routes.filter((r) => !perRoute.has(`${r.method} ${r.path}`)).map((r) => `${r.method} ${r.path}`)}`);
  assert.doesNotMatch(s.output, /"msg":"unhandled (error|promise rejection)"/);
});

/** Percent-encodes the UTF-8 bytes of `s` (encodeURIComponent throws on a lone surrogate). */
function pct(s: string): string {
  return [...Buffer.from(s, 'utf8')].map((b) => (/[A-Za-z0-9_.~-]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).padStart(2, '0').toUpperCase()}`)).join('');
}

function decodeURIComponentSafe(s: string): string {
  try { return decodeURIComponent(s); } catch { return s; }
}
