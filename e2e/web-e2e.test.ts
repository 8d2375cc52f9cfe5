// End-to-end: the web UI in headless Chromium against the REAL capsule server
// (dist/server/main.js) booting the default guest image under QEMU. Slow (guest boot under
// TCG); skipped with a note when the server is not built or no image can be built.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { Browser, Page } from 'playwright-core';
import { CHROMIUM, ROOT, launch, newContext, shot, signIn, waitForConsole, watchErrors } from './browser.js';
import { buildImage } from '../server/images/registry.js';
import { TestServer } from '../server/test/harness.js';

const SERVER = join(ROOT, 'dist', 'server', 'main.js');
const IMAGES = process.env['CAPSULE_TEST_IMAGES'] ?? '/tmp/capsule-test-images';
const BOOT_MS = Number(process.env['CAPSULE_E2E_BOOT_MS'] ?? 180_000);

function prerequisites(): string | false {
  if (!existsSync(SERVER)) return 'dist/server/main.js not built (server not there yet)';
  if (!existsSync(join(ROOT, 'dist', 'web', 'app.js'))) return 'dist/web not built';
  if (!existsSync(CHROMIUM)) return `no ${CHROMIUM}`;
  return false;
}
let skip = prerequisites();

let proc: ChildProcess | undefined;
let dataDir = '';
let base = '';
let token = '';
let browser: Browser | undefined;
const created: string[] = [];

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

let port = 0;
const LOG = join(ROOT, 'test-output', 'web-e2e-server.log');

/** Spawns the server (again) on `port` with the test's data dir; resolves once it answers. */
async function startServer(): Promise<void> {
  mkdirSync(dirname(LOG), { recursive: true });
  const log = createWriteStream(LOG, { flags: 'a' });
  proc = spawn(process.execPath, [SERVER], {
    cwd: ROOT,
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', CAPSULE_DATA_DIR: dataDir, CAPSULE_IMAGES_DIR: IMAGES },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stdout!.pipe(log);
  proc.stderr!.pipe(log);
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}; see ${LOG}`);
    try {
      const r = await fetch(base + '/v1/health');
      if (r.ok && existsSync(join(dataDir, 'admin-token'))) return;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) throw new Error(`server did not answer /v1/health in 60 s; see ${LOG}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function stopServer(): Promise<void> {
  if (!proc || proc.exitCode !== null) return;
  const p = proc;
  p.kill('SIGTERM');
  const exited = await Promise.race([
    new Promise((r) => p.once('exit', () => r(true))),
    new Promise((r) => setTimeout(() => r(false), 15_000)),
  ]);
  if (!exited) p.kill('SIGKILL');
}

async function api(method: string, path: string, body?: unknown): Promise<Response> {
  return fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
}

before(async () => {
  if (skip) return;
  const imageDir = join(IMAGES, 'default');
  if (!existsSync(join(imageDir, 'image.json'))) {
    mkdirSync(IMAGES, { recursive: true });
    const r = spawnSync('bash', [join(ROOT, 'scripts', 'build-image.sh'), imageDir], { stdio: 'inherit' });
    if (r.status !== 0) {
      skip = 'the default guest image could not be built (scripts/build-image.sh failed)';
      return;
    }
  }
  dataDir = mkdtempSync(join(tmpdir(), 'capsule-web-e2e-'));
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  await startServer();
  token = readFileSync(join(dataDir, 'admin-token'), 'utf8').trim();
  browser = await launch();
});

after(async () => {
  await browser?.close().catch(() => undefined);
  if (proc && proc.exitCode === null) {
    for (const id of created) {
      const r = await api('DELETE', `/v1/vms/${id}?force=true`).catch((e: Error) => e);
      if (r instanceof Error || r.status !== 204) console.error(`cleanup: DELETE ${id}: ${r instanceof Error ? r.message : r.status}`);
    }
    await stopServer();
  }
  // The server leaves VMMs running on SIGTERM (by design): kill any this test started.
  if (dataDir) {
    const vmsDir = join(dataDir, 'vms');
    for (const d of existsSync(vmsDir) ? readdirSync(vmsDir) : []) {
      try {
        const pid = Number(readFileSync(join(vmsDir, d, 'vmm.pid'), 'utf8').trim());
        if (pid > 1) process.kill(pid, 'SIGKILL');
      } catch {
        /* no pidfile or already gone */
      }
    }
    rmSync(dataDir, { recursive: true, force: true });
  }
});

async function open(opts: { phone?: boolean; dark?: boolean } = {}): Promise<{ page: Page; errors: string[] }> {
  const ctx = await newContext(browser!, opts);
  const page = await ctx.newPage();
  page.setDefaultTimeout(30_000);
  return { page, errors: watchErrors(page) };
}

const btn = (p: Page, a: string) => p.locator(`main .page-head button[data-action="${a}"]`);
const stateIs = (p: Page, s: string, timeout = 60_000) => p.locator(`main[data-state="${s}"]`).waitFor({ timeout });
const eventShown = (p: Page, ev: string, timeout = 60_000) => p.locator(`.events li[data-event="${ev}"]`).first().waitFor({ timeout });

test('bad token: a clear message, no crash', { skip, timeout: 60_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  const { page, errors } = await open();
  await page.goto(base + '/');
  await page.getByLabel('API token').waitFor();
  await shot(page, 'signin');
  await page.getByLabel('API token').fill('wrong-' + randomBytes(4).toString('hex'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('That token was not accepted').waitFor();
  await shot(page, 'signin-bad-token');
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  assert.deepEqual(errors, []);
  await page.context().close();
});

test('VM lifecycle through the UI, watched by a second browser context', { skip, timeout: 600_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  const name = `e2e-${randomBytes(3).toString('hex')}`;
  const word = `hello-${randomBytes(4).toString('hex')}`;
  const { page: a, errors: errorsA } = await open();
  const { page: b, errors: errorsB } = await open();
  await signIn(a, base, token);
  await signIn(b, base, token);
  await shot(a, 'list-empty');

  t.diagnostic('create: a validation error first');
  await a.getByRole('link', { name: 'New VM' }).click();
  await a.getByLabel('Name').fill(name);
  await a.getByLabel('vCPUs').fill('0');
  await a.getByRole('button', { name: 'Create VM' }).click();
  const vcpuErr = a.locator('[data-field-error="vcpus"]');
  await vcpuErr.filter({ hasText: /vcpus/i }).waitFor();
  assert.equal(await a.getByLabel('vCPUs').getAttribute('aria-invalid'), 'true');
  await shot(a, 'create-validation-error');
  await a.getByLabel('vCPUs').fill('1');
  await a.getByLabel('Memory (MiB)').fill('256');
  await a.getByRole('button', { name: 'Create VM' }).click();
  await a.getByRole('heading', { name }).waitFor();
  await stateIs(a, 'created');
  const id = decodeURIComponent(new URL(a.url()).hash.replace('#/vms/', ''));
  created.push(id);

  t.diagnostic('second context follows via the list');
  const rowB = b.locator(`tr[data-vm-name="${name}"]`);
  await rowB.waitFor();
  await shot(b, 'list');
  await rowB.getByRole('link', { name }).click();
  await b.getByRole('heading', { name }).waitFor();

  t.diagnostic('start: console shows the ready marker');
  assert.ok(await btn(a, 'pause').isDisabled());
  await btn(a, 'start').click();
  await stateIs(a, 'running', BOOT_MS);
  await stateIs(b, 'running', BOOT_MS);
  await waitForConsole(a, /CAPSULE_READY cpus=1/, BOOT_MS);
  await waitForConsole(a, /capsule# /, 60_000);
  assert.ok(await btn(a, 'start').isDisabled());

  t.diagnostic('type into the console');
  await a.locator('.console-screen').click();
  await a.keyboard.type(`echo ${word}`);
  await a.keyboard.press('Enter');
  await waitForConsole(a, new RegExp(`^${word}\\s*$`, 'm'), 60_000);
  await waitForConsole(b, new RegExp(`^${word}\\s*$`, 'm'), 30_000);
  await shot(a, 'detail-console');

  t.diagnostic('phone width, dark mode');
  {
    const { page: p, errors } = await open({ phone: true, dark: true });
    await signIn(p, base, token);
    await p.locator(`tr[data-vm-name="${name}"]`).waitFor();
    await shot(p, 'phone-dark-list');
    await p.locator(`tr[data-vm-name="${name}"]`).getByRole('link', { name }).click();
    await p.locator('.console-screen .xterm-rows').waitFor();
    await p.waitForTimeout(1000);
    await shot(p, 'phone-dark-detail');
    const overflow = await p.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
    assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
    assert.deepEqual(errors, []);
    await p.context().close();
  }

  t.diagnostic('pause / resume');
  await btn(a, 'pause').click();
  await stateIs(a, 'paused');
  await eventShown(a, 'STOP');
  await eventShown(b, 'STOP');
  await stateIs(b, 'paused');
  assert.ok(await btn(a, 'resume').isEnabled());
  assert.ok(await btn(a, 'pause').isDisabled());
  await btn(a, 'resume').click();
  await stateIs(a, 'running');
  await eventShown(a, 'RESUME');
  await eventShown(b, 'RESUME');

  t.diagnostic('stop');
  await btn(a, 'stop').click();
  await eventShown(a, 'SHUTDOWN', 120_000);
  await eventShown(b, 'SHUTDOWN', 30_000);
  await stateIs(a, 'stopped', 120_000);
  await stateIs(b, 'stopped', 30_000);
  await shot(a, 'detail-stopped');
  assert.ok(await btn(a, 'start').isEnabled());

  t.diagnostic('start again: the console reconnects to the new boot');
  await a.getByRole('button', { name: 'Clear' }).click();
  await btn(a, 'start').click();
  await stateIs(a, 'running', BOOT_MS);
  await waitForConsole(a, /CAPSULE_READY cpus=1/, BOOT_MS);

  t.diagnostic('reboot');
  await waitForConsole(a, /capsule# /, 60_000);
  await a.getByRole('button', { name: 'Clear' }).click();
  await btn(a, 'reboot').click();
  await waitForConsole(a, /CAPSULE_READY cpus=1/, BOOT_MS);
  await stateIs(a, 'running', BOOT_MS);

  t.diagnostic('force stop (two clicks)');
  await btn(a, 'forceStop').click();
  await btn(a, 'forceStop').getByText('Confirm force stop').waitFor();
  await btn(a, 'forceStop').click();
  await stateIs(a, 'stopped', 60_000);
  await stateIs(b, 'stopped', 30_000);

  t.diagnostic('delete');
  await btn(a, 'delete').click();
  await btn(a, 'delete').getByText('Confirm delete').waitFor();
  await btn(a, 'delete').click();
  await a.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  await a.locator(`tr[data-vm-name="${name}"]`).waitFor({ state: 'detached' });
  await b.getByText('This VM was deleted.').waitFor();
  await b.getByRole('link', { name: '← All VMs' }).click();
  await b.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  assert.equal(await b.locator(`tr[data-vm-name="${name}"]`).count(), 0);
  const r = await api('GET', `/v1/vms/${id}`);
  assert.equal(r.status, 404);
  created.splice(created.indexOf(id), 1);

  assert.deepEqual(errorsA, []);
  assert.deepEqual(errorsB, []);
  await a.context().close();
  await b.context().close();
});

test('start and type at once: the keystrokes go out on the console once it attaches, and no WebSocket handshake fails', { skip, timeout: 600_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  const name = `typist-${randomBytes(3).toString('hex')}`;
  const early = `early-${randomBytes(4).toString('hex')}`;
  const later = `later-${randomBytes(4).toString('hex')}`;
  const r = await api('POST', '/v1/vms', { name, image: 'default', vcpus: 1, memoryMiB: 256 });
  assert.equal(r.status, 201);
  const { id } = (await r.json()) as { id: string };
  created.push(id);
  const { page, errors } = await open();
  // Every console message and socket failure, unfiltered (watchErrors lets WebSocket noise
  // through): a console opened too early logs a failed handshake (409). And what the page
  // sends on console sockets: the keystrokes, as the server receives them.
  const consoleMessages: string[] = [];
  const socketFailures: string[] = [];
  let consoleSockets = 0;
  let sentOnConsole = '';
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') consoleMessages.push(`${m.type()}: ${m.text()}`); });
  page.on('websocket', (ws) => {
    ws.on('socketerror', (e) => socketFailures.push(`${ws.url()}: ${e}`));
    if (!/\/console(\?|$)/.test(new URL(ws.url()).pathname + '?')) return;
    consoleSockets++;
    ws.on('framesent', (f) => { sentOnConsole += typeof f.payload === 'string' ? f.payload : f.payload.toString('utf8'); });
  });
  // A VM can be running before a test finishes typing (on a fast machine it was). So what tells
  // the page that it runs, the start call's answer and the global event stream's `running`
  // (which drives the page's state), is held back until the keystrokes are typed, then let
  // through in order; `starting` goes through, so the page types into a console that waits.
  let holding = false;
  let releaseHeld!: () => void;
  const held = new Promise<void>((resolve) => { releaseHeld = resolve; });
  await page.route(`**/v1/vms/${id}/start`, async (route) => {
    const answer = await route.fetch({ timeout: 0 });
    await held;
    await route.fulfill({ response: answer });
  });
  const saysRunning = (m: string | Buffer): boolean => {
    try {
      const ev = JSON.parse(String(m)) as { vm?: string; event?: string; data?: { state?: string } };
      return ev.vm === id && ev.event === 'STATE_CHANGED' && ev.data?.state === 'running';
    } catch {
      return false;
    }
  };
  await page.routeWebSocket(/\/v1\/events(\?|$)/, (ws) => {
    const server = ws.connectToServer();
    const queued: Array<string | Buffer> = [];
    server.onMessage((m) => {
      // once `running` is held, everything after it waits too (the order stays the server's)
      if (holding && (queued.length > 0 || saysRunning(m))) queued.push(m);
      else ws.send(m);
    });
    void held.then(() => { for (const m of queued.splice(0)) ws.send(m); });
  });
  await signIn(page, base, token);
  await page.locator(`tr[data-vm-name="${name}"]`).getByRole('link', { name }).click();
  await page.getByRole('heading', { name }).waitFor();
  await stateIs(page, 'created');

  t.diagnostic('start, then type while the page shows it starting');
  holding = true;
  await btn(page, 'start').click();
  await stateIs(page, 'starting', 60_000);
  await page.locator('.console-screen').click();
  await page.keyboard.type(`echo ${early}`);
  await page.keyboard.press('Enter');
  const stateWhenTyped = await page.locator('main').getAttribute('data-state');
  const consoleWhenTyped = await page.locator('.console').getAttribute('data-status');
  t.diagnostic(`typed while the page showed ${stateWhenTyped}, console ${consoleWhenTyped}`);
  assert.equal(stateWhenTyped, 'starting');
  assert.equal(consoleWhenTyped, 'waiting', 'the console waits for running (no socket opened while starting)');
  holding = false;
  releaseHeld();
  await stateIs(page, 'running', BOOT_MS);
  await page.locator('.console[data-status="connected"]').waitFor({ timeout: 30_000 });
  // Sent once the console attached, in order, nothing lost on the way to the server. (Whether
  // the guest keeps bytes that reach its UART before its console is open is the guest's
  // affair: a Linux 8250 resets its FIFO at start-up, so this test does not ask the guest.)
  await waitForValue(() => sentOnConsole.includes(`echo ${early}\r`), 10_000);
  assert.equal(consoleSockets, 1, 'one console socket: none opened (and refused) while starting');

  t.diagnostic('the console is live: a command typed at the prompt runs');
  await waitForConsole(page, /CAPSULE_READY cpus=1/, BOOT_MS);
  await waitForConsole(page, /capsule# /, 60_000);
  await page.keyboard.type(`echo ${later}`);
  await page.keyboard.press('Enter');
  await waitForConsole(page, new RegExp(`^${later}\\s*$`, 'm'), 60_000);
  t.diagnostic(`the guest ${(await page.locator('.console-screen .xterm-rows').innerText()).includes(early) ? 'also echoed' : 'did not keep'} the keystrokes typed while it booted`);
  await shot(page, 'console-typed-at-start');

  assert.deepEqual(consoleMessages.filter((m) => /WebSocket|409/.test(m)), [], 'no failed WebSocket handshake logged');
  assert.deepEqual(socketFailures, []);
  assert.deepEqual(errors, []);
  assert.equal((await api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
  created.splice(created.indexOf(id), 1);
  await page.context().close();
});

async function waitForValue(ok: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('the list resumes (?since=) after the server restarts', { skip, timeout: 120_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  const { page, errors } = await open();
  const sockets: string[] = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await signIn(page, base, token);
  await page.locator('.stream.open').waitFor();
  // One event seen first, so the client has a seq to resume from.
  const anchorName = `anchor-${randomBytes(3).toString('hex')}`;
  const ra = await api('POST', '/v1/vms', { name: anchorName, image: 'default', vcpus: 1, memoryMiB: 256 });
  const anchor = (await ra.json()) as { id: string };
  created.push(anchor.id);
  await page.locator(`tr[data-vm-name="${anchorName}"]`).waitFor();
  await stopServer();
  await page.locator('.stream.reconnecting').waitFor();
  await startServer();
  const name = `away-${randomBytes(3).toString('hex')}`;
  const r = await api('POST', '/v1/vms', { name, image: 'default', vcpus: 1, memoryMiB: 256 });
  assert.equal(r.status, 201);
  const vm = (await r.json()) as { id: string };
  created.push(vm.id);
  await page.locator(`tr[data-vm-name="${name}"]`).waitFor({ timeout: 60_000 });
  await page.locator('.stream.open').waitFor({ timeout: 60_000 });
  assert.ok(sockets.some((u) => /\/v1\/events\?since=\d+/.test(u)), `a reconnect used ?since=: ${sockets.length} sockets`);
  assert.equal((await api('DELETE', `/v1/vms/${vm.id}`)).status, 204);
  created.splice(created.indexOf(vm.id), 1);
  await page.locator(`tr[data-vm-name="${name}"]`).waitFor({ state: 'detached' });
  assert.equal((await api('DELETE', `/v1/vms/${anchor.id}`)).status, 204);
  created.splice(created.indexOf(anchor.id), 1);
  assert.deepEqual(errors, []);
  await page.context().close();
});

test('volumes: create one in the Volumes view, attach it at VM creation, see and detach it on the VM page', { skip, timeout: 120_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  const { page, errors } = await open();
  await signIn(page, base, token);
  const vol = `vol-${randomBytes(3).toString('hex')}`;
  const name = `drv-${randomBytes(3).toString('hex')}`;

  t.diagnostic('create a volume: a validation error first, then one');
  await page.getByRole('link', { name: 'Volumes' }).first().click();
  await page.getByRole('heading', { name: 'Volumes' }).waitFor();
  await page.getByLabel('Name').fill(vol);
  await page.getByRole('button', { name: 'Create volume' }).click();
  await page.getByRole('alert').filter({ hasText: /sizeMiB/ }).waitFor();
  await page.getByLabel('Size (MiB)').fill('16');
  await page.getByRole('button', { name: 'Create volume' }).click();
  const row = page.locator(`tr[data-volume-name="${vol}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /16 MiB/);
  await shot(page, 'volumes');

  t.diagnostic('a VM with the volume as its drive');
  await page.getByRole('link', { name: 'VMs', exact: true }).click();
  await page.getByRole('link', { name: 'New VM' }).click();
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Drive', { exact: true }).selectOption(vol);
  await page.getByRole('button', { name: 'Create VM' }).click();
  await page.getByRole('heading', { name }).waitFor();
  const id = decodeURIComponent(new URL(page.url()).hash.replace('#/vms/', ''));
  created.push(id);
  const drive = page.locator(`ul.drives li[data-drive-id="drive-0"]`);
  await drive.waitFor();
  assert.match(await drive.innerText(), new RegExp(`${vol}[\\s\\S]*read-write`));
  await shot(page, 'detail-drives');
  const def = (await (await api('GET', `/v1/vms/${id}`)).json()) as { drives: { volumeName: string }[] };
  assert.deepEqual(def.drives.map((d) => d.volumeName), [vol]);

  t.diagnostic('the volume is in use: its delete is refused, with the reason');
  await page.getByRole('link', { name: 'Volumes' }).first().click();
  await row.getByRole('link', { name }).waitFor();
  await row.getByRole('button', { name: `Delete volume ${vol}` }).click();
  await page.getByRole('status').filter({ hasText: /volume_in_use/ }).waitFor();

  t.diagnostic('detach on the VM page, then the volume can go');
  await page.goto(`${base}/#/vms/${encodeURIComponent(id)}`);
  await page.getByRole('button', { name: `Detach drive-0 (${vol})` }).click();
  await page.locator('ul.drives li[data-drive-id]').first().waitFor({ state: 'detached' });
  assert.deepEqual(((await (await api('GET', `/v1/vms/${id}`)).json()) as { drives: unknown[] }).drives, []);
  await page.getByRole('link', { name: 'Volumes' }).first().click();
  await row.getByRole('button', { name: `Delete volume ${vol}` }).click();
  await row.waitFor({ state: 'detached' });
  assert.equal((await api('DELETE', `/v1/vms/${id}`)).status, 204);
  created.splice(created.indexOf(id), 1);
  assert.deepEqual(errors, []);
  await page.context().close();
});

/** A wait on the Templates page that timed out, with what the page and the server said (CI keeps only the test output). */
async function templateWaitFailed(page: Page, e: Error): Promise<never> {
  const status = await page.getByRole('status').allInnerTexts().catch(() => []);
  const log = readFileSync(LOG, 'utf8').split('\n').filter((l) => /pool|template|launch|restore|snapshot/i.test(l)).slice(-15);
  throw new Error(`${e.message}\nstatus: ${JSON.stringify(status)}\nserver log (pool/template lines):\n${log.join('\n')}`);
}

// Four waits of up to BOOT_MS each (build, pool fill, refill, delete): the test's own limit covers them.
test('templates: create one in the Templates view, watch its build progress to ready and its pool fill, start a VM of it from the pool', { skip, timeout: 4 * BOOT_MS + 120_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  const { page, errors } = await open();
  await signIn(page, base, token);
  const name = `tpl-${randomBytes(3).toString('hex')}`;
  await page.getByRole('link', { name: 'Templates' }).first().click();
  await page.getByRole('heading', { name: 'Templates' }).waitFor();

  t.diagnostic('a validation error first (the API\'s), then a template of the default image with a pool of 1');
  await page.getByLabel('Name').fill('_bad');
  await page.getByRole('button', { name: 'Create template' }).click();
  await page.getByRole('alert').filter({ hasText: /name/ }).waitFor();
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Image').selectOption('default');
  await page.getByLabel('Pool size').fill('1');
  await page.getByRole('button', { name: 'Create template' }).click();
  const row = page.locator(`tr[data-template-name="${name}"]`);
  // The build's progress bar, moved on by the TEMPLATE_PROGRESS events.
  await row.locator('progress[aria-label^="Building"]').waitFor();
  await shot(page, 'template-building');
  await row.locator('.state-running').waitFor({ timeout: BOOT_MS });
  await row.filter({ hasText: '1 of 1 ready' }).waitFor({ timeout: BOOT_MS });
  await shot(page, 'template-ready');

  t.diagnostic('Start VM: a pool VM, shown running on its page');
  await row.getByRole('button', { name: `Start a VM of template ${name}` }).click();
  await page.getByRole('heading', { name: new RegExp(`^${name}-`) }).waitFor();
  const id = decodeURIComponent(new URL(page.url()).hash.replace('#/vms/', ''));
  created.push(id);
  const vm = (await (await api('GET', `/v1/vms/${id}`)).json()) as { state: string; template: string };
  assert.equal(vm.state, 'running');
  assert.ok(vm.template);
  // The pool's own VMs never appear in the VM list.
  await page.getByRole('link', { name: 'VMs', exact: true }).click();
  await page.locator('table.vms').waitFor();
  assert.equal(await page.locator('tr', { hasText: '_pool.' }).count(), 0);

  t.diagnostic('the claim refilled the pool: 1 of 1 ready again');
  await page.getByRole('link', { name: 'Templates' }).first().click();
  // Also what keeps the click below on a stable row: the table re-renders when the refilled VM
  // is announced, and a click that lands during a re-render hits a row that is being replaced.
  await row.filter({ hasText: '1 of 1 ready' }).waitFor({ timeout: BOOT_MS }).catch((e: Error) => templateWaitFailed(page, e));

  t.diagnostic('delete the template: the row goes; the VM made from it runs on');
  await row.getByRole('button', { name: `Delete template ${name}` }).click();
  await row.waitFor({ state: 'detached', timeout: BOOT_MS }).catch((e: Error) => templateWaitFailed(page, e));
  assert.equal(((await (await api('GET', `/v1/vms/${id}`)).json()) as { state: string }).state, 'running');
  assert.equal((await api('DELETE', `/v1/vms/${id}?force=true`)).status, 204);
  created.splice(created.indexOf(id), 1);
  assert.deepEqual(errors, []);
  await page.context().close();
});

test('tenants: the header shows tenant and scope; an admin filters VMs by tenant, makes a token (secret shown once) and revokes it', { skip, timeout: 120_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  const suffix = randomBytes(3).toString('hex');
  const tenant = `e2e-${suffix}`;
  assert.equal((await api('POST', '/v1/tenants', { name: tenant })).status, 201);
  const writer = (await (await api('POST', '/v1/tokens', { tenant, name: 'writer', scope: 'write' })).json()) as { token: string };
  const theirs = await fetch(base + '/v1/vms', {
    method: 'POST', headers: { Authorization: `Bearer ${writer.token}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: `t-vm-${suffix}`, memoryMiB: 128 }),
  });
  assert.equal(theirs.status, 201);
  const mine = await api('POST', '/v1/vms', { name: `a-vm-${suffix}`, memoryMiB: 128 });
  assert.equal(mine.status, 201);

  const { page, errors } = await open();
  await signIn(page, base, token);
  await page.locator('.whoami').filter({ hasText: 'default · admin' }).waitFor();
  t.diagnostic('the tenant filter narrows the list');
  const rowOf = (name: string) => page.locator(`tr[data-vm-name="${name}"]`);
  await rowOf(`t-vm-${suffix}`).waitFor();
  await rowOf(`a-vm-${suffix}`).waitFor();
  await page.getByLabel('Tenant').selectOption({ label: tenant });
  await rowOf(`a-vm-${suffix}`).waitFor({ state: 'detached' });
  assert.equal(await rowOf(`t-vm-${suffix}`).count(), 1);
  await shot(page, 'list-tenant-filter');

  t.diagnostic('a token for the tenant: the secret once, then revoked');
  await page.getByRole('link', { name: 'Tokens' }).click();
  await page.getByRole('heading', { name: 'API tokens' }).waitFor();
  await page.getByLabel('Name').fill(`ci-${suffix}`);
  await page.getByLabel('Tenant').selectOption({ label: tenant });
  await page.getByLabel('Scope').selectOption('read');
  await page.getByRole('button', { name: 'Create token' }).click();
  // The output is in the page (empty, hidden) before the create returns: wait for its text.
  const secretOut = page.locator('output.secret', { hasText: /^cap_/ });
  await secretOut.waitFor();
  const secret = (await secretOut.innerText()).trim();
  assert.match(secret, /^cap_[0-9a-f]{64}$/);
  const who = (await (await fetch(base + '/v1/whoami', { headers: { Authorization: `Bearer ${secret}` } })).json()) as { scope: string; tenant: { name: string } };
  assert.deepEqual([who.scope, who.tenant.name], ['read', tenant]);
  const row = page.locator(`tr[data-token-name="ci-${suffix}"]`);
  await row.waitFor();
  assert.ok(!(await page.locator('table.tokens').innerText()).includes(secret), 'the list never shows the secret');
  await shot(page, 'tokens');
  await row.getByRole('button', { name: `Revoke token ci-${suffix}` }).click();
  await row.waitFor({ state: 'detached' });
  assert.equal((await fetch(base + '/v1/whoami', { headers: { Authorization: `Bearer ${secret}` } })).status, 401);
  assert.equal((await api('DELETE', `/v1/tenants/${tenant}?force=true`)).status, 204);
  assert.equal((await api('DELETE', `/v1/vms/${((await mine.json()) as { id: string }).id}`)).status, 204);
  assert.deepEqual(errors, []);
  await page.context().close();
});

test('sandbox VM: the Exec box streams a command (stderr apart, exit code, stdin, Stop) and the Files tab uploads, downloads, makes a folder and deletes', { skip, timeout: 600_000 }, async (t) => {
  if (skip) return t.skip(String(skip));
  buildImage(IMAGES, 'sandbox', 'ignore'); // cached
  // A server of its own, as deployed: the VM on its own network, the agent reached through it.
  const srv = await TestServer.start({ env: { CAPSULE_NETWORK: 'on', CAPSULE_NET_POOL: `10.${204 + (process.pid % 20)}.0.0/24` } });
  const { page, errors } = await open();
  try {
    const name = `sbx-${randomBytes(3).toString('hex')}`;
    const made = await srv.api('POST', '/v1/vms', { name, image: 'sandbox', memoryMiB: 512, hypervisor: 'qemu', timeoutSec: 3600, metadata: { purpose: 'e2e' } });
    assert.equal(made.status, 201, JSON.stringify(made.body));
    const id = made.body.id as string;
    assert.equal((await srv.api('POST', `/v1/vms/${id}/start`)).status, 200);
    await signIn(page, srv.url, srv.token);
    await page.locator(`tr[data-vm-name="${name}"]`).getByRole('link', { name }).click();
    await page.getByRole('heading', { name }).waitFor();

    t.diagnostic('the tabs appear once the guest agent answers');
    const t0 = Date.now();
    await page.getByRole('tab', { name: 'Exec' }).waitFor({ timeout: BOOT_MS });
    t.diagnostic(`agent seen by the page ${Date.now() - t0} ms after it opened`);
    assert.equal(await page.getByRole('tab', { name: 'Console' }).getAttribute('aria-selected'), 'true');
    assert.match(await page.locator('.facts').innerText(), /capsule-agent/);
    assert.match(await page.locator('.facts').innerText(), /guest \d+\.\d+\.\d+\.\d+/, 'the guest address is shown');
    assert.match(await page.locator('.facts').innerText(), /3600 s from each start, then stop; ends /, 'the TTL and its deadline');
    assert.match(await page.locator('.facts').innerText(), /purpose=e2e/);

    const execBox = page.locator('section.exec');
    const filesTab = page.locator('section.files-panel');
    t.diagnostic('exec: stdout and stderr apart, exit code 4');
    await page.getByRole('tab', { name: 'Exec' }).click();
    await page.getByLabel('Command', { exact: true }).fill('echo hello; echo oops >&2; exit 4');
    await execBox.getByRole('button', { name: 'Run', exact: true }).click();
    await page.locator('.exec[data-exit-code="4"]').waitFor({ timeout: 60_000 });
    const out = page.getByRole('log', { name: 'Command output' });
    assert.equal(await out.innerText(), 'hello\noops\n');
    assert.equal(await out.locator('.stderr').innerText(), 'oops\n');
    assert.equal(await out.locator('.stdout').innerText(), 'hello\n');
    assert.match(await page.locator('.exec-status').innerText(), /^Exit code 4/);
    await shot(page, 'sandbox-exec');

    t.diagnostic('exec: a line of stdin');
    await page.getByLabel('Command', { exact: true }).fill('read x; echo "got $x"');
    await execBox.getByRole('button', { name: 'Run', exact: true }).click();
    await page.getByLabel('Input line').fill('abc');
    await execBox.getByRole('button', { name: 'Send line', exact: true }).click();
    await page.locator('.exec[data-exit-code="0"]').waitFor({ timeout: 60_000 });
    assert.equal(await out.innerText(), 'got abc\n');

    t.diagnostic('exec: Stop interrupts a long command');
    await page.getByLabel('Command', { exact: true }).fill('echo started; sleep 300');
    await execBox.getByRole('button', { name: 'Run', exact: true }).click();
    await out.getByText('started').waitFor({ timeout: 60_000 });
    await execBox.getByRole('button', { name: 'Stop', exact: true }).click();
    await page.locator('.exec[data-exit-code]').waitFor({ timeout: 30_000 });
    assert.match(await page.locator('.exec-status').innerText(), /SIGINT|Exit code 130/);

    t.diagnostic('files: the home folder, an upload');
    await page.getByRole('tab', { name: 'Files' }).click();
    await page.getByRole('status').filter({ hasText: /items? in \/home\/user/ }).waitFor();
    assert.equal(await page.getByLabel('Path', { exact: true }).inputValue(), '/home/user');
    const bytes = Buffer.concat([Buffer.from('capsule web upload\n'), randomBytes(3000), Buffer.from([0, 0xff, 0xfe])]);
    await page.getByLabel('Upload to this folder').setInputFiles({ name: 'note.bin', mimeType: 'application/octet-stream', buffer: bytes });
    await filesTab.getByRole('button', { name: 'Upload', exact: true }).click();
    const row = page.locator('tr[data-file-name="note.bin"]');
    await row.waitFor();
    assert.match(await row.innerText(), /file[\s\S]*3\.0 KiB/);
    const inGuest = await srv.api('POST', `/v1/vms/${id}/exec`, { shell: 'sha256sum /home/user/note.bin' });
    assert.equal(inGuest.body.stdout.split(' ')[0], createHash('sha256').update(bytes).digest('hex'), 'the guest has the same bytes');

    t.diagnostic('files: download (the same bytes)');
    const [download] = await Promise.all([page.waitForEvent('download'), row.getByRole('button', { name: 'Download note.bin' }).click()]);
    assert.equal(download.suggestedFilename(), 'note.bin');
    const got = readFileSync((await download.path())!);
    assert.ok(got.equals(bytes), `downloaded ${got.length} bytes, uploaded ${bytes.length}`);

    t.diagnostic('files: make a folder, open it, go up');
    await page.getByLabel('New folder').fill('made-by-ui');
    await filesTab.getByRole('button', { name: 'Make folder', exact: true }).click();
    await page.getByRole('button', { name: 'Open folder made-by-ui' }).click();
    await page.locator('.files-panel[data-path="/home/user/made-by-ui"]').waitFor();
    await page.getByText('This folder is empty.').waitFor();
    await page.getByRole('button', { name: 'Up to the parent folder' }).click();
    await page.locator('.files-panel[data-path="/home/user"]').waitFor();
    await shot(page, 'sandbox-files');

    t.diagnostic('phone width, dark mode: the Files tab fits');
    {
      const { page: p, errors: phoneErrors } = await open({ phone: true, dark: true });
      await signIn(p, srv.url, srv.token);
      await p.goto(`${srv.url}/#/vms/${encodeURIComponent(id)}`);
      await p.getByRole('tab', { name: 'Files' }).click();
      await p.locator('tr[data-file-name="note.bin"]').waitFor();
      await shot(p, 'sandbox-files-phone-dark');
      const overflow = await p.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
      assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
      assert.deepEqual(phoneErrors, []);
      await p.context().close();
    }

    t.diagnostic('files: delete asks to confirm');
    await row.getByRole('button', { name: 'Delete note.bin' }).click();
    await row.getByRole('button', { name: 'Confirm delete note.bin' }).click();
    await row.waitFor({ state: 'detached' });
    assert.equal((await srv.api('GET', `/v1/vms/${id}/files?path=/home/user/note.bin`)).status, 404);
    assert.equal((await srv.api('GET', `/v1/vms/${id}/files/stat?path=/home/user/made-by-ui`)).body.type, 'dir');

    t.diagnostic('files: an error shows in the alert');
    await page.getByLabel('Path', { exact: true }).fill('/no/such/dir');
    await filesTab.getByRole('button', { name: 'Go', exact: true }).click();
    await page.locator('.files-panel .form-error').filter({ hasText: /404/ }).waitFor();

    t.diagnostic('ports: a server the guest starts is listed with its proxy URL, which answers');
    const serve = await srv.api('POST', `/v1/vms/${id}/exec`, { shell: 'cd /home/user && setsid nohup python3 -m http.server 8123 >/dev/null 2>&1 </dev/null &' });
    assert.equal(serve.body.exitCode, 0, JSON.stringify(serve.body));
    const card = page.locator('section[aria-labelledby="ports-h"]');
    await card.waitFor();
    const listed = card.locator('li[data-port="8123"]');
    for (let i = 0; i < 60 && !(await listed.count()); i++) {
      await card.getByRole('button', { name: 'Refresh' }).click();
      await page.waitForTimeout(1000);
    }
    const url = (await listed.locator('code.port-url').innerText()).trim();
    assert.equal(url, `${srv.url}/v1/vms/${id}/ports/8123/`);
    const proxied = await fetch(url, { headers: { authorization: `Bearer ${srv.token}` } });
    assert.equal(proxied.status, 200);
    assert.match(await proxied.text(), /made-by-ui/, 'the guest\'s http.server lists the home folder');
    await shot(page, 'sandbox-ports');

    assert.deepEqual(errors, []);
  } finally {
    await page.context().close();
    await srv.stop();
  }
});
