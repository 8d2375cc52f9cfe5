// The Files tab: browse the guest's filesystem through the agent (GET/PUT/DELETE
// /v1/vms/:id/files?path=, POST …/files/mkdir; docs/api.md). A path bar, a listing (folders
// open on click, "Up" goes to the parent), a download per file (fetched with the token, saved
// from a Blob URL: a plain link could not carry the Authorization header), an upload (the file
// is the PUT body, streamed by the browser), a new folder, and a delete that asks to confirm.
import { ApiError, type FileEntry } from '../api.js';
import type { App } from '../app.js';
import { h, fmtTime, uid } from '../dom.js';

export const HOME = '/home/user';

export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return '—';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** `dir` + `name` as one absolute path ("/" stays single). */
export function joinPath(dir: string, name: string): string {
  if (name.startsWith('/')) return name;
  return `${dir.replace(/\/+$/, '')}/${name}`;
}

export function parentPath(p: string): string {
  const t = p.replace(/\/+$/, '');
  if (t === '') return '/';
  const i = t.lastIndexOf('/');
  return i <= 0 ? '/' : t.slice(0, i);
}

export class FilesPanel {
  readonly el: HTMLElement;
  private path = HOME;
  private entries: FileEntry[] = [];
  private truncated = false;
  private loaded = false;
  private busy = false;
  private armed: string | null = null;
  private armTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly pathInput: HTMLInputElement;
  private readonly upBtn: HTMLButtonElement;
  private readonly body = h('tbody');
  private readonly status = h('p', { class: 'hint', role: 'status', 'aria-live': 'polite' });
  private readonly errorEl = h('p', { class: 'form-error', role: 'alert', hidden: true });
  private readonly fileInput: HTMLInputElement;
  private readonly uploadBtn: HTMLButtonElement;
  private readonly dirInput: HTMLInputElement;
  private readonly mkdirBtn: HTMLButtonElement;

  constructor(private readonly app: App, private readonly vmId: string) {
    const pathId = uid('files-path');
    const fileId = uid('files-upload');
    const dirId = uid('files-mkdir');
    this.pathInput = h('input', { id: pathId, type: 'text', class: 'mono', value: HOME, autocomplete: 'off', spellcheck: 'false' });
    this.upBtn = h('button', { type: 'button', 'aria-label': 'Up to the parent folder' }, '↑ Up');
    const pathForm = h(
      'form',
      { class: 'inline-form', novalidate: true },
      h('div', { class: 'grow' }, h('label', { for: pathId }, 'Path'), this.pathInput),
      h('button', { type: 'submit' }, 'Go'),
      this.upBtn,
    );
    pathForm.addEventListener('submit', (e) => {
      e.preventDefault();
      void this.load(this.pathInput.value.trim() || HOME);
    });
    this.upBtn.addEventListener('click', () => void this.load(parentPath(this.path)));

    this.fileInput = h('input', { id: fileId, type: 'file', multiple: true });
    this.uploadBtn = h('button', { type: 'submit' }, 'Upload');
    const uploadForm = h(
      'form',
      { class: 'inline-form', novalidate: true },
      h('div', { class: 'grow' }, h('label', { for: fileId }, 'Upload to this folder'), this.fileInput),
      this.uploadBtn,
    );
    uploadForm.addEventListener('submit', (e) => {
      e.preventDefault();
      void this.upload();
    });
    this.dirInput = h('input', { id: dirId, type: 'text', autocomplete: 'off', spellcheck: 'false' });
    this.mkdirBtn = h('button', { type: 'submit' }, 'Make folder');
    const mkdirForm = h(
      'form',
      { class: 'inline-form', novalidate: true },
      h('div', { class: 'grow' }, h('label', { for: dirId }, 'New folder'), this.dirInput),
      this.mkdirBtn,
    );
    mkdirForm.addEventListener('submit', (e) => {
      e.preventDefault();
      void this.mkdir();
    });

    const table = h(
      'table',
      { class: 'vms files' },
      h('caption', { class: 'visually-hidden' }, 'Files in the folder'),
      h(
        'thead',
        null,
        h('tr', null, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Type'), h('th', { scope: 'col' }, 'Size'), h('th', { scope: 'col' }, 'Modified'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions'))),
      ),
      this.body,
    );
    this.el = h(
      'section',
      { class: 'files-panel card', 'aria-labelledby': 'files-h' },
      h('div', { class: 'section-head' }, h('h2', { id: 'files-h' }, 'Files')),
      pathForm,
      this.errorEl,
      h('div', { class: 'table-wrap files-wrap' }, table),
      this.status,
      h('div', { class: 'files-forms' }, uploadForm, mkdirForm),
    );
    this.render();
  }

  /** Loads the listing the first time the tab is shown. */
  show(): void {
    if (!this.loaded && !this.busy) void this.load(this.path);
  }

  private showError(e: unknown): void {
    const msg = e === '' ? '' : e instanceof ApiError ? e.describe() : String(e instanceof Error ? e.message : e);
    this.errorEl.textContent = msg;
    this.errorEl.hidden = !msg;
    if (e instanceof ApiError && e.status === 401) this.app.reportError('Files', e);
  }

  private setBusy(on: boolean): void {
    this.busy = on;
    this.el.dataset['busy'] = String(on);
    this.uploadBtn.disabled = this.mkdirBtn.disabled = on;
  }

  /** Lists `path`; `note` (what was just done) goes before the count in the status line. */
  async load(path: string, note = ''): Promise<void> {
    this.setBusy(true);
    this.status.textContent = `Loading ${path}…`;
    try {
      const l = await this.app.api.listDir(this.vmId, path);
      this.path = l.path || path;
      this.entries = [...l.entries].sort((a, b) => (a.type === 'dir' ? 0 : 1) - (b.type === 'dir' ? 0 : 1) || a.name.localeCompare(b.name));
      this.truncated = !!l.truncated;
      this.loaded = true;
      this.pathInput.value = this.path;
      this.showError('');
      this.status.textContent = `${note ? note + ' ' : ''}${this.entries.length} item${this.entries.length === 1 ? '' : 's'} in ${this.path}${this.truncated ? ' (the listing was cut short)' : ''}`;
    } catch (e) {
      this.showError(e);
      this.status.textContent = note;
      this.pathInput.value = this.path;
    } finally {
      this.setBusy(false);
      this.render();
    }
  }

  private render(): void {
    this.upBtn.disabled = this.path === '/';
    this.el.dataset['path'] = this.path;
    if (!this.loaded) {
      this.body.replaceChildren(h('tr', null, h('td', { colspan: '5', class: 'hint' }, 'Not loaded yet.')));
      return;
    }
    if (this.entries.length === 0) {
      this.body.replaceChildren(h('tr', null, h('td', { colspan: '5', class: 'hint' }, 'This folder is empty.')));
      return;
    }
    this.body.replaceChildren(...this.entries.map((f) => this.row(f)));
  }

  private row(f: FileEntry): HTMLElement {
    const full = f.path || joinPath(this.path, f.name);
    let name: HTMLElement;
    if (f.type === 'dir') {
      name = h('button', { type: 'button', class: 'linkish', 'aria-label': `Open folder ${f.name}` }, `${f.name}/`);
      name.addEventListener('click', () => void this.load(full));
    } else {
      name = h('span', null, f.name, f.type === 'symlink' && f.target ? h('span', { class: 'hint' }, ` → ${f.target}`) : null);
    }
    const actions = h('div', { class: 'actions' });
    if (f.type === 'file') {
      const dl = h('button', { type: 'button', class: 'small', 'aria-label': `Download ${f.name}` }, 'Download');
      dl.addEventListener('click', () => void this.download(f, dl));
      actions.appendChild(dl);
    }
    const armed = this.armed === full;
    const del = h('button', { type: 'button', class: `small danger${armed ? ' armed' : ''}`, 'aria-label': armed ? `Confirm delete ${f.name}` : `Delete ${f.name}` }, armed ? 'Confirm delete' : 'Delete');
    del.addEventListener('click', () => void this.remove(full, f.name));
    actions.appendChild(del);
    return h(
      'tr',
      { 'data-file-name': f.name, 'data-file-type': f.type },
      h('th', { scope: 'row', class: 'file-name' }, name),
      h('td', { 'data-label': 'Type' }, f.type),
      h('td', { 'data-label': 'Size', class: 'nowrap' }, f.type === 'dir' ? '—' : fmtBytes(f.size)),
      h('td', { 'data-label': 'Modified', class: 'nowrap' }, fmtTime(f.mtime)),
      h('td', { class: 'row-actions' }, actions),
    );
  }

  private async download(f: FileEntry, btn: HTMLButtonElement): Promise<void> {
    btn.disabled = true;
    btn.classList.add('busy');
    this.status.textContent = `Downloading ${f.name}…`;
    try {
      const blob = await this.app.api.download(this.vmId, f.path || joinPath(this.path, f.name));
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: f.name, hidden: true });
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      this.status.textContent = `Downloaded ${f.name} (${fmtBytes(blob.size)}).`;
      this.showError('');
    } catch (e) {
      this.showError(e);
      this.status.textContent = '';
    } finally {
      btn.disabled = false;
      btn.classList.remove('busy');
    }
  }

  private async upload(): Promise<void> {
    const files = [...(this.fileInput.files ?? [])];
    if (files.length === 0) {
      this.showError('Choose a file to upload first.');
      return;
    }
    this.setBusy(true);
    this.showError('');
    const dir = this.path;
    let note = '';
    try {
      for (const file of files) {
        this.status.textContent = `Uploading ${file.name} (${fmtBytes(file.size)})…`;
        await this.app.api.upload(this.vmId, joinPath(dir, file.name), file);
      }
      this.fileInput.value = '';
      note = `Uploaded ${files.map((f) => f.name).join(', ')}.`;
    } catch (e) {
      this.showError(e);
      this.status.textContent = '';
      return;
    } finally {
      this.setBusy(false);
    }
    await this.load(dir, note);
  }

  private async mkdir(): Promise<void> {
    const name = this.dirInput.value.trim();
    if (!name) {
      this.showError('Type a name for the new folder.');
      this.dirInput.focus();
      return;
    }
    this.setBusy(true);
    const dir = this.path;
    let note = '';
    try {
      const r = await this.app.api.mkdir(this.vmId, joinPath(dir, name));
      this.dirInput.value = '';
      this.showError('');
      note = r.created === false ? `${r.path} was already there.` : `Made ${r.path}.`;
    } catch (e) {
      this.showError(e);
      return;
    } finally {
      this.setBusy(false);
    }
    await this.load(dir, note);
  }

  /** The first click arms (the button says "Confirm delete" for 5 s); the second deletes. */
  private async remove(full: string, name: string): Promise<void> {
    if (this.armed !== full) {
      this.disarm();
      this.armed = full;
      this.armTimer = setTimeout(() => {
        this.disarm();
        this.render();
      }, 5000);
      this.render();
      this.body.querySelector<HTMLButtonElement>(`tr[data-file-name="${CSS.escape(name)}"] button.danger`)?.focus();
      return;
    }
    this.disarm();
    this.setBusy(true);
    const dir = this.path;
    try {
      await this.app.api.deletePath(this.vmId, full);
      this.showError('');
    } catch (e) {
      this.showError(e);
      return;
    } finally {
      this.setBusy(false);
    }
    await this.load(dir, `Deleted ${full}.`);
  }

  private disarm(): void {
    this.armed = null;
    if (this.armTimer) clearTimeout(this.armTimer);
    this.armTimer = null;
  }

  destroy(): void {
    this.disarm();
  }
}
