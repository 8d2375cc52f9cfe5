// The VM list: one row per VM, updated in place from the store (so focus is kept).
import type { Vm } from '../api.js';
import type { App, View } from '../app.js';
import { h, clear, fmtMem, fmtTime } from '../dom.js';
import { ActionBar } from './actionbar.js';
import { stateBadge, setBadge } from './state.js';

interface Row {
  tr: HTMLTableRowElement;
  badge: HTMLElement;
  bar: ActionBar;
  name: HTMLAnchorElement;
}

export function listView(app: App): View {
  const heading = h('h1', { tabindex: '-1' }, 'Virtual machines');
  const count = h('span', { class: 'count', 'aria-live': 'polite' });
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'vms' },
    h('caption', { class: 'visually-hidden' }, 'Virtual machines and their state'),
    h(
      'thead',
      null,
      h(
        'tr',
        null,
        h('th', { scope: 'col' }, 'Name'),
        h('th', { scope: 'col' }, 'State'),
        h('th', { scope: 'col' }, 'Backend'),
        h('th', { scope: 'col' }, 'vCPUs'),
        h('th', { scope: 'col' }, 'Memory'),
        h('th', { scope: 'col' }, 'Created'),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')),
      ),
    ),
    tbody,
  );
  const empty = h(
    'div',
    { class: 'empty', hidden: true },
    h('p', null, 'No virtual machines yet.'),
    h('a', { class: 'button primary', href: '#/new' }, 'Create your first VM'),
  );
  const wrap = h('div', { class: 'table-wrap' }, table);
  const loading = h('p', { class: 'hint' }, 'Loading…');
  const loadErrText = h('span', null);
  const retry = h('button', { type: 'button', class: 'small' }, 'Retry');
  retry.addEventListener('click', () => void app.refresh());
  const loadErr = h('div', { class: 'form-error', role: 'alert', hidden: true }, 'Could not load the VM list: ', loadErrText, ' ', retry);
  const el = h(
    'main',
    { id: 'main', class: 'page' },
    h('div', { class: 'page-head' }, h('div', { class: 'title' }, heading, count), h('a', { class: 'button primary', href: '#/new' }, 'New VM')),
    loading,
    loadErr,
    wrap,
    empty,
  );

  // Admins see every tenant's VMs: a filter narrows the list to one tenant.
  const filterSel = h('select', { id: 'tenant-filter' }, h('option', { value: '' }, 'All tenants'));
  const filterBox = h('div', { class: 'tenant-filter', hidden: true }, h('label', { for: 'tenant-filter' }, 'Tenant '), filterSel);
  filterSel.addEventListener('change', () => {
    app.tenantFilter = filterSel.value;
    app.changed();
  });
  el.insertBefore(filterBox, loading);

  function renderFilter(): void {
    const admin = app.me?.scope === 'admin' && app.tenants.length > 0;
    filterBox.hidden = !admin;
    if (!admin || filterSel.options.length === app.tenants.length + 1) return;
    filterSel.replaceChildren(h('option', { value: '' }, 'All tenants'), ...app.tenants.map((t) => h('option', { value: t.id }, t.name)));
    filterSel.value = app.tenantFilter;
  }

  const rows = new Map<string, Row>();

  function makeRow(vm: Vm): Row {
    const name = h('a', { href: `#/vms/${encodeURIComponent(vm.id)}`, class: 'vm-name' }, vm.name);
    const badge = stateBadge(vm.state);
    const bar = new ActionBar(app, vm, { compact: true });
    const tr = h(
      'tr',
      { 'data-vm-id': vm.id, 'data-vm-name': vm.name },
      h('th', { scope: 'row', 'data-label': 'Name' }, name, h('div', { class: 'sub mono', title: vm.id }, vm.id.length > 13 ? vm.id.slice(0, 8) + '…' : vm.id)),
      h('td', { 'data-label': 'State' }, badge),
      h('td', { 'data-label': 'Backend' }, vm.hypervisor),
      h('td', { 'data-label': 'vCPUs' }, vm.vcpus),
      h('td', { 'data-label': 'Memory' }, fmtMem(vm.memoryMiB)),
      h('td', { 'data-label': 'Created', class: 'nowrap' }, fmtTime(vm.createdAt)),
      h('td', { class: 'row-actions' }, bar.el),
    );
    return { tr, badge, bar, name };
  }

  function render(): void {
    renderFilter();
    const vms = app.store.sorted().filter((v) => !app.tenantFilter || v.tenant === app.tenantFilter);
    loading.hidden = app.store.loaded || app.loadError !== null;
    loadErr.hidden = app.loadError === null;
    loadErrText.textContent = app.loadError ?? '';
    empty.hidden = !app.store.loaded || vms.length > 0;
    wrap.hidden = vms.length === 0;
    count.textContent = app.store.loaded ? `${vms.length}` : '';
    const keep = new Set(vms.map((v) => v.id));
    for (const [id, r] of rows) {
      if (!keep.has(id)) {
        r.bar.destroy();
        r.tr.remove();
        rows.delete(id);
      }
    }
    let prev: HTMLTableRowElement | null = null;
    for (const vm of vms) {
      let r = rows.get(vm.id);
      if (!r) {
        r = makeRow(vm);
        rows.set(vm.id, r);
      }
      setBadge(r.badge, vm.state);
      r.tr.dataset['state'] = vm.state;
      r.bar.update(vm);
      // keep DOM order == sorted order without touching rows already in place
      const want: ChildNode | null = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== r.tr) tbody.insertBefore(r.tr, want);
      prev = r.tr;
    }
  }

  const unsub1 = app.store.subscribe(render);
  const unsub2 = app.onChange(render);
  render();
  return {
    el,
    focus: heading,
    destroy() {
      unsub1();
      unsub2();
      for (const r of rows.values()) r.bar.destroy();
      clear(tbody);
    },
  };
}
