// The serial console over WebSocket: raw bytes both ways, any number of viewers.
// Limits (docs/api.md): inbound messages up to CONSOLE_MAX_MESSAGE bytes (keystrokes and
// pastes); a viewer is paused while the guest does not read its input, and disconnected
// (close 4008) once more than VIEWER_MAX_BUFFERED bytes of output wait for it.
import type { Context } from 'hono';
import type { WebSocket } from 'ws';
import { errorResponse } from './errors.js';
import { inboundGate, socketLimit } from './events.js';
import { notUpgradeError, upgradeWebSocket, type SocketLimiter } from './websocket.js';
import { newRouter, type AppDeps, type AppEnv } from './app.js';
import type { ApiRateLimits } from '../auth/middleware.js';
import type { TokenRecord } from '../db/tokens.js';
import type { ConsoleCloseReason, ConsoleViewer } from '../console/bridge.js';

export const CONSOLE_MAX_MESSAGE = 64 * 1024;
/** Close code for a viewer that fell too far behind (4000-4999: application codes). */
export const CLOSE_TOO_SLOW = 4008;

const closeFor: Record<ConsoleCloseReason, [number, string]> = {
  'vm-stopped': [1000, 'VM stopped'],
  'too-slow': [CLOSE_TOO_SLOW, 'console viewer too slow: more than 1 MiB of output unread'],
};

/** A console viewer on a WebSocket: output as binary frames, closes with the reason's code. */
export function socketViewer(ws: WebSocket): ConsoleViewer {
  return {
    write: (d) => ws.send(d, { binary: true }),
    bufferedAmount: () => ws.bufferedAmount,
    close: (reason) => {
      const [code, text] = closeFor[reason];
      ws.close(code, text);
      // A viewer that does not read will not read the close frame either.
      if (reason === 'too-slow') setTimeout(() => ws.terminate(), 1000).unref();
    },
  };
}

export function consoleRoutes(deps: AppDeps, limits: ApiRateLimits, sockets: SocketLimiter) {
  const router = newRouter();
  router.get('/vms/:id/console', async (c, next) => {
    const notUpgrade = notUpgradeError(c);
    if (notUpgrade) return notUpgrade;
    const id = c.req.param('id') ?? '';
    if (!deps.vms.get(id)) return errorResponse(c, 404, 'not_found', `no VM with id ${id}`);
    if (!deps.supervisor.console(id)) return errorResponse(c, 409, 'not_running', `VM ${id} is not running: its console is closed`);
    return next();
  }, upgradeWebSocket({ maxPayload: CONSOLE_MAX_MESSAGE, limit: socketLimit(sockets) }, (c: Context<AppEnv>) => {
    const id = c.req.param('id')!;
    // Keystrokes change the guest: a read token watches the console but does not type.
    const readOnly = (c.get('token') as TokenRecord).scope === 'read';
    let toldReadOnly = false;
    const gate = inboundGate(c, limits, (ws) => ws.send(Buffer.from('\r\n[capsule: input rate limited]\r\n')));
    let detach: (() => void) | undefined;
    return {
      onOpen: (ws: WebSocket) => {
        deps.metrics.socketOpened('console');
        const bridge = deps.supervisor.console(id);
        if (!bridge) return ws.close(1011, 'console closed');
        detach = bridge.attach(socketViewer(ws));
      },
      onMessage: (data: Buffer, _binary: boolean, ws: WebSocket) => {
        if (readOnly) {
          if (!toldReadOnly) ws.send(Buffer.from("\r\n[capsule: token scope 'read': input ignored]\r\n"));
          toldReadOnly = true;
          return;
        }
        if (!gate(ws)) return;
        const bridge = deps.supervisor.console(id);
        if (bridge && !bridge.input(data)) {
          // The guest is not reading: stop reading this viewer (TCP pushes back to it) until it drains.
          ws.pause();
          bridge.onDrain(() => ws.resume());
        }
      },
      onClose: () => {
        deps.metrics.socketClosed('console');
        detach?.();
      },
    };
  }));
  return router;
}
