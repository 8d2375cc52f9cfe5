// The VM page's drives: the VM's volumes in guest order, detach buttons, and a form to attach
// a volume (to the definition of a stopped VM, hot-plugged into a running one).
import { ApiError, type Vm, type Volume } from '../api.js';
import type { App } from '../app.js';
import { h, uid } from '../dom.js';

export class DrivesCard {
  readonly el: HTMLElement;
  private readonly list = h('ul', { class: 'drives', 'aria-live': 'polite' });
  private readonly status = h('p', { class: 'hint', role: 'status' });
  private readonly volumeSel = h('select', null, h('option', { value: '' }, 'Loading volumes…'));
  private readonly roBox = h('input', { type: 'checkbox' });
  private readonly attachBtn = h('button', { type: 'submit', class: 'small' }, 'Attach');
  private vm: Vm;
  private busy = false;

  constructor(private readonly app: App, vm: Vm) {
    this.vm = vm;
    const selId = uid('drive-volume');
    const roId = uid('drive-ro');
    this.volumeSel.id = selId;
    this.roBox.id = roId;
    const form = h(
      'form',
      { class: 'attach', novalidate: true },
      h('label', { for: selId }, 'Volume'),
      this.volumeSel,
      h('label', { class: 'check', for: roId }, this.roBox, ' read-only'),
      this.attachBtn,
    );
    form.addEventListener('submit', (e) => { e.preventDefault(); void this.attach(); });
    this.el = h(
      'section',
      { class: 'card', 'aria-labelledby': 'drives-h' },
      h('div', { class: 'section-head' }, h('h2', { id: 'drives-h' }, 'Drives'), h('div', { class: 'spacer' }), h('a', { href: '#/volumes', class: 'small' }, 'Volumes')),
      this.list,
      form,
      this.status,
    );
    this.render();
    void this.loadVolumes();
  }

  update(vm: Vm): void {
    this.vm = vm;
    this.render();
  }

  private render(): void {
    const drives = this.vm.drives ?? [];
    this.list.replaceChildren(
      ...drives.map((d) => {
        const detach = h('button', { type: 'button', class: 'small', 'data-drive': d.id, disabled: d.state !== 'attached' || this.busy }, 'Detach');
        detach.setAttribute('aria-label', `Detach ${d.id} (${d.volumeName})`);
        detach.addEventListener('click', () => void this.detach(d.id));
        return h(
          'li',
          { 'data-drive-id': d.id, 'data-volume': d.volumeName },
          h('span', { class: 'mono' }, d.id),
          h('span', { class: 'vol' }, d.volumeName),
          h('span', { class: 'hint' }, `${d.readOnly ? 'read-only' : 'read-write'}, cache ${d.cache}${d.iops ? `, ${d.iops} IOPS` : ''}${d.state !== 'attached' ? ` — ${d.state}` : ''}`),
          detach,
        );
      }),
    );
    if (drives.length === 0) this.list.appendChild(h('li', { class: 'hint' }, 'No drives.'));
    this.attachBtn.disabled = this.busy;
  }

  private async loadVolumes(): Promise<void> {
    let vols: Volume[];
    try {
      vols = await this.app.api.listVolumes();
    } catch (e) {
      this.volumeSel.replaceChildren(h('option', { value: '' }, 'Volumes unavailable'));
      if (e instanceof ApiError && e.status === 401) this.app.reportError('Volumes', e);
      return;
    }
    this.volumeSel.replaceChildren(
      h('option', { value: '' }, vols.length ? 'Choose a volume' : 'No volumes yet'),
      ...vols.map((v) => h('option', { value: v.name }, `${v.name} (${v.sizeMiB} MiB${v.attachments.length ? `, in use by ${v.attachments.map((a) => a.vmName).join(', ')}` : ''})`)),
    );
  }

  private async attach(): Promise<void> {
    const volume = this.volumeSel.value;
    if (!volume) {
      this.status.textContent = 'Choose a volume first.';
      return;
    }
    await this.run(`Attaching ${volume}…`, async () => {
      const d = await this.app.api.attachDrive(this.vm.id, { volume, readOnly: this.roBox.checked });
      this.status.textContent = `Attached ${volume} as ${d.id}.`;
    });
    void this.loadVolumes();
  }

  private async detach(driveId: string): Promise<void> {
    await this.run(`Detaching ${driveId}…`, async () => {
      await this.app.api.detachDrive(this.vm.id, driveId);
      this.status.textContent = `Detached ${driveId}.`;
    });
    void this.loadVolumes();
  }

  private async run(what: string, fn: () => Promise<void>): Promise<void> {
    this.busy = true;
    this.status.textContent = what;
    this.render();
    try {
      await fn();
    } catch (e) {
      this.status.textContent = e instanceof ApiError ? e.describe() : String(e);
      if (e instanceof ApiError && e.status === 401) this.app.reportError('Drives', e);
    } finally {
      this.busy = false;
      // The events update the store; a fresh copy also covers a 504 (the drive is "detaching").
      try { this.app.store.upsert(await this.app.api.getVm(this.vm.id)); } catch { /* the page shows what it has */ }
      this.render();
    }
  }
}
