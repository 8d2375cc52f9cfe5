// An events WebSocket that survives drops: it reconnects with backoff and resumes with
// ?since=<last seq seen>, ignoring anything replayed twice.

export interface CapsuleEvent {
  seq: number;
  vm: string | null;
  event: string;
  data: unknown;
  timestamp: string;
}

export type StreamStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The subset of the browser WebSocket this module uses (lets tests pass `ws`). */
export interface WsLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
}
export type WsFactory = (url: string) => WsLike;

export interface EventStreamOptions {
  /** Builds the URL; `since` is undefined for a first live-only connection. */
  url: (since: number | undefined) => string;
  onEvent: (ev: CapsuleEvent) => void;
  onStatus?: (s: StreamStatus, detail?: string) => void;
  /** Called after a reconnect succeeded (the caller may want to resync state once). */
  onResumed?: () => void;
  /** Start from this seq (replay everything the server still holds after it). */
  since?: number;
  ws?: WsFactory;
  minDelayMs?: number;
  maxDelayMs?: number;
}

export class EventStream {
  lastSeq: number | undefined;
  status: StreamStatus = 'closed';
  private sock: WsLike | null = null;
  private stopped = true;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private everOpened = false;
  private readonly makeWs: WsFactory;

  constructor(private readonly opts: EventStreamOptions) {
    this.lastSeq = opts.since;
    this.makeWs = opts.ws ?? ((url) => new WebSocket(url) as unknown as WsLike);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const s = this.sock;
    this.sock = null;
    if (s) {
      s.onclose = null;
      s.onmessage = null;
      s.onerror = null;
      try {
        s.close(1000, 'bye');
      } catch {
        /* already closed */
      }
    }
    this.setStatus('closed');
  }

  /** Drop the current socket and reconnect now (resuming), e.g. when the page becomes visible. */
  kick(): void {
    if (this.stopped) return;
    if (this.status === 'open') return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.attempt = 0;
    if (!this.sock) this.connect();
  }

  private setStatus(s: StreamStatus, detail?: string): void {
    this.status = s;
    this.opts.onStatus?.(s, detail);
  }

  private connect(): void {
    this.setStatus(this.everOpened ? 'reconnecting' : 'connecting');
    let s: WsLike;
    try {
      s = this.makeWs(this.opts.url(this.lastSeq));
    } catch (e) {
      this.scheduleReconnect(e instanceof Error ? e.message : String(e));
      return;
    }
    this.sock = s;
    s.onopen = () => {
      const resumed = this.everOpened;
      this.everOpened = true;
      this.attempt = 0;
      this.setStatus('open');
      if (resumed) this.opts.onResumed?.();
    };
    s.onmessage = (m) => {
      if (typeof m.data !== 'string') return;
      let ev: CapsuleEvent;
      try {
        ev = JSON.parse(m.data) as CapsuleEvent;
      } catch {
        return;
      }
      if (typeof ev.seq === 'number') {
        if (this.lastSeq !== undefined && ev.seq <= this.lastSeq) return; // replayed twice
        this.lastSeq = ev.seq;
      }
      this.opts.onEvent(ev);
    };
    s.onerror = () => {
      /* onclose follows */
    };
    s.onclose = (c) => {
      if (this.sock !== s) return;
      this.sock = null;
      if (this.stopped) return;
      this.scheduleReconnect(c.reason || `closed (${c.code})`);
    };
  }

  private scheduleReconnect(detail: string): void {
    const min = this.opts.minDelayMs ?? 500;
    const max = this.opts.maxDelayMs ?? 15000;
    const delay = Math.min(max, min * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    this.setStatus('reconnecting', detail);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.stopped) this.connect();
    }, delay);
  }
}
