// Volumes: list, create (an empty sparse disk, or a copy of an image's root filesystem), delete.
import { ApiError, type CreateVolume, type Volume } from '../api.js';
import type { App, View } from '../app.js';
import { h, fmtTime, uid } from '../dom.js';

export function volumesView(app: App): View {
  const heading = h('h1', { tabindex: '-1' }, 'Volumes');
  const tbody = h('tbody');
  const status = h('p', { class: 'hint', role: 'status' });
  const table = h(
    'table',
    { class: 'vms volumes' },
    h('caption', { class: 'visually-hidden' }, 'Volumes'),
    h('thead', null, h('tr', null,
      h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Size'), h('th', { scope: 'col' }, 'Attached to'),
      h('th', { scope: 'col' }, 'Created'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
    tbody,
  );

  const nameId = uid('vol-name');
  const sizeId = uid('vol-size');
  const imageId = uid('vol-image');
  const nameIn = h('input', { id: nameId, type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. data-1' });
  const sizeIn = h('input', { id: sizeId, type: 'number', inputmode: 'numeric', min: '1', step: '1', placeholder: 'e.g. 1024' });
  const imageSel = h('select', { id: imageId }, h('option', { value: '' }, 'Empty (sparse)'));
  const formError = h('p', { class: 'field-error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create volume');
  const form = h(
    'form',
    { class: 'card create-volume', novalidate: true },
    h('h2', null, 'New volume'),
    h('div', { class: 'row3' },
      h('div', { class: 'field' }, h('label', { for: nameId }, 'Name'), nameIn),
      h('div', { class: 'field' }, h('label', { for: sizeId }, 'Size (MiB)'), sizeIn),
      h('div', { class: 'field' }, h('label', { for: imageId }, 'Content'), imageSel)),
    formError,
    h('div', { class: 'form-actions' }, submit),
  );

  async function load(): Promise<void> {
    try {
      render(await app.api.listVolumes());
    } catch (e) {
      status.textContent = `Could not load the volumes: ${e instanceof ApiError ? e.describe() : String(e)}`;
      if (e instanceof ApiError && e.status === 401) app.reportError('Volumes', e);
    }
  }

  function render(vols: Volume[]): void {
    tbody.replaceChildren(...vols.map((v) => {
      const del = h('button', { type: 'button', class: 'small danger' }, 'Delete');
      del.setAttribute('aria-label', `Delete volume ${v.name}`);
      del.addEventListener('click', async () => {
        del.disabled = true;
        try {
          await app.api.deleteVolume(v.id);
          status.textContent = `Deleted ${v.name}.`;
        } catch (e) {
          status.textContent = `Could not delete ${v.name}: ${e instanceof ApiError ? e.describe() : String(e)}`;
        }
        await load();
      });
      return h('tr', { 'data-volume-name': v.name },
        h('th', { scope: 'row', class: 'vm-name' }, v.name, v.fromImage ? h('span', { class: 'hint' }, ` (from ${v.fromImage})`) : null),
        h('td', { class: 'nowrap' }, `${v.sizeMiB} MiB`),
        h('td', null, v.attachments.length ? v.attachments.map((a, i) => [i ? ', ' : '', h('a', { href: `#/vms/${encodeURIComponent(a.vm)}` }, a.vmName), ` (${a.drive}${a.readOnly ? ', ro' : ''})`]).flat() : '—'),
        h('td', { class: 'nowrap' }, fmtTime(v.createdAt)),
        h('td', { class: 'row-actions' }, del));
    }));
    if (vols.length === 0) tbody.appendChild(h('tr', null, h('td', { colspan: '5', class: 'hint' }, 'No volumes yet.')));
  }

  app.api.images().then(
    (items) => {
      for (const i of items.filter((x) => x.rootfs)) imageSel.appendChild(h('option', { value: i.name }, `Copy of image ${i.name}`));
    },
    () => undefined,
  );

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    formError.textContent = '';
    const spec: CreateVolume = { name: nameIn.value.trim() };
    // Validation is the API's: an empty size without an image is its 400 (sizeMiB).
    const size = sizeIn.value.trim();
    if (imageSel.value) spec.fromImage = imageSel.value;
    if (size !== '') spec.sizeMiB = Number(size);
    submit.disabled = true;
    submit.textContent = 'Creating…';
    try {
      const v = await app.api.createVolume(spec);
      status.textContent = `Created ${v.name}.`;
      nameIn.value = '';
      await load();
    } catch (err) {
      formError.textContent = err instanceof ApiError ? (err.status === 400 || err.status === 409 ? err.message : err.describe()) : String(err);
      if (err instanceof ApiError && err.status === 401) app.reportError('Create volume', err);
    } finally {
      submit.disabled = false;
      submit.textContent = 'Create volume';
    }
  });

  void load();
  const el = h(
    'main',
    { id: 'main', class: 'page' },
    h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All VMs')),
    h('div', { class: 'page-head' }, h('div', { class: 'title' }, heading)),
    status,
    h('div', { class: 'table-wrap' }, table),
    form,
  );
  return { el, focus: heading, destroy: () => undefined };
}
