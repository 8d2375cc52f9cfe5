// Accessible tabs (WAI-ARIA tabs pattern): role=tablist/tab/tabpanel, aria-selected, a roving
// tabindex, and Left/Right/Home/End to move between tabs (selection follows focus).
import { h } from '../dom.js';

export interface TabDef {
  id: string;
  label: string;
  panel: HTMLElement;
  onShow?: () => void;
}

export class Tabs {
  readonly list: HTMLElement;
  readonly panels: HTMLElement;
  private readonly tabs = new Map<string, { btn: HTMLButtonElement; panel: HTMLElement; def: TabDef }>();
  selected = '';

  constructor(label: string, defs: TabDef[]) {
    this.list = h('div', { class: 'tabs', role: 'tablist', 'aria-label': label });
    this.panels = h('div', { class: 'tab-panels' });
    for (const def of defs) {
      const btn = h('button', { type: 'button', role: 'tab', id: `tab-${def.id}`, 'aria-controls': `panel-${def.id}`, 'aria-selected': 'false', tabindex: '-1', 'data-tab': def.id }, def.label);
      const panel = h('div', { role: 'tabpanel', id: `panel-${def.id}`, 'aria-labelledby': `tab-${def.id}`, class: 'tab-panel', hidden: true }, def.panel);
      btn.addEventListener('click', () => this.select(def.id));
      btn.addEventListener('keydown', (e) => this.onKey(e, def.id));
      this.list.appendChild(btn);
      this.panels.appendChild(panel);
      this.tabs.set(def.id, { btn, panel, def });
    }
    if (defs[0]) this.select(defs[0].id);
  }

  select(id: string, focus = false): void {
    const t = this.tabs.get(id);
    if (!t) return;
    this.selected = id;
    for (const [k, o] of this.tabs) {
      const on = k === id;
      o.btn.setAttribute('aria-selected', String(on));
      o.btn.tabIndex = on ? 0 : -1;
      o.panel.hidden = !on;
    }
    if (focus) t.btn.focus();
    t.def.onShow?.();
  }

  /** Shows or hides the tab strip; hidden, only the first panel shows. */
  setEnabled(on: boolean): void {
    this.list.hidden = !on;
    if (!on) {
      const first = this.tabs.keys().next().value;
      if (first !== undefined && this.selected !== first) this.select(first);
    }
  }

  private onKey(e: KeyboardEvent, id: string): void {
    const ids = [...this.tabs.keys()];
    const i = ids.indexOf(id);
    let next = -1;
    if (e.key === 'ArrowRight') next = (i + 1) % ids.length;
    else if (e.key === 'ArrowLeft') next = (i - 1 + ids.length) % ids.length;
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = ids.length - 1;
    if (next < 0) return;
    e.preventDefault();
    this.select(ids[next]!, true);
  }
}
