// The serial console over WebSocket: raw bytes both ways, any number of viewers.
import type { Context } from 'hono';
import type { UpgradeWebSocket, WSContext } from 'hono/ws';
import type { WebSocket } from 'ws';
import { errorResponse } from './errors.js';
import { inboundAllowed, notUpgradeError } from './events.js';
import { newRouter, type AppDeps, type AppEnv } from './app.js';
import type { BucketMap } from '../util/leaky-bucket.js';

export function consoleRoutes(deps: AppDeps, upgrade: UpgradeWebSocket, buckets: BucketMap) {
  const router = newRouter();
  router.get('/vms/:id/console', async (c, next) => {
    const notUpgrade = notUpgradeError(c);
    if (notUpgrade) return notUpgrade;
    const id = c.req.param('id');
    if (!deps.vms.get(id)) return errorResponse(c, 404, 'not_found', `no VM with id ${id}`);
    if (!deps.supervisor.console(id)) return errorResponse(c, 409, 'not_running', `VM ${id} is not running: its console is closed`);
    return next();
  }, upgrade((c: Context<AppEnv>) => {
    const id = c.req.param('id')!;
    let detach: (() => void) | undefined;
    return {
      onOpen: (_: Event, ws: WSContext) => {
        const raw = ws.raw as WebSocket;
        const bridge = deps.supervisor.console(id);
        if (!bridge) return ws.close(1011, 'console closed');
        detach = bridge.attach({ write: (d) => raw.send(d, { binary: true }), close: () => raw.close(1000, 'VM stopped') });
      },
      onMessage: (evt: MessageEvent, ws: WSContext) => {
        if (!inboundAllowed(c, buckets)) return ws.send(Buffer.from('\r\n[capsule: input rate limited]\r\n'));
        const data = typeof evt.data === 'string' ? Buffer.from(evt.data, 'utf8') : Buffer.from(evt.data as ArrayBuffer);
        deps.supervisor.console(id)?.input(data);
      },
      onClose: () => detach?.(),
    };
  }));
  return router;
}
