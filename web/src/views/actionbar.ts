// Lifecycle buttons for one VM: enabled only where the state allows, busy while in flight,
// two-step confirmation for Delete and Force stop.
import type { Vm } from '../api.js';
import { ACTIONS, canOvertake, isAllowed, type ActionId } from '../actions.js';
import type { App } from '../app.js';
import { h, clear } from '../dom.js';

const COMPACT: readonly ActionId[] = ['start', 'stop', 'pause', 'resume', 'delete'];
const CONFIRM: readonly ActionId[] = ['delete', 'forceStop'];

export class ActionBar {
  readonly el: HTMLElement;
  private readonly buttons = new Map<ActionId, HTMLButtonElement>();
  private readonly errorEl: HTMLElement;
  private armed: ActionId | null = null;
  private armTimer: ReturnType<typeof setTimeout> | null = null;
  private vm: Vm;

  constructor(
    private readonly app: App,
    vm: Vm,
    opts: { compact?: boolean; onDeleted?: () => void } = {},
  ) {
    this.vm = vm;
    const ids = opts.compact ? COMPACT : ACTIONS.map((a) => a.id);
    const group = h('div', { class: 'actions', role: 'group', 'aria-label': `Actions for ${vm.name}` });
    for (const id of ids) {
      const def = ACTIONS.find((a) => a.id === id)!;
      const b = h('button', {
        type: 'button',
        class: def.danger ? 'danger' : '',
        'data-action': id,
      });
      b.addEventListener('click', () => void this.click(id, opts.onDeleted));
      this.buttons.set(id, b);
      group.appendChild(b);
    }
    this.errorEl = h('p', { class: 'field-error action-error', role: 'alert' });
    this.el = h('div', { class: 'actionbar' }, group, this.errorEl);
    this.update(vm);
  }

  update(vm: Vm): void {
    this.vm = vm;
    const busy = this.app.inflight.get(vm.id) ?? [];
    for (const [id, b] of this.buttons) {
      const def = ACTIONS.find((a) => a.id === id)!;
      const allowed = isAllowed(vm.state, id);
      const mine = busy.includes(id);
      b.disabled = !allowed || !canOvertake(busy, id);
      b.setAttribute('aria-busy', String(mine));
      b.classList.toggle('busy', mine);
      b.classList.toggle('armed', this.armed === id);
      const label = mine ? def.busyLabel : this.armed === id ? `Confirm ${def.label.toLowerCase()}` : def.label;
      b.textContent = label;
      b.title = allowed ? '' : `Not possible while ${vm.state}`;
      b.setAttribute('aria-label', `${label} ${vm.name}`);
    }
    const err = this.app.actionErrors.get(vm.id);
    clear(this.errorEl);
    if (err) this.errorEl.textContent = err;
    this.errorEl.hidden = !err;
  }

  private disarm(): void {
    this.armed = null;
    if (this.armTimer) clearTimeout(this.armTimer);
    this.armTimer = null;
  }

  private async click(id: ActionId, onDeleted?: () => void): Promise<void> {
    if (CONFIRM.includes(id) && this.armed !== id) {
      this.disarm();
      this.armed = id;
      this.armTimer = setTimeout(() => {
        this.disarm();
        this.update(this.vm);
      }, 5000);
      this.update(this.vm);
      return;
    }
    this.disarm();
    const ok = await this.app.runAction(this.vm, id);
    if (ok && id === 'delete') onDeleted?.();
  }

  destroy(): void {
    this.disarm();
  }
}
