// The VM's listening guest ports (GET /v1/vms/:id/ports), each with its proxy path
// (/v1/vms/:id/ports/:port/). The card stays hidden on a server without the route (404).
// The proxy wants the API token in an Authorization header: the server takes ?access_token=
// only on WebSocket upgrades (auth/middleware.ts), so a plain link could not sign in; the card
// shows the URL and a curl line to copy instead.
import { ApiError, type GuestPort } from '../api.js';
import type { App } from '../app.js';
import { h } from '../dom.js';

export class PortsCard {
  readonly el: HTMLElement;
  private readonly list = h('ul', { class: 'ports', 'aria-live': 'polite' });
  private readonly status = h('p', { class: 'hint', role: 'status' });
  private readonly refreshBtn = h('button', { type: 'button', class: 'small' }, 'Refresh');
  private busy = false;

  constructor(private readonly app: App, private readonly vmId: string) {
    this.el = h(
      'section',
      { class: 'card', 'aria-labelledby': 'ports-h', hidden: true },
      h('div', { class: 'section-head' }, h('h2', { id: 'ports-h' }, 'Ports'), h('div', { class: 'spacer' }), this.refreshBtn),
      this.list,
      h('p', { class: 'hint' }, 'The proxy needs the API token in an Authorization header (a browser link cannot send it): use the curl line, or a client that sets the header.'),
      this.status,
    );
    this.refreshBtn.addEventListener('click', () => void this.load());
  }

  /** Hides the card (the VM stopped, its agent went away). */
  hide(): void {
    this.el.hidden = true;
  }

  async load(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    this.refreshBtn.disabled = true;
    let ports: GuestPort[] | null;
    try {
      ports = await this.app.api.ports(this.vmId);
    } catch (e) {
      this.status.textContent = e instanceof ApiError ? `Could not list the ports: ${e.describe()}` : String(e);
      if (e instanceof ApiError && e.status === 401) this.app.reportError('Ports', e);
      this.el.hidden = false;
      return;
    } finally {
      this.busy = false;
      this.refreshBtn.disabled = false;
    }
    if (ports === null) {
      this.el.hidden = true;
      return;
    }
    this.el.hidden = false;
    this.status.textContent = '';
    const origin = new URL(this.app.api.base || '/', location.href);
    this.list.replaceChildren(
      ...[...ports].sort((a, b) => a.port - b.port).map((p) => {
        const url = new URL(p.path, origin).toString();
        return h(
          'li',
          { 'data-port': p.port },
          h('span', { class: 'port-num' }, String(p.port)),
          h('code', { class: 'port-url' }, url),
          h('code', { class: 'port-curl' }, `curl -H "Authorization: Bearer $CAPSULE_TOKEN" ${url}`),
        );
      }),
    );
    if (ports.length === 0) this.list.appendChild(h('li', { class: 'hint' }, 'No listening ports.'));
  }
}
