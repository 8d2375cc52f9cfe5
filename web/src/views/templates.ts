// Templates: list with build progress (a progress bar through the build's steps, live from the
// TEMPLATE_* events), pool fill, a "Start VM" that claims one (from the pool, or restored), a
// create form, delete. docs/templates.md.
import { ApiError, TEMPLATE_STEPS, type CreateTemplate, type Pool, type Template } from '../api.js';
import type { App, View } from '../app.js';
import { h, uid } from '../dom.js';

const STEP_LABEL: Record<(typeof TEMPLATE_STEPS)[number], string> = {
  booting: 'Booting', starting: 'Running the start command', 'waiting-ready': 'Waiting for the ready command', snapshotting: 'Snapshotting',
};

export function templatesView(app: App, navigate: (hash: string) => void): View {
  const heading = h('h1', { tabindex: '-1' }, 'Templates');
  const tbody = h('tbody');
  const status = h('p', { class: 'hint', role: 'status' });
  const table = h(
    'table',
    { class: 'vms templates' },
    h('caption', { class: 'visually-hidden' }, 'Templates'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'State'), h('th', { scope: 'col' }, 'Pool'),
      h('th', { scope: 'col' }, 'Image'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
    tbody,
  );

  const ids = { name: uid('tpl-name'), image: uid('tpl-image'), memory: uid('tpl-mem'), start: uid('tpl-start'), ready: uid('tpl-ready'), pool: uid('tpl-pool') };
  const nameIn = h('input', { id: ids.name, type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. python-web' });
  const imageSel = h('select', { id: ids.image });
  const memIn = h('input', { id: ids.memory, type: 'number', inputmode: 'numeric', min: '64', step: '64', value: '256' });
  const startIn = h('input', { id: ids.start, type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. python3 -m http.server 8000' });
  const readyIn = h('input', { id: ids.ready, type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. curl -sf localhost:8000' });
  const poolIn = h('input', { id: ids.pool, type: 'number', inputmode: 'numeric', min: '0', step: '1', value: '0' });
  const formError = h('p', { class: 'field-error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create template');
  const field = (id: string, label: string, input: HTMLElement) => h('div', { class: 'field' }, h('label', { for: id }, label), input);
  const form = h(
    'form',
    { class: 'card create-template', novalidate: true },
    h('h2', null, 'New template'),
    h('div', { class: 'row3' }, field(ids.name, 'Name', nameIn), field(ids.image, 'Image', imageSel), field(ids.memory, 'Memory (MiB)', memIn)),
    h('div', { class: 'row3' }, field(ids.start, 'Start command', startIn), field(ids.ready, 'Ready command', readyIn), field(ids.pool, 'Pool size', poolIn)),
    formError,
    h('div', { class: 'form-actions' }, submit),
  );

  let loading: Promise<void> | null = null;
  /** What the table shows: a reload that brings nothing new leaves the rows (and a click on them) alone. */
  let shown = '';
  async function load(): Promise<void> {
    try {
      const [templates, pools] = await Promise.all([app.api.listTemplates(), app.api.listPools()]);
      const key = JSON.stringify([templates, pools]);
      if (key === shown) return;
      shown = key;
      render(templates, new Map(pools.map((p) => [p.template, p])));
    } catch (e) {
      status.textContent = `Could not load the templates: ${e instanceof ApiError ? e.describe() : String(e)}`;
      if (e instanceof ApiError && e.status === 401) app.reportError('Templates', e);
    }
  }
  /** Set when a reload is asked for while one runs: its answer may predate the event. */
  let stale = false;
  /** Coalesces reloads: a burst of events makes one request pair, and one more after it if any came meanwhile. */
  function reload(): void {
    if (loading) {
      stale = true;
      return;
    }
    loading = load().finally(() => {
      loading = null;
      if (stale) {
        stale = false;
        reload();
      }
    });
  }

  function stateCell(t: Template): HTMLElement {
    if (t.state === 'building') {
      const step = t.step ?? 'booting';
      const i = TEMPLATE_STEPS.indexOf(step);
      return h('td', { class: 'template-progress' },
        h('progress', { max: String(TEMPLATE_STEPS.length), value: String(i + 0.5), 'aria-label': `Building ${t.name}: step ${i + 1} of ${TEMPLATE_STEPS.length}` }),
        h('span', { class: 'hint' }, ` ${STEP_LABEL[step]}… (${i + 1}/${TEMPLATE_STEPS.length})`));
    }
    if (t.state === 'failed') return h('td', null, h('span', { class: 'state state-crashed' }, 'failed'), h('span', { class: 'hint' }, ` ${t.reason ?? ''}`));
    return h('td', null, h('span', { class: 'state state-running' }, 'ready'));
  }

  function poolCell(t: Template, p: Pool | undefined): HTMLElement {
    if (t.pool === 0) return h('td', { class: 'hint' }, '—');
    const text = `${p?.ready ?? 0} of ${t.pool} ready${p?.warming ? ', warming' : ''}`;
    return h('td', { class: 'nowrap', title: p?.reason ?? '' }, text, p?.failed ? h('span', { class: 'hint' }, ` (${p.failed} failed: ${p.reason ?? ''})`) : null);
  }

  function render(templates: Template[], pools: Map<string, Pool>): void {
    tbody.replaceChildren(...templates.map((t) => {
      const launch = h('button', { type: 'button', class: 'small primary' }, 'Start VM');
      launch.setAttribute('aria-label', `Start a VM of template ${t.name}`);
      launch.disabled = t.state !== 'ready';
      launch.addEventListener('click', async () => {
        launch.disabled = true;
        const name = `${t.name}-${Math.random().toString(36).slice(2, 7)}`;
        status.textContent = `Starting ${name}…`;
        try {
          const vm = await app.api.vmFromTemplate(name, t.name);
          status.textContent = `${vm.name} is running (${vm.startedFrom === 'pool' ? 'from the pool' : 'restored: the pool had none ready'}).`;
          navigate(`#/vms/${encodeURIComponent(vm.id)}`);
        } catch (e) {
          status.textContent = `Could not start a VM of ${t.name}: ${e instanceof ApiError ? e.describe() : String(e)}`;
          launch.disabled = false;
        }
      });
      const del = h('button', { type: 'button', class: 'small danger' }, 'Delete');
      del.setAttribute('aria-label', `Delete template ${t.name}`);
      del.addEventListener('click', async () => {
        del.disabled = true;
        // The server finishes a pool VM's warm-up in flight before it drains the pool: say so.
        status.textContent = `Deleting ${t.name}…`;
        try {
          await app.api.deleteTemplate(t.id);
          status.textContent = `Deleted ${t.name}.`;
        } catch (e) {
          status.textContent = `Could not delete ${t.name}: ${e instanceof ApiError ? e.describe() : String(e)}`;
          del.disabled = false;
        }
        reload();
      });
      return h('tr', { 'data-template-name': t.name, 'data-state': t.state },
        h('th', { scope: 'row', class: 'vm-name' }, t.name, t.startCmd ? h('div', { class: 'hint mono' }, t.startCmd) : null),
        stateCell(t), poolCell(t, pools.get(t.name)),
        h('td', { class: 'nowrap' }, `${t.image}, ${t.memoryMiB} MiB`),
        h('td', { class: 'row-actions' }, launch, del));
    }));
    if (templates.length === 0) tbody.appendChild(h('tr', null, h('td', { colspan: '5', class: 'hint' }, 'No templates yet.')));
  }

  app.api.images().then(
    (items) => { for (const i of items) imageSel.appendChild(h('option', { value: i.name }, i.name)); },
    () => undefined,
  );

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    formError.textContent = '';
    // Validation is the API's (its 400 names the field).
    const spec: CreateTemplate = { name: nameIn.value.trim(), memoryMiB: Number(memIn.value), pool: Number(poolIn.value) };
    if (imageSel.value) spec.image = imageSel.value;
    if (startIn.value.trim()) spec.startCmd = startIn.value.trim();
    if (readyIn.value.trim()) spec.readyCmd = readyIn.value.trim();
    submit.disabled = true;
    try {
      const t = await app.api.createTemplate(spec);
      status.textContent = `Building ${t.name}…`;
      nameIn.value = '';
      reload();
    } catch (err) {
      formError.textContent = err instanceof ApiError ? (err.status === 400 || err.status === 409 ? err.message : err.describe()) : String(err);
      if (err instanceof ApiError && err.status === 401) app.reportError('Create template', err);
    } finally {
      submit.disabled = false;
    }
  });

  // Live: each build step, the end of a build, and pool changes reload the table.
  const off = app.onEvent((ev) => {
    if (/^(TEMPLATE_|POOL_)/.test(ev.event)) reload();
  });
  reload();
  const el = h(
    'main',
    { id: 'main', class: 'page' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All VMs')),
    h('div', { class: 'page-head' }, h('div', { class: 'title' }, heading)),
    status,
    h('div', { class: 'table-wrap' }, table),
    form,
  );
  return { el, focus: heading, destroy: off };
}
