// Fast browser tests of the web UI against an in-memory fake of the API (fake-server.ts):
// sign-in, validation errors, lifecycle buttons, console, event log, reconnect + resume.
// The real-server scenario is in web-e2e.test.ts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { startFakeServer, type FakeServer } from './fake-server.js';
import { CHROMIUM, ROOT, launch, newContext, shot, signIn, waitForConsole, watchErrors } from './browser.js';

const WEB = join(ROOT, 'dist', 'web');
const skip = !existsSync(CHROMIUM) ? `no ${CHROMIUM}` : !existsSync(join(WEB, 'app.js')) ? 'dist/web not built' : false;

let server: FakeServer;
let browser: Browser;

before(async () => {
  if (skip) return;
  server = await startFakeServer({ webDir: WEB, bootMs: 400 });
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await server?.close();
});

async function page(opts: { phone?: boolean; dark?: boolean } = {}): Promise<{ page: Page; errors: string[] }> {
  const ctx = await newContext(browser, opts);
  const p = await ctx.newPage();
  p.setDefaultTimeout(10_000);
  return { page: p, errors: watchErrors(p) };
}

test('a wrong token shows a message and the app keeps working', { skip }, async () => {
  const { page: p, errors } = await page();
  await p.goto(server.url + '/');
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.getByText('Enter an API token.').waitFor();
  await p.getByLabel('API token').fill('not-the-token');
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.getByText('That token was not accepted').waitFor();
  assert.equal(await p.evaluate("sessionStorage.getItem('capsule.token')"), null);
  await shot(p, 'ui-signin-bad-token');
  await p.getByLabel('API token').fill(server.token);
  await p.getByRole('button', { name: 'Sign in' }).click();
  await p.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  assert.equal(await p.evaluate("sessionStorage.getItem('capsule.token')"), server.token);
  // reload keeps the session (sessionStorage), sign out forgets it
  await p.reload();
  await p.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  await p.getByRole('button', { name: 'Sign out' }).click();
  await p.getByRole('heading', { name: 'Sign in to capsule' }).waitFor();
  assert.equal(await p.evaluate("sessionStorage.getItem('capsule.token')"), null);
  assert.deepEqual(errors, []);
  await p.context().close();
});

test('create form shows API validation errors beside the field', { skip }, async () => {
  const { page: p, errors } = await page();
  await signIn(p, server.url, server.token);
  await p.getByRole('link', { name: 'New VM' }).click();
  await p.getByLabel('Name').fill('ui-valid');
  await p.getByLabel('vCPUs').fill('99');
  await p.getByRole('button', { name: 'Create VM' }).click();
  const err = p.locator('[data-field-error="vcpus"]');
  await err.getByText('vcpus must be').waitFor();
  assert.equal(await p.getByLabel('vCPUs').getAttribute('aria-invalid'), 'true');
  assert.equal(await p.evaluate('document.activeElement.name'), 'vcpus');
  await p.getByLabel('vCPUs').fill('2');
  await p.getByLabel('Name').fill('bad name!');
  await p.getByRole('button', { name: 'Create VM' }).click();
  await p.locator('[data-field-error="name"]').getByText('name must be').waitFor();
  assert.equal(await err.textContent(), '');
  await p.getByLabel('Name').fill('ui-valid');
  await p.getByRole('button', { name: 'Create VM' }).click();
  await p.getByRole('heading', { name: 'ui-valid' }).waitFor();
  assert.equal(await p.locator('main .page-head .state').textContent(), 'created');
  assert.deepEqual(errors, []);
  await p.context().close();
});

test('start and type at once: the console attaches when running, no refused handshake, the keystrokes run', { skip }, async () => {
  const { page: p, errors } = await page();
  const handshakeErrors: string[] = [];
  p.on('console', (m) => { if (/WebSocket|409/.test(m.text())) handshakeErrors.push(`${m.type()}: ${m.text()}`); });
  p.on('websocket', (ws) => ws.on('socketerror', (e) => handshakeErrors.push(`${ws.url()}: ${e}`)));
  await signIn(p, server.url, server.token);
  await p.getByRole('link', { name: 'New VM' }).click();
  await p.getByLabel('Name').fill('ui-typist');
  await p.getByRole('button', { name: 'Create VM' }).click();
  await p.getByRole('heading', { name: 'ui-typist' }).waitFor();
  server.holdBoots(); // the VM stays starting until the typing is done
  try {
    await p.locator('main .page-head button[data-action="start"]').click();
    await p.locator('main[data-state="starting"]').waitFor();
    await p.locator('.console-screen').click();
    await p.keyboard.type('echo typed-ahead\n');
  } finally {
    server.releaseBoots();
  }
  await p.locator('main[data-state="running"]').waitFor();
  await waitForConsole(p, /CAPSULE_READY cpus=1/, 10_000);
  await waitForConsole(p, /\r?\ntyped-ahead/, 5_000);
  assert.deepEqual(handshakeErrors, []);
  assert.deepEqual(errors, []);
  await p.context().close();
});

test('lifecycle: buttons follow the state, console, events, two viewers', { skip }, async () => {
  const { page: p, errors } = await page();
  const { page: q, errors: errors2 } = await page();
  await signIn(p, server.url, server.token);
  await signIn(q, server.url, server.token);
  await p.getByRole('link', { name: 'New VM' }).click();
  await p.getByLabel('Name').fill('ui-life');
  await p.getByRole('button', { name: 'Create VM' }).click();
  await p.getByRole('heading', { name: 'ui-life' }).waitFor();
  // the other viewer's list got it live
  const row = q.locator('tr[data-vm-name="ui-life"]');
  await row.waitFor();
  await row.getByRole('link', { name: 'ui-life' }).click();
  await q.getByRole('heading', { name: 'ui-life' }).waitFor();

  const btn = (pg: Page, a: string) => pg.locator(`main .page-head button[data-action="${a}"]`);
  assert.equal(await btn(p, 'stop').isDisabled(), true);
  assert.equal(await btn(p, 'pause').isDisabled(), true);
  assert.equal(await btn(p, 'start').isEnabled(), true);
  await btn(p, 'start').click();
  await p.locator('main[data-state="running"]').waitFor();
  await q.locator('main[data-state="running"]').waitFor();
  await waitForConsole(p, /CAPSULE_READY cpus=1/, 10_000);
  assert.equal(await btn(p, 'start').isDisabled(), true);
  assert.equal(await btn(p, 'pause').isEnabled(), true);

  await p.locator('.console-screen').click();
  await p.keyboard.type('echo hi-there\n');
  await waitForConsole(p, /\r?\nhi-there/, 5_000);
  await waitForConsole(q, /hi-there/, 5_000); // the second viewer sees the same console
  await shot(p, 'ui-detail-console');

  await btn(p, 'pause').click();
  await p.locator('main[data-state="paused"]').waitFor();
  await p.locator('.events li[data-event="STOP"]').waitFor();
  await q.locator('.events li[data-event="STOP"]').waitFor();
  assert.equal(await btn(p, 'resume').isEnabled(), true);
  await btn(p, 'resume').click();
  await p.locator('.events li[data-event="RESUME"]').waitFor();
  await btn(p, 'stop').click();
  await p.locator('.events li[data-event="SHUTDOWN"]').waitFor();
  await q.locator('.events li[data-event="SHUTDOWN"]').waitFor();
  await p.locator('main[data-state="stopped"]').waitFor();
  // delete needs a confirmation click
  await btn(p, 'delete').click();
  await btn(p, 'delete').getByText('Confirm delete').waitFor();
  await btn(p, 'delete').click();
  await p.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  await p.locator('tr[data-vm-name="ui-life"]').waitFor({ state: 'detached' });
  await q.getByText('This VM was deleted.').waitFor();
  assert.deepEqual(errors, []);
  assert.deepEqual(errors2, []);
  await p.context().close();
  await q.context().close();
});

test('an action refused by the server is shown, not swallowed', { skip }, async () => {
  const { page: p } = await page();
  await signIn(p, server.url, server.token);
  const t = new Date().toISOString();
  server.vms.set('vm-x', { id: 'vm-x', name: 'ui-refuse', state: 'created', image: 'default', hypervisor: 'qemu', vcpus: 1, memoryMiB: 256, createdAt: t, updatedAt: t });
  await p.reload();
  const row = p.locator('tr[data-vm-name="ui-refuse"]');
  await row.waitFor();
  // The server thinks otherwise: it went to "running" without telling anyone.
  server.vms.get('vm-x')!.state = 'running';
  await row.locator('button[data-action="start"]').click();
  await row.getByText(/Start failed: cannot start a VM that is running/).waitFor();
  await p.getByRole('alert').filter({ hasText: 'Start “ui-refuse” failed' }).waitFor();
  server.vms.delete('vm-x');
  await p.context().close();
});

test('a failed list load is shown with a working Retry', { skip }, async () => {
  const { page: p, errors } = await page();
  await signIn(p, server.url, server.token);
  server.failListing(1);
  await p.reload();
  const alert = p.getByRole('alert').filter({ hasText: 'Could not load the VM list: internal server error (500 internal)' }).first();
  await alert.waitFor();
  await p.locator('main').getByRole('button', { name: 'Retry' }).click();
  await p.locator('main').getByRole('button', { name: 'Retry' }).waitFor({ state: 'hidden' });
  assert.equal(await p.getByText('Loading…').isVisible(), false);
  assert.deepEqual(errors, []);
  await p.context().close();
});

test('the list resumes after a dropped events socket and shows EVENTS_DROPPED', { skip }, async () => {
  const { page: p, errors } = await page();
  await signIn(p, server.url, server.token);
  const t = new Date().toISOString();
  server.vms.set('vm-r', { id: 'vm-r', name: 'ui-resume', state: 'created', image: 'default', hypervisor: 'qemu', vcpus: 1, memoryMiB: 256, createdAt: t, updatedAt: t });
  server.emit('vm-r', 'VM_CREATED', server.vms.get('vm-r'));
  const row = p.locator('tr[data-vm-name="ui-resume"]');
  await row.waitFor();
  await p.locator('.stream.open').waitFor();
  const wsUrls: string[] = [];
  p.on('websocket', (ws) => wsUrls.push(ws.url()));
  server.dropEventSockets();
  // while disconnected, the VM changes state; the reconnect (?since=) replays it
  server.setState('vm-r', 'stopped');
  await p.locator('tr[data-vm-name="ui-resume"][data-state="stopped"]').waitFor();
  await p.locator('.stream.open').waitFor();
  assert.ok(wsUrls.some((u) => /\/v1\/events\?since=\d+/.test(u)), `reconnected with since: ${wsUrls.join(' ')}`);
  server.emit(null, 'EVENTS_DROPPED', { count: 7 });
  await p.getByText('The server dropped 7 events').waitFor();
  server.vms.delete('vm-r');
  server.emit('vm-r', 'VM_DELETED', {});
  await row.waitFor({ state: 'detached' });
  assert.deepEqual(errors, []);
  await p.context().close();
});

test('phone width and dark mode render', { skip }, async () => {
  const { page: p, errors } = await page({ phone: true, dark: true });
  await p.goto(server.url + '/');
  await p.getByLabel('API token').waitFor();
  await shot(p, 'ui-phone-dark-signin');
  await signIn(p, server.url, server.token);
  await p.getByRole('link', { name: 'New VM' }).click();
  await p.getByLabel('Name').fill('ui-phone');
  await p.getByRole('button', { name: 'Create VM' }).click();
  await p.getByRole('heading', { name: 'ui-phone' }).waitFor();
  await p.locator('main .page-head button[data-action="start"]').click();
  await waitForConsole(p, /CAPSULE_READY/, 10_000);
  await shot(p, 'ui-phone-dark-detail');
  // nothing wider than the screen
  const overflow = await p.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
  assert.ok(overflow <= 0, `page is ${overflow}px wider than the phone`);
  await p.getByRole('link', { name: '← All VMs' }).click();
  await p.locator('tr[data-vm-name="ui-phone"]').waitFor();
  await shot(p, 'ui-phone-dark-list');
  const overflow2 = await p.evaluate<number>('document.documentElement.scrollWidth - window.innerWidth');
  assert.ok(overflow2 <= 0, `list is ${overflow2}px wider than the phone`);
  assert.deepEqual(errors, []);
  await p.context().close();
});

test('keyboard: everything reachable with Tab, visible focus, create form by keyboard', { skip }, async () => {
  const { page: p, errors } = await page();
  const t = new Date().toISOString();
  server.vms.set('vm-k', { id: 'vm-k', name: 'ui-kbd', state: 'running', image: 'default', hypervisor: 'qemu', vcpus: 1, memoryMiB: 256, createdAt: t, updatedAt: t });
  await p.goto(server.url + '/');
  await p.getByLabel('API token').waitFor();
  assert.equal(await p.evaluate('document.activeElement.id'), 'token'); // focused on arrival
  await p.keyboard.type(server.token);
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'Virtual machines' }).waitFor();
  const seen: string[] = [];
  // The header's stops (skip link, brand, VMs, Volumes, Templates, Sign out), then the page's.
  for (let i = 0; i < 10; i++) {
    await p.keyboard.press('Tab');
    const info = await p.evaluate<string>(`(() => { const e = document.activeElement; const cs = getComputedStyle(e);
      return e.tagName + ':' + (e.textContent || '').trim().slice(0, 20) + ':' + (cs.outlineStyle !== 'none' && cs.outlineWidth !== '0px') })()`);
    if (!info.startsWith('BODY:')) seen.push(info); // BODY: past the end, into browser chrome
  }
  assert.ok(seen.every((x) => /^(A|BUTTON):/.test(x)), seen.join(' | '));
  assert.ok(seen.some((x) => x.startsWith('BUTTON:Pause')), seen.join(' | '));
  assert.ok(seen.every((x) => x.endsWith(':true')), `focus ring on every stop: ${seen.join(' | ')}`);
  assert.ok(seen.some((x) => x.startsWith('A:New VM')), seen.join(' | '));
  // create a VM with the keyboard only
  await p.getByRole('link', { name: 'New VM' }).focus();
  await p.keyboard.press('Enter');
  await p.getByLabel('Name').waitFor();
  assert.equal(await p.evaluate('document.activeElement.name'), 'name');
  await p.keyboard.type('ui-keys');
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'ui-keys' }).waitFor();
  server.vms.delete('vm-k');
  assert.deepEqual(errors, []);
  await p.context().close();
});
