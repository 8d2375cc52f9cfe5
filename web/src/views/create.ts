// Create a VM. Validation is the API's: its 400 `field` puts the message beside that field.
import { ApiError, type CreateVm } from '../api.js';
import type { App, View } from '../app.js';
import { h, uid } from '../dom.js';

type FieldName = 'name' | 'image' | 'vcpus' | 'memoryMiB' | 'hypervisor' | 'cmdline' | 'drives';

interface Field {
  input: HTMLInputElement | HTMLSelectElement;
  error: HTMLElement;
  wrap: HTMLElement;
}

/** Map an API `field` ("vcpus", "body.vcpus", "/memoryMiB", "memory_mib") to a form field. */
export function matchField(field: string | undefined): FieldName | null {
  if (!field) return null;
  if (/^drives\b/.test(field)) return 'drives';
  const last = field.split(/[./[\]]/).filter(Boolean).pop() ?? '';
  const norm = last.toLowerCase().replace(/[_-]/g, '');
  const names: FieldName[] = ['name', 'image', 'vcpus', 'memoryMiB', 'hypervisor', 'cmdline'];
  return names.find((n) => n.toLowerCase() === norm) ?? (norm === 'memory' || norm === 'memorymb' ? 'memoryMiB' : null);
}

export function createView(app: App, navigate: (hash: string) => void): View {
  const fields = new Map<FieldName, Field>();
  const heading = h('h1', { tabindex: '-1' }, 'New virtual machine');
  const formError = h('div', { class: 'form-error', role: 'alert', hidden: true });

  function field(name: FieldName, label: string, input: HTMLInputElement | HTMLSelectElement, hint?: string): HTMLElement {
    const id = uid(`f-${name}`);
    input.id = id;
    input.name = name;
    const error = h('p', { id: `${id}-error`, class: 'field-error', 'data-field-error': name });
    const hintEl = hint ? h('p', { id: `${id}-hint`, class: 'hint' }, hint) : null;
    input.setAttribute('aria-describedby', [hintEl ? `${id}-hint` : '', `${id}-error`].filter(Boolean).join(' '));
    const wrap = h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl, error);
    fields.set(name, { input, error, wrap });
    input.addEventListener('input', () => setError(name, ''));
    return wrap;
  }

  function setError(name: FieldName, msg: string): void {
    const f = fields.get(name);
    if (!f) return;
    f.error.textContent = msg;
    f.wrap.classList.toggle('invalid', !!msg);
    if (msg) f.input.setAttribute('aria-invalid', 'true');
    else f.input.removeAttribute('aria-invalid');
  }

  const nameIn = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. web-1' });
  const imageSel = h('select', null, h('option', { value: 'default' }, 'default'));
  const vcpusIn = h('input', { type: 'number', inputmode: 'numeric', value: '1', min: '1', step: '1' });
  const memIn = h('input', { type: 'number', inputmode: 'numeric', value: '256', min: '1', step: '1' });
  const hvSel = h('select', null, h('option', { value: '' }, 'Server default'));
  const cmdIn = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'extra kernel command line' });
  const driveSel = h('select', null, h('option', { value: '' }, 'None'));
  const driveRo = h('input', { type: 'checkbox', id: uid('f-drive-ro') });
  const imageHint = h('span', null);
  const hvHint = h('span', null);
  const hvHintP = h('p', { class: 'hint image-desc' }, hvHint);
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create VM');

  const form = h(
    'form',
    { class: 'card create', novalidate: true },
    heading,
    formError,
    field('name', 'Name', nameIn),
    field('image', 'Image', imageSel),
    h('p', { class: 'hint image-desc' }, imageHint),
    h('div', { class: 'row2' }, field('vcpus', 'vCPUs', vcpusIn), field('memoryMiB', 'Memory (MiB)', memIn)),
    field('hypervisor', 'Backend', hvSel, 'The VMM that runs the guest.'),
    field('drives', 'Drive', driveSel, 'A volume to attach as the first drive. More can be attached later.'),
    h('label', { class: 'check', for: driveRo.id }, driveRo, ' read-only'),
    hvHintP,
    h('details', null, h('summary', null, 'Advanced'), field('cmdline', 'Kernel command line', cmdIn, 'Appended to the image’s command line. Optional.')),
    h('div', { class: 'form-actions' }, h('a', { class: 'button', href: '#/' }, 'Cancel'), submit),
  );

  // Options from the server.
  let images: { name: string; description?: string }[] = [];
  const showImageDesc = (): void => {
    imageHint.textContent = images.find((i) => i.name === imageSel.value)?.description ?? '';
  };
  imageSel.addEventListener('change', showImageDesc);
  app.api.images().then(
    (items) => {
      images = items;
      const cur = imageSel.value;
      imageSel.replaceChildren(...items.map((i) => h('option', { value: i.name }, i.name)));
      if (items.some((i) => i.name === cur)) imageSel.value = cur;
      showImageDesc();
    },
    (e) => app.reportError('Could not load images', e),
  );
  app.api.listVolumes().then(
    (vols) => driveSel.append(...vols.map((v) => h('option', { value: v.name }, `${v.name} (${v.sizeMiB} MiB)`))),
    () => undefined,
  );
  app.api.health().then(
    (hl) => {
      if (hl.defaultHypervisor) hvSel.options[0]!.textContent = `Server default (${hl.defaultHypervisor})`;
      for (const hv of hl.hypervisors ?? []) {
        const label = hv === 'native' ? 'native (capsule VMM, KVM)' : hv === 'qemu' ? `qemu${hl.kvm ? ' (KVM)' : ' (TCG, slow)'}` : hv;
        hvSel.appendChild(h('option', { value: hv }, label));
      }
      // Backends the server knows but cannot use here: listed, disabled, with the reason.
      const unusable = Object.entries(hl.details ?? {}).filter(([hv]) => !(hl.hypervisors ?? []).includes(hv));
      for (const [hv, why] of unusable) hvSel.appendChild(h('option', { value: hv, disabled: true }, `${hv} — unavailable: ${why}`));
      hvHint.textContent = unusable.length ? `Unavailable here: ${unusable.map(([hv, why]) => `${hv} (${why})`).join('; ')}` : '';
    },
    (e) => app.reportError('Could not load backends', e),
  );

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    for (const n of fields.keys()) setError(n, '');
    formError.hidden = true;
    const spec: CreateVm = {
      name: nameIn.value.trim(),
      image: imageSel.value,
      vcpus: toNumber(vcpusIn.value),
      memoryMiB: toNumber(memIn.value),
    };
    if (hvSel.value) spec.hypervisor = hvSel.value;
    if (cmdIn.value.trim()) spec.cmdline = cmdIn.value.trim();
    if (driveSel.value) spec.drives = [{ volume: driveSel.value, readOnly: driveRo.checked }];
    submit.disabled = true;
    submit.textContent = 'Creating…';
    form.setAttribute('aria-busy', 'true');
    try {
      const vm = await app.api.createVm(spec);
      app.store.upsert(vm);
      app.notify(`Created ${vm.name}.`);
      navigate(`#/vms/${encodeURIComponent(vm.id)}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return app.reportError('Create', err);
      const name = err instanceof ApiError ? matchField(err.field) : null;
      const msg = err instanceof ApiError ? (err.status === 400 || err.status === 409 ? err.message : err.describe()) : String(err);
      if (name) {
        const f = fields.get(name)!;
        if (name === 'cmdline') (f.wrap.closest('details') as HTMLDetailsElement | null)?.setAttribute('open', '');
        setError(name, msg);
        f.input.focus();
      } else {
        formError.textContent = `Could not create the VM: ${msg}`;
        formError.hidden = false;
        formError.focus();
      }
    } finally {
      submit.disabled = false;
      submit.textContent = 'Create VM';
      form.removeAttribute('aria-busy');
    }
  });
  formError.tabIndex = -1;

  const el = h('main', { id: 'main', class: 'page narrow' }, h('p', { class: 'crumbs' }, h('a', { href: '#/' }, '← All VMs')), form);
  return { el, focus: nameIn, destroy: () => undefined };
}

/** The number typed; NaN (sent as null) when it is not one, so the API reports the field. */
function toNumber(v: string): number {
  const t = v.trim();
  return t === '' ? NaN : Number(t);
}
