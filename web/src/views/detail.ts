// One VM: details, lifecycle buttons, serial console, live event log and the VMM log. For a
// running VM whose guest agent answers (GET /v1/vms/:id/agent), tabs beside the console: Exec
// and Files, and the card of its listening ports.
import { ApiError, type Vm } from '../api.js';
import type { App, View } from '../app.js';
import { ConsoleView } from '../console.js';
import { EventStream, type CapsuleEvent } from '../events.js';
import { h, clear, fmtClock, fmtMem, fmtTime } from '../dom.js';
import { ActionBar } from './actionbar.js';
import { DrivesCard } from './drives.js';
import { ExecPanel } from './exec.js';
import { FilesPanel } from './files.js';
import { PortsCard } from './ports.js';
import { Tabs } from './tabs.js';
import { setBadge, stateBadge } from './state.js';

const MAX_EVENTS = 500;
/** How long after the VM is running the page keeps asking for its guest agent (a TCG boot is slow). */
const AGENT_WAIT_MS = 240_000;

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
  let execPanel: ExecPanel | null = null;
  let filesPanel: FilesPanel | null = null;
  let portsCard: PortsCard | null = null;
  let tabs: Tabs | null = null;
  // The guest agent: idle (not running), checking (asking, with retries), ready, absent (gave up).
  let agentPhase: 'idle' | 'checking' | 'ready' | 'absent' = 'idle';
  let agentTimer: ReturnType<typeof setTimeout> | null = null;
  let agentSince = 0;
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
    fact('agent', 'Agent');
    fact('ttl', 'Lifetime');
    fact('metadata', 'Metadata');
    fact('pid', 'VMM pid');
    fact('created', 'Created');
    fact('updated', 'Updated');
    consoleView = new ConsoleView(app.api, id);
    drivesCard = new DrivesCard(app, v);
    execPanel = new ExecPanel(app.api, id);
    filesPanel = new FilesPanel(app, id);
    portsCard = new PortsCard(app, id);
    const files = filesPanel;
    tabs = new Tabs('VM tools', [
      { id: 'console', label: 'Console', panel: consoleView.el },
      { id: 'exec', label: 'Exec', panel: execPanel.el },
      { id: 'files', label: 'Files', panel: files.el, onShow: () => files.show() },
    ]);
    tabs.setEnabled(false);
    body.append(
      h('div', { class: 'main-col' }, tabs.list, tabs.panels),
      h('div', { class: 'side' }, h('section', { class: 'card', 'aria-label': 'Details' }, dl), portsCard.el, drivesCard.el, eventsSection, logSection),
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
    dd['ttl']!.textContent = v.timeoutSec === undefined ? 'no TTL'
      : `${v.timeoutSec} s from each start, then ${v.onTimeout ?? 'stop'}${v.expiresAt ? `; ends ${fmtTime(v.expiresAt)}` : ''}`;
    const meta = Object.entries(v.metadata ?? {});
    dd['metadata']!.textContent = meta.length ? meta.map(([k, val]) => `${k}=${val}`).join(', ') : '—';
    dd['pid']!.textContent = v.pid ? String(v.pid) : '—';
    dd['created']!.textContent = fmtTime(v.createdAt);
    dd['updated']!.textContent = fmtTime(v.updatedAt);
    consoleView?.setVmState(v.state);
    watchAgent(v);
  }

  // --- the guest agent: Exec and Files tabs, ports ---
  function watchAgent(v: Vm): void {
    if (v.state !== 'running' || gone) {
      if (agentTimer) clearTimeout(agentTimer);
      agentTimer = null;
      if (agentPhase !== 'idle') {
        agentPhase = 'idle';
        tabs?.setEnabled(false);
        portsCard?.hide();
      }
      dd['agent']!.textContent = '—';
      return;
    }
    if (agentPhase !== 'idle') return;
    agentPhase = 'checking';
    agentSince = Date.now();
    dd['agent']!.textContent = 'checking…';
    void checkAgent(1);
  }

  async function checkAgent(attempt: number): Promise<void> {
    agentTimer = null;
    if (agentPhase !== 'checking') return;
    try {
      const health = await app.api.agentHealth(id);
      if (agentPhase !== 'checking') return;
      agentPhase = 'ready';
      const version = typeof health['version'] === 'string' ? health['version'] : '';
      dd['agent']!.textContent = `capsule-agent${version ? ' ' + version : ''}`;
      tabs?.setEnabled(true);
      void portsCard?.load();
    } catch (e) {
      if (agentPhase !== 'checking') return;
      if (e instanceof ApiError && e.status === 401) app.reportError('Agent', e);
      // 404: the VM is gone, or the server has no agent routes; 401/403: this token may not ask.
      if (Date.now() - agentSince > AGENT_WAIT_MS || (e instanceof ApiError && [401, 403, 404].includes(e.status))) {
        agentPhase = 'absent';
        dd['agent']!.textContent = 'none answers';
        return;
      }
      agentTimer = setTimeout(() => void checkAgent(attempt + 1), Math.min(10_000, 1000 * attempt));
    }
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
    if (agentTimer) clearTimeout(agentTimer);
    agentPhase = 'idle';
    tabs?.setEnabled(false);
    portsCard?.hide();
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
      if (agentTimer) clearTimeout(agentTimer);
      agentPhase = 'idle';
      consoleView?.destroy();
      execPanel?.destroy();
      filesPanel?.destroy();
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
