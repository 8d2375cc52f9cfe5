// A small in-memory stand-in for the capsule API (the contract in docs/web.md), used by
// the fast UI tests: no QEMU, controllable timing, and hooks to drop sockets.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, WebSocket } from 'ws';

type State = 'created' | 'starting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'crashed';
interface Vm {
  id: string; name: string; state: State; image: string; hypervisor: string;
  vcpus: number; memoryMiB: number; pid?: number; createdAt: string; updatedAt: string;
}
interface Ev { seq: number; vm: string | null; event: string; data: unknown; timestamp: string }

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.map': 'application/json',
};

export interface FakeServer {
  url: string;
  token: string;
  vms: Map<string, Vm>;
  events: Ev[];
  /** Make the next N GET /v1/vms fail with 500. */
  failListing(n: number): void;
  /** Close every open events socket (clients should reconnect with ?since). */
  dropEventSockets(): void;
  /** Emit an event as the server would. */
  emit(vm: string | null, event: string, data: unknown): void;
  /** Started VMs stay `starting` until releaseBoots() (a test can act while a VM boots). */
  holdBoots(): void;
  releaseBoots(): void;
  /** Set a VM's state, emitting STATE_CHANGED. */
  setState(id: string, state: State): void;
  close(): Promise<void>;
}

export async function startFakeServer(opts: { webDir: string; token?: string; bootMs?: number }): Promise<FakeServer> {
  const token = opts.token ?? 'test-token';
  const bootMs = opts.bootMs ?? 300;
  const vms = new Map<string, Vm>();
  const events: Ev[] = [];
  let seq = 0;
  let nextId = 1;
  let failListing = 0;
  const eventSubs = new Set<{ ws: WebSocket; vm: string | null }>();
  const consoles = new Map<string, Set<WebSocket>>();
  const lines = new Map<string, string>();

  const now = (): string => new Date().toISOString();
  function emit(vm: string | null, event: string, data: unknown): void {
    const ev: Ev = { seq: ++seq, vm, event, data, timestamp: now() };
    events.push(ev);
    for (const s of eventSubs) if (s.vm === null || s.vm === vm) s.ws.send(JSON.stringify(ev));
  }
  /** What each VM's console printed since its boot: replayed to a viewer that attaches, like the real bridge. */
  const consoleHistory = new Map<string, string>();
  function consoleOut(id: string, text: string): void {
    consoleHistory.set(id, ((consoleHistory.get(id) ?? '') + text).slice(-64 * 1024));
    for (const ws of consoles.get(id) ?? []) ws.send(Buffer.from(text));
  }
  function setState(id: string, state: State): void {
    const vm = vms.get(id);
    if (!vm || vm.state === state) return;
    const previous = vm.state;
    vm.state = state;
    vm.updatedAt = now();
    vm.pid = state === 'running' || state === 'paused' || state === 'starting' ? 4242 : undefined;
    emit(id, 'STATE_CHANGED', { state, previous });
  }
  /** VMs whose boot waits for releaseBoots() (while holdBoots() is on). */
  let holding = false;
  const held: string[] = [];
  function finishBoot(id: string): void {
    if (vms.get(id)?.state !== 'starting') return;
    setState(id, 'running');
    const vm = vms.get(id)!;
    consoleOut(id, `CAPSULE_READY cpus=${vm.vcpus} uptime=0.42\r\ncapsule# `);
  }
  function boot(id: string): void {
    consoleHistory.delete(id);
    setState(id, 'starting');
    if (holding) held.push(id);
    else setTimeout(() => finishBoot(id), bootMs);
  }

  function authed(req: IncomingMessage, url: URL): boolean {
    const h = req.headers.authorization;
    return h === `Bearer ${token}` || url.searchParams.get('access_token') === token;
  }
  function send(res: ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
    if (body === undefined) {
      res.writeHead(status, headers).end();
      return;
    }
    res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
  }
  const err = (res: ServerResponse, status: number, code: string, message: string, field?: string): void =>
    send(res, status, { error: { code, message, ...(field ? { field } : {}) } });

  async function body(req: IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    try {
      return JSON.parse(Buffer.concat(chunks).toString() || '{}');
    } catch {
      return null;
    }
  }

  const ALLOWED: Record<string, State[]> = {
    start: ['created', 'stopped', 'crashed'],
    stop: ['running', 'paused', 'starting'],
    pause: ['running'],
    resume: ['paused'],
    reboot: ['running'],
  };

  const server: Server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const p = url.pathname;
    if (!p.startsWith('/v1/')) {
      const file = p === '/' ? 'index.html' : normalize(p).replace(/^\/+/, '');
      try {
        const data = await readFile(join(opts.webDir, file));
        res.writeHead(200, { 'content-type': MIME[extname(file)] ?? 'application/octet-stream' }).end(data);
      } catch {
        err(res, 404, 'not_found', 'not found');
      }
      return;
    }
    if (p === '/v1/health') return send(res, 200, { status: 'ok', kvm: false, hypervisors: ['qemu'] });
    if (!authed(req, url)) return err(res, 401, 'unauthorized', 'missing or invalid token');
    if (p === '/v1/images') return send(res, 200, { items: [{ name: 'default', description: 'fake image' }] });
    if (p === '/v1/volumes' && req.method === 'GET') return send(res, 200, { items: [] });
    if (p === '/v1/vms' && req.method === 'GET') {
      if (failListing > 0) {
        failListing--;
        return err(res, 500, 'internal', 'internal server error');
      }
      return send(res, 200, { items: [...vms.values()] });
    }
    if (p === '/v1/vms' && req.method === 'POST') {
      const b = (await body(req)) as Record<string, unknown> | null;
      if (!b) return err(res, 400, 'invalid_json', 'body is not JSON');
      if (typeof b['name'] !== 'string' || !/^[a-z0-9][a-z0-9-]{0,62}$/i.test(b['name']))
        return err(res, 400, 'validation', 'name must be 1-63 letters, digits or dashes', 'name');
      const vcpus = b['vcpus'];
      if (typeof vcpus !== 'number' || !Number.isInteger(vcpus) || vcpus < 1 || vcpus > 8)
        return err(res, 400, 'validation', 'vcpus must be an integer from 1 to 8', 'vcpus');
      const mem = b['memoryMiB'];
      if (typeof mem !== 'number' || !Number.isInteger(mem) || mem < 64 || mem > 8192)
        return err(res, 400, 'validation', 'memoryMiB must be an integer from 64 to 8192', 'memoryMiB');
      if ([...vms.values()].some((v) => v.name === b['name'])) return err(res, 409, 'conflict', 'name already in use', 'name');
      const t = now();
      const vm: Vm = {
        id: `vm-${nextId++}`, name: b['name'], state: 'created', image: String(b['image'] ?? 'default'),
        hypervisor: String(b['hypervisor'] ?? 'qemu'), vcpus, memoryMiB: mem, createdAt: t, updatedAt: t,
      };
      vms.set(vm.id, vm);
      emit(vm.id, 'VM_CREATED', vm);
      return send(res, 201, vm);
    }
    const m = /^\/v1\/vms\/([^/]+)(?:\/([a-z]+))?$/.exec(p);
    const vm = m ? vms.get(decodeURIComponent(m[1]!)) : undefined;
    if (!m || !vm) return err(res, 404, 'not_found', 'no such VM');
    const sub = m[2];
    if (!sub && req.method === 'GET') return send(res, 200, vm);
    if (!sub && req.method === 'DELETE') {
      setState(vm.id, 'stopped');
      vms.delete(vm.id);
      emit(vm.id, 'VM_DELETED', {});
      return send(res, 204);
    }
    if (sub === 'log' && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end(`fake vmm log for ${vm.name}\nstate=${vm.state}\n`);
      return;
    }
    if (sub && req.method === 'POST' && ALLOWED[sub]) {
      if (!ALLOWED[sub]!.includes(vm.state)) return err(res, 409, 'invalid_state', `cannot ${sub} a VM that is ${vm.state}`);
      await new Promise((r) => setTimeout(r, 150)); // make "in flight" visible
      switch (sub) {
        case 'start':
          boot(vm.id);
          break;
        case 'stop':
          if (url.searchParams.get('force') === 'true') {
            setState(vm.id, 'stopped');
          } else {
            setState(vm.id, 'stopping');
            setTimeout(() => {
              emit(vm.id, 'SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
              setState(vm.id, 'stopped');
              for (const ws of consoles.get(vm.id) ?? []) ws.close(1000, 'vm stopped');
            }, 200);
          }
          break;
        case 'pause':
          emit(vm.id, 'STOP', {});
          setState(vm.id, 'paused');
          break;
        case 'resume':
          emit(vm.id, 'RESUME', {});
          setState(vm.id, 'running');
          break;
        case 'reboot':
          emit(vm.id, 'RESET', { guest: false });
          consoleOut(vm.id, `\r\nrebooting\r\nCAPSULE_READY cpus=${vm.vcpus} uptime=0.40\r\ncapsule# `);
          break;
      }
      return send(res, 200, vm);
    }
    err(res, 404, 'not_found', 'no such route');
  });

  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, sock, head) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (!authed(req, url)) {
      sock.end('HTTP/1.1 401 Unauthorized\r\n\r\n');
      return;
    }
    const p = url.pathname;
    const m = /^\/v1\/vms\/([^/]+)\/(events|console)$/.exec(p);
    if (p !== '/v1/events' && !m) {
      sock.end('HTTP/1.1 404 Not Found\r\n\r\n');
      return;
    }
    // Like the real server: a console exists once the VMM is up (running or paused); while
    // the VM is starting (or not running) the upgrade is refused with 409.
    if (m && m[2] === 'console') {
      const state = vms.get(decodeURIComponent(m[1]!))?.state;
      if (state !== 'running' && state !== 'paused') {
        sock.end('HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\n\r\n');
        return;
      }
    }
    wss.handleUpgrade(req, sock, head, (ws) => {
      if (m && m[2] === 'console') {
        const id = decodeURIComponent(m[1]!);
        const history = consoleHistory.get(id);
        if (history) ws.send(Buffer.from(history));
        let set = consoles.get(id);
        if (!set) consoles.set(id, (set = new Set()));
        set.add(ws);
        ws.on('close', () => set!.delete(ws));
        ws.on('message', (data) => {
          // A tiny line discipline: echo keystrokes, run `echo X` on Enter.
          for (const ch of data.toString()) {
            if (ch === '\r' || ch === '\n') {
              const line = lines.get(id) ?? '';
              lines.set(id, '');
              const out = line.startsWith('echo ') ? line.slice(5) + '\r\n' : '';
              consoleOut(id, `\r\n${out}capsule# `);
            } else if (ch === '\x7f') {
              lines.set(id, (lines.get(id) ?? '').slice(0, -1));
              consoleOut(id, '\b \b');
            } else {
              lines.set(id, (lines.get(id) ?? '') + ch);
              consoleOut(id, ch);
            }
          }
        });
        return;
      }
      const vm = m ? decodeURIComponent(m[1]!) : null;
      const since = url.searchParams.get('since');
      if (since !== null) {
        for (const ev of events) if (ev.seq > Number(since) && (vm === null || ev.vm === vm)) ws.send(JSON.stringify(ev));
      }
      const sub = { ws, vm };
      eventSubs.add(sub);
      ws.on('close', () => eventSubs.delete(sub));
    });
  });

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    token,
    vms,
    events,
    emit,
    setState,
    failListing(n: number) {
      failListing = n;
    },
    dropEventSockets() {
      for (const s of eventSubs) s.ws.terminate();
    },
    holdBoots() {
      holding = true;
    },
    releaseBoots() {
      holding = false;
      for (const id of held.splice(0)) finishBoot(id);
    },
    async close() {
      for (const c of wss.clients) c.terminate();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
