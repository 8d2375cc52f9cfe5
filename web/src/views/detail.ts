// One VM: details, lifecycle buttons, serial console, live event log and the VMM log.
import { ApiError, type Vm } from '../api.js';
import type { App, View } from '../app.js';
import { ConsoleView } from '../console.js';
import { EventStream, type CapsuleEvent } from '../events.js';
import { h, clear, fmtClock, fmtMem, fmtTime } from '../dom.js';
import { ActionBar } from './actionbar.js';
import { DrivesCard } from './drives.js';
import { setBadge, stateBadge } from './state.js';

const MAX_EVENTS = 500;

export function detailView(app: App, id: string, navigate: (hash: string) => void): View {
  const heading = h('h1', { tabindex: '-1' }, 'VM');
  const badge = stateBadge('…');
  const head = h('div', { class: 'page-head' }, h('div', { class: 'title' }, heading, badge));
  const body = h('div', { class: 'detail-grid' });
  const status = h('p', { class: 'hint' }, 'Loading…');
  const el = h('main', { id: 'main', class: 'page' }, h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All VMs')), head, status, body);

  let vm: Vm | undefined = app.store.vms.get(id);
  let bar: ActionBar | null = null;
  let consoleView: ConsoleView | null = null;
  let drivesCard: DrivesCard | null = null;
  let stream: EventStream | null = null;
  let gone = false;
  const dd: Record<string, HTMLElement> = {};
  const cleanups: (() => void)[] = [];

  // --- event log ---
  const eventList = h('ol', { class: 'events', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const eventsStatus = h('span', { class: 'console-status' });
  const eventsSection = h(
    'section',
    { class: 'card', 'aria-labelledby': 'events-h' },
    h('div', { class: 'section-head' }, h('h2', { id: 'events-h' }, 'Events'), eventsStatus),
    h('div', { class: 'events-wrap', tabindex: '0', 'aria-label': 'Event log' }, eventList),
  );

  function addEvent(ev: CapsuleEvent): void {
    const summary = eventSummary(ev);
    const li = h(
      'li',
      { 'data-event': ev.event, class: `ev ev-${ev.event.toLowerCase()}` },
      h('time', { datetime: ev.timestamp }, fmtClock(ev.timestamp)),
      h('span', { class: 'ev-name' }, ev.event),
      summary ? h('span', { class: 'ev-data' }, summary) : null,
    );
    const wrap = eventList.parentElement!;
    const atBottom = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 24;
    eventList.appendChild(li);
    while (eventList.children.length > MAX_EVENTS) eventList.firstElementChild?.remove();
    if (atBottom) wrap.scrollTop = wrap.scrollHeight;
  }

  // --- VMM log ---
  const logPre = h('pre', { class: 'log', tabindex: '0', 'aria-label': 'VMM log' }, 'Not loaded.');
  const logBtn = h('button', { type: 'button', class: 'small' }, 'Refresh');
  const logSection = h(
    'section',
    { class: 'card', 'aria-labelledby': 'log-h' },
    h('div', { class: 'section-head' }, h('h2', { id: 'log-h' }, 'VMM log'), h('div', { class: 'spacer' }), logBtn),
    logPre,
  );
  let logBusy = false;
  async function loadLog(): Promise<void> {
    if (logBusy || gone) return;
    logBusy = true;
    logBtn.disabled = true;
    logBtn.textContent = 'Loading…';
    try {
      const text = await app.api.log(id);
      const stick = logPre.scrollHeight - logPre.scrollTop - logPre.clientHeight < 24;
      logPre.textContent = text || '(empty)';
      if (stick) logPre.scrollTop = logPre.scrollHeight;
    } catch (e) {
      logPre.textContent = e instanceof ApiError ? `Could not load the log: ${e.describe()}` : String(e);
      if (e instanceof ApiError && e.status === 401) app.reportError('Log', e);
    } finally {
      logBusy = false;
      logBtn.disabled = false;
      logBtn.textContent = 'Refresh';
    }
  }
  logBtn.addEventListener('click', () => void loadLog());

  function build(v: Vm): void {
    heading.textContent = v.name;
    document.title = `${v.name} · capsule`;
    status.hidden = true;
    bar = new ActionBar(app, v, { onDeleted: () => navigate('#/') });
    head.appendChild(bar.el);
    const dl = h('dl', { class: 'facts' });
    const fact = (k: string, label: string): void => {
      dd[k] = h('dd', null);
      dl.append(h('dt', null, label), dd[k]!);
    };
    fact('id', 'ID');
    fact('image', 'Image');
    fact('hypervisor', 'Backend');
    fact('vcpus', 'vCPUs');
    fact('memory', 'Memory');
    fact('devices', 'Devices');
    fact('network', 'Network');
    fact('pid', 'VMM pid');
    fact('created', 'Created');
    fact('updated', 'Updated');
    consoleView = new ConsoleView(app.api, id);
    drivesCard = new DrivesCard(app, v);
    body.append(
      consoleView.el,
      h('div', { class: 'side' }, h('section', { class: 'card', 'aria-label': 'Details' }, dl), drivesCard.el, eventsSection, logSection),
    );
    consoleView.mount();
    update(v);
    void loadLog();

    // Per-VM event stream, replaying what the server still holds (since=0), then live.
    stream = new EventStream({
      url: (since) => app.api.wsUrl(`/v1/vms/${encodeURIComponent(id)}/events`, { since }),
      since: 0,
      onEvent: (ev) => {
        addEvent(ev);
        // The global stream drives the store; this one only fills the log. Refresh the
        // VMM log when something notable happens.
        if (ev.event === 'STATE_CHANGED' || ev.event === 'CRASHED' || ev.event === 'SHUTDOWN') void loadLog();
      },
      onStatus: (s, detail) => {
        eventsStatus.textContent = s === 'open' ? 'live' : s + (detail ? ` — ${detail}` : '');
        eventsStatus.className = `console-status ${s === 'open' ? 'connected' : s}`;
      },
    });
    stream.start();
  }

  function update(v: Vm): void {
    vm = v;
    setBadge(badge, v.state);
    el.dataset['state'] = v.state;
    bar?.update(v);
    dd['id']!.textContent = v.id;
    dd['id']!.className = 'mono';
    dd['image']!.textContent = v.image;
    dd['hypervisor']!.textContent = v.hypervisor;
    dd['vcpus']!.textContent = String(v.vcpus);
    dd['memory']!.textContent = fmtMem(v.memoryMiB);
    dd['devices']!.textContent = [v.rng !== false ? 'rng' : '', v.balloon?.enabled ? `balloon${v.balloon.deflateOnOom ? ' (deflate on OOM)' : ''}` : ''].filter(Boolean).join(', ') || '—';
    const n = v.network;
    dd['network']!.textContent = !n ? '—' : !n.enabled ? 'none'
      : [n.guestAddress ? `guest ${n.guestAddress}` : '', n.hostAddress ? `host ${n.hostAddress}` : '', `egress ${n.egress ? 'on' : 'off'}`].filter(Boolean).join(', ');
    drivesCard?.update(v);
    dd['pid']!.textContent = v.pid ? String(v.pid) : '—';
    dd['created']!.textContent = fmtTime(v.createdAt);
    dd['updated']!.textContent = fmtTime(v.updatedAt);
    consoleView?.setVmState(v.state);
  }

  function markGone(): void {
    if (gone) return;
    gone = true;
    setBadge(badge, 'deleted');
    status.hidden = false;
    status.textContent = 'This VM was deleted.';
    status.setAttribute('role', 'status');
    bar?.el.remove();
    stream?.stop();
    consoleView?.setVmState('deleted');
  }

  cleanups.push(
    app.store.subscribe((vms, changed) => {
      if (changed !== null && changed !== id) return;
      const v = vms.get(id);
      if (v) {
        if (!bar) build(v);
        else update(v);
      } else if (bar && app.store.loaded) {
        markGone();
      }
    }),
    app.onChange(() => vm && bar?.update(vm)),
  );

  if (vm) build(vm);
  else {
    app.api.getVm(id).then(
      (v) => {
        if (!bar) {
          app.store.upsert(v);
          if (!bar) build(v);
        }
      },
      (e) => {
        status.textContent =
          e instanceof ApiError && e.status === 404 ? 'No such VM. It may have been deleted.' : `Could not load the VM: ${e instanceof ApiError ? e.describe() : String(e)}`;
        status.setAttribute('role', 'alert');
        heading.textContent = 'VM not found';
        badge.hidden = true;
        if (e instanceof ApiError && e.status === 401) app.reportError('Load VM', e);
      },
    );
  }

  return {
    el,
    focus: heading,
    destroy() {
      for (const c of cleanups) c();
      stream?.stop();
      consoleView?.destroy();
      bar?.destroy();
      clear(body);
    },
  };
}

function eventSummary(ev: CapsuleEvent): string {
  const d = ev.data as Record<string, unknown> | null | undefined;
  if (!d || typeof d !== 'object') return d === undefined || d === null ? '' : String(d);
  if (ev.event === 'STATE_CHANGED') return `${String(d['previous'] ?? '?')} → ${String(d['state'] ?? '?')}`;
  if (ev.event === 'EVENTS_DROPPED') return `${String(d['count'] ?? '?')} events dropped by the server`;
  if (ev.event === 'VM_CREATED') return 'created';
  const parts = Object.entries(d).map(([k, v]) => `${k}=${typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`);
  const s = parts.join(' ');
  return s.length > 160 ? s.slice(0, 160) + '…' : s;
}
