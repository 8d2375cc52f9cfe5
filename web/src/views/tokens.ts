// API tokens: list (metadata only), create (the secret is shown once, here), revoke. Admins
// manage every tenant's tokens; a write token its own tenant's (the server enforces both).
import { ApiError, type CreateToken, type Token, type TokenScope } from '../api.js';
import type { App, View } from '../app.js';
import { h, fmtTime, uid } from '../dom.js';

export function tokensView(app: App): View {
  const heading = h('h1', { tabindex: '-1' }, 'API tokens');
  const status = h('p', { class: 'hint', role: 'status' });
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'vms tokens' },
    h('caption', { class: 'visually-hidden' }, 'API tokens'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Tenant'), h('th', { scope: 'col' }, 'Scope'),
      h('th', { scope: 'col' }, 'Expires'), h('th', { scope: 'col' }, 'Created'),
      h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
    tbody,
  );

  const nameId = uid('tok-name');
  const tenantId = uid('tok-tenant');
  const scopeId = uid('tok-scope');
  const expiresId = uid('tok-expires');
  const nameIn = h('input', { id: nameId, type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. ci' });
  const tenantSel = h('select', { id: tenantId });
  const scopeSel = h('select', { id: scopeId }, h('option', { value: 'read' }, 'read'), h('option', { value: 'write' }, 'write'));
  const expiresIn = h('input', { id: expiresId, type: 'datetime-local' });
  const formError = h('p', { class: 'field-error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create token');
  // The new token's secret: shown once, never again (the server keeps only its hash).
  const secretOut = h('output', { class: 'mono secret' });
  const secretBox = h('div', { class: 'card secret-box', hidden: true, role: 'status' },
    h('p', null, h('strong', null, 'Copy this token now: '), 'it is shown only once.'), secretOut);
  const form = h(
    'form',
    { class: 'card create-token', novalidate: true },
    h('h2', null, 'New token'),
    h('div', { class: 'row3' },
      h('div', { class: 'field' }, h('label', { for: nameId }, 'Name'), nameIn),
      h('div', { class: 'field' }, h('label', { for: tenantId }, 'Tenant'), tenantSel),
      h('div', { class: 'field' }, h('label', { for: scopeId }, 'Scope'), scopeSel),
      h('div', { class: 'field' }, h('label', { for: expiresId }, 'Expires (optional)'), expiresIn)),
    formError,
    h('div', { class: 'form-actions' }, submit),
  );

  function fillTenants(): void {
    const me = app.me;
    if (!me) return;
    const tenants = me.scope === 'admin' && app.tenants.length ? app.tenants : [me.tenant];
    tenantSel.replaceChildren(...tenants.map((t) => h('option', { value: t.id }, t.name)));
    tenantSel.value = me.tenant.id;
    tenantSel.disabled = tenants.length < 2;
    if (me.scope === 'admin' && scopeSel.options.length < 3) scopeSel.appendChild(h('option', { value: 'admin' }, 'admin'));
  }

  async function load(): Promise<void> {
    try {
      render(await app.api.listTokens());
    } catch (e) {
      status.textContent = `Could not load the tokens: ${e instanceof ApiError ? e.describe() : String(e)}`;
    }
  }

  function render(tokens: Token[]): void {
    tbody.replaceChildren(...tokens.map((t) => {
      const self = t.id === app.me?.id;
      const revoke = h('button', { type: 'button', class: 'small danger' }, 'Revoke');
      revoke.setAttribute('aria-label', `Revoke token ${t.name}`);
      revoke.addEventListener('click', async () => {
        if (self && !confirm('This is the token you are signed in with. Revoke it and sign out?')) return;
        revoke.disabled = true;
        try {
          await app.api.revokeToken(t.id);
          status.textContent = `Revoked ${t.name}.`;
          if (self) return app.signOut('You revoked the token you were signed in with.');
        } catch (e) {
          status.textContent = `Could not revoke ${t.name}: ${e instanceof ApiError ? e.describe() : String(e)}`;
        }
        await load();
      });
      return h('tr', { 'data-token-name': t.name },
        h('th', { scope: 'row' }, t.name, self ? h('span', { class: 'hint' }, ' (this session)') : null),
        h('td', null, t.tenantName),
        h('td', null, t.scope),
        h('td', { class: 'nowrap' }, t.expiresAt ? fmtTime(t.expiresAt) : 'never'),
        h('td', { class: 'nowrap' }, fmtTime(t.createdAt)),
        h('td', { class: 'row-actions' }, revoke));
    }));
    if (tokens.length === 0) tbody.appendChild(h('tr', null, h('td', { colspan: '6', class: 'hint' }, 'No tokens.')));
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    formError.textContent = '';
    secretBox.hidden = true;
    const spec: CreateToken = { name: nameIn.value.trim(), scope: scopeSel.value as TokenScope };
    if (tenantSel.value) spec.tenant = tenantSel.value;
    if (expiresIn.value) spec.expiresAt = new Date(expiresIn.value).toISOString();
    submit.disabled = true;
    try {
      const created = await app.api.createToken(spec);
      secretOut.textContent = created.token;
      secretBox.hidden = false;
      status.textContent = `Created ${created.name} (${created.scope}, tenant ${created.tenantName}).`;
      nameIn.value = '';
      await load();
    } catch (err) {
      formError.textContent = err instanceof ApiError ? err.describe() : String(err);
    } finally {
      submit.disabled = false;
    }
  });

  const unsub = app.onChange(fillTenants);
  fillTenants();
  void load();
  const el = h(
    'main',
    { id: 'main', class: 'page' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All VMs')),
    h('div', { class: 'page-head' }, h('div', { class: 'title' }, heading)),
    status,
    secretBox,
    h('div', { class: 'table-wrap' }, table),
    form,
  );
  return { el, focus: heading, destroy: unsub };
}
