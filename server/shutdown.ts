// Graceful shutdown on SIGTERM/SIGINT: stop accepting, let the requests in flight finish (a VM
// start that is under way completes and its client gets the answer), close WebSockets with 1001,
// then detach from the VMMs, which keep running (the next start reattaches them), and exit.
// A second signal, or CAPSULE_SHUTDOWN_TIMEOUT passing, cuts the wait short.
import type { Server } from 'node:http';
import type { Logger } from 'pino';

/** Counts HTTP requests between their arrival and the end of their answer. */
export function trackInFlight(server: Server): () => number {
  let inFlight = 0;
  server.on('request', (_req, res) => {
    inFlight++;
    res.once('close', () => { inFlight--; });
  });
  return () => inFlight;
}

export interface ShutdownDeps {
  server: Server;
  inFlight: () => number;
  /** Closes every open WebSocket with this code and reason. */
  closeSockets: (code: number, reason: string) => void;
  /** Runs once the requests have finished (detach from the VMMs, close the database). */
  finish: () => void;
  timeoutMs: number;
  log: Logger;
}

/** WebSocket close code "going away" (RFC 6455): the server is shutting down. */
export const CLOSE_GOING_AWAY = 1001;

export function installShutdown(d: ShutdownDeps): void {
  let started = false;
  const shutdown = async (signal: string) => {
    if (started) {
      d.log.warn({ signal, inFlight: d.inFlight() }, 'second signal: exiting without waiting for the requests in flight');
      d.finish();
      process.exit(1);
    }
    started = true;
    d.log.info({ signal, inFlight: d.inFlight() }, 'shutting down: no new connections; finishing the requests in flight; VMs keep running and are reattached at the next start');
    // No new connections; idle keep-alive connections go now, busy ones once their answer is sent.
    d.server.close();
    d.server.closeIdleConnections();
    d.closeSockets(CLOSE_GOING_AWAY, 'server shutting down');
    const deadline = Date.now() + d.timeoutMs;
    while (d.inFlight() > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      d.server.closeIdleConnections();
    }
    if (d.inFlight() > 0) d.log.warn({ inFlight: d.inFlight() }, 'CAPSULE_SHUTDOWN_TIMEOUT passed: exiting with requests still in flight');
    d.server.closeAllConnections();
    d.finish();
    d.log.info('shut down');
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}
