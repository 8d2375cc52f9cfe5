import { h } from '../dom.js';

/** A state badge: colour plus text, so it does not rely on colour alone. */
export function stateBadge(state: string): HTMLElement {
  return h('span', { class: `state state-${state}`, 'data-state': state }, state);
}

export function setBadge(el: HTMLElement, state: string): void {
  el.className = `state state-${state}`;
  el.dataset['state'] = state;
  el.textContent = state;
}
