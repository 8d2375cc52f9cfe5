// Entry point: token handling, header, hash router (#/, #/new, #/vms/:id, #/volumes, #/templates, #/tokens).
import { Api } from './api.js';
import { App, type View } from './app.js';
import { h } from './dom.js';
import { signInView } from './views/signin.js';
import { listView } from './views/list.js';
import { createView } from './views/create.js';
import { detailView } from './views/detail.js';
import { volumesView } from './views/volumes.js';
import { templatesView } from './views/templates.js';
import { tokensView } from './views/tokens.js';

const TOKEN_KEY = 'capsule.token';
const BASE = ''; // same origin

const root = document.getElementById('app')!;
const notifyEl = h('div', { class: 'toasts', 'aria-live': 'polite' });
const streamEl = h('span', { class: 'stream', role: 'status' });
const signOutBtn = h('button', { type: 'button', class: 'ghost' }, 'Sign out');
// The signed-in tenant and scope (from /v1/whoami).
const whoEl = h('span', { class: 'whoami', hidden: true });
const tokensLink = h('a', { href: '#/tokens', hidden: true }, 'Tokens');
const header = h(
  'header',
  { class: 'top' },
  h('a', { class: 'skip', href: '#main', onclick: skipToMain as EventListener }, 'Skip to content'),
  h('a', { class: 'brand', href: '#/' }, h('span', { class: 'logo', 'aria-hidden': 'true' }, '◆'), 'capsule'),
  h('div', { class: 'spacer' }),
  h('nav', { class: 'nav', 'aria-label': 'Sections' }, h('a', { href: '#/' }, 'VMs'), h('a', { href: '#/volumes' }, 'Volumes'), h('a', { href: '#/templates' }, 'Templates'), tokensLink),
  whoEl,
  streamEl,
  signOutBtn,
);
const outlet = h('div', { class: 'outlet' });
root.replaceChildren(header, outlet, notifyEl);

let app: App | null = null;
let memToken: string | null = null;
let view: View | null = null;

function skipToMain(e: Event): void {
  e.preventDefault();
  (document.querySelector('#main h1') as HTMLElement | null)?.focus();
}

function getToken(): string | null {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function show(v: View): void {
  view?.destroy();
  view = v;
  outlet.replaceChildren(v.el);
  v.focus?.focus({ preventScroll: true });
}

function navigate(hash: string): void {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function signOut(reason?: string): void {
  memToken = null;
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* ignore */
  }
  app?.stop();
  app = null;
  route(reason);
}

function signIn(token: string): void {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    /* private mode: keep it in memory only */
    memToken = token;
  }
  route();
}

function updateWho(): void {
  const me = app?.me;
  whoEl.hidden = !me;
  // Token management: admins (all tenants) and write tokens (their own tenant).
  tokensLink.hidden = !me || me.scope === 'read';
  if (!me) return;
  whoEl.textContent = `${me.tenant.name} · ${me.scope}`;
  whoEl.title = `Signed in with token “${me.name}” of tenant ${me.tenant.name} (scope ${me.scope})`;
  whoEl.className = `whoami scope-${me.scope}`;
}

function updateStream(): void {
  if (!app) return;
  const s = app.streamStatus;
  streamEl.textContent = s === 'open' ? 'Live' : s === 'connecting' ? 'Connecting…' : s === 'reconnecting' ? 'Reconnecting…' : 'Offline';
  streamEl.className = `stream ${s}`;
  streamEl.title = s === 'open' ? 'Receiving live updates from the server' : 'Live updates interrupted; will resume';
}

function route(message?: string): void {
  const token = getToken() ?? memToken;
  const signedIn = !!token;
  header.classList.toggle('signed-in', signedIn);
  signOutBtn.hidden = !signedIn;
  streamEl.hidden = !signedIn;
  if (!signedIn) whoEl.hidden = tokensLink.hidden = true;
  if (!token) {
    document.title = 'Sign in · capsule';
    show(signInView(BASE, message, signIn));
    return;
  }
  if (!app) {
    const api = new Api(BASE, token);
    api.onUnauthorized = () => signOut('Your token was rejected by the server (401). Please sign in again.');
    app = new App(api, notifyEl, signOut);
    app.onChange(updateStream);
    app.onChange(updateWho);
    void app.start();
  }
  const hash = location.hash.replace(/^#/, '') || '/';
  const m = /^\/vms\/([^/]+)$/.exec(hash);
  if (m) {
    show(detailView(app, decodeURIComponent(m[1]!), navigate));
  } else if (hash === '/volumes') {
    document.title = 'Volumes · capsule';
    show(volumesView(app));
  } else if (hash === '/templates') {
    document.title = 'Templates · capsule';
    show(templatesView(app, navigate));
  } else if (hash === '/tokens') {
    document.title = 'Tokens · capsule';
    show(tokensView(app));
  } else if (hash === '/new') {
    document.title = 'New VM · capsule';
    show(createView(app, navigate));
  } else {
    document.title = 'Virtual machines · capsule';
    show(listView(app));
  }
}

signOutBtn.addEventListener('click', () => signOut());
window.addEventListener('hashchange', () => route());
route();
