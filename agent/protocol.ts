// The capsule agent's wire protocol, shared by the agent (bundled for the guest's Node 18) and
// the server's client. Node built-ins only; nothing newer than Node 18.
//
// One TCP connection per operation (exec, attach, a file transfer, a stat, ...): no head-of-line
// blocking between operations, TCP's own flow control for every stream, and a connection's end
// is the operation's end. The client opens with MAGIC (16 bytes), then frames both ways:
//
//   u32 big-endian N | u8 kind | N-1 bytes of payload          (N <= MAX_FRAME)
//
//   kind 1 JSON   payload: one UTF-8 JSON object. The client's first frame is the request
//                 {"v":1,"token","op",...}; every later one is a control message.
//   kind 2 DATA   payload: u8 channel | bytes. Channel 0: stdin / an upload's bytes (client to
//                 agent); 1: stdout / a download's bytes; 2: stderr (agent to client).
//   (exec answers {"accepted":true} at once, before it spawns; clients ignore messages they do not know)
//   A write that offers {"raw":true,"size":N} and is answered {"ready":true,"raw":true} is followed
//   by exactly N unframed bytes (the agent's capsule-recv copies them into the file), then frames
//   again ({"eof":true}); answered {"ready":true} alone, it is sent in data frames.
//   kind 3 PING   no payload: the agent's heartbeat on a long operation (every PING_INTERVAL_MS),
//                 so that a client can tell a silent agent from a quiet command.
//
// Anything else than MAGIC at the start of a connection is HTTP (node:http in the agent): where
// an envd-compatible server (E2B's Connect RPC, /files, /health) will live on the same port.
export const AGENT_PORT = 49983;
export const PROTOCOL_VERSION = 1;
export const MAGIC = Buffer.from('CAPSULE-AGENT/1\n', 'latin1');
/** Largest frame either side accepts (kind + payload); a larger length closes the connection. */
export const MAX_FRAME = 1024 * 1024 + 16;
/** Data frames are cut at this many bytes. */
export const DATA_CHUNK = 256 * 1024;
/** A JSON frame larger than this is refused (requests, listings are bounded well below). */
export const MAX_JSON_FRAME = 1024 * 1024;
export const PING_INTERVAL_MS = 5000;

export const KIND_JSON = 1;
export const KIND_DATA = 2;
export const KIND_PING = 3;

export const CH_STDIN = 0;
export const CH_STDOUT = 1;
export const CH_STDERR = 2;

export function jsonFrame(obj: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(obj), 'utf8');
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32BE(body.length + 1, 0);
  head[4] = KIND_JSON;
  return Buffer.concat([head, body]);
}

/** What writeDataFrames writes to (a socket). */
export interface FrameSink {
  write(b: Buffer): boolean;
  cork(): void;
  uncork(): void;
}

/**
 * Writes `data` on `channel` as data frames (cut into DATA_CHUNK pieces): each frame's 6-byte
 * head and its piece of `data` go out as they are (no copy into one buffer), corked so that
 * they leave in one writev. Returns write()'s answer for the last piece (false: wait for drain).
 */
export function writeDataFrames(sink: FrameSink, channel: number, data: Buffer): boolean {
  let ok = true;
  sink.cork();
  for (let off = 0; off < data.length || off === 0; off += DATA_CHUNK) {
    const piece = data.subarray(off, Math.min(data.length, off + DATA_CHUNK));
    const head = Buffer.allocUnsafe(6);
    head.writeUInt32BE(piece.length + 2, 0);
    head[4] = KIND_DATA;
    head[5] = channel;
    sink.write(head);
    ok = piece.length > 0 ? sink.write(piece) : ok;
    if (data.length === 0) break;
  }
  sink.uncork();
  return ok;
}

export const PING_FRAME = Buffer.from([0, 0, 0, 1, KIND_PING]);
/** Frames at least this large are handed on as views of what was read (see FrameReader). */
const MIN_VIEW = 4096;

export type Frame =
  | { kind: typeof KIND_JSON; msg: Record<string, unknown> }
  | { kind: typeof KIND_DATA; channel: number; data: Buffer }
  | { kind: typeof KIND_PING };

/**
 * Cuts a byte stream into frames. Never holds more than one frame's worth of bytes: a length
 * over `maxFrame`, an unknown kind or bad JSON is an error (the caller closes the connection).
 * A data frame is handed on as it arrives, in as many pieces as the reads cut it into, each a
 * view of what was read (no copy, no waiting for the whole frame: uploads are megabytes of these),
 * except pieces under 4 KiB, which are copied so that a small one does not keep a large read
 * alive. Consumers treat data as a byte stream, so the cut does not matter to them.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private size = 0;
  private failed = false;
  /** Payload bytes of the data frame being passed on that have not come yet, and its channel. */
  private dataLeft = 0;
  private dataChannel = 0;

  constructor(private readonly onFrame: (f: Frame) => void, private readonly onError: (why: string) => void, private readonly maxFrame = MAX_FRAME) {}

  /** Bytes read and not yet handed on as frames (0: the next byte read starts a frame). */
  get buffered(): number {
    return this.size + this.dataLeft;
  }

  push(chunk: Buffer): void {
    if (this.failed) return;
    if (this.dataLeft > 0) {
      // The payload of a data frame goes on as it comes (nothing is buffered meanwhile).
      const n = Math.min(this.dataLeft, chunk.length);
      this.dataLeft -= n;
      this.emitData(chunk.subarray(0, n));
      if (n === chunk.length) return;
      chunk = chunk.subarray(n);
    }
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (!this.failed && this.size >= 4) {
      const len = this.peekLength();
      if (len < 1 || len > this.maxFrame) return this.fail(`frame of ${len} bytes (limit ${this.maxFrame})`);
      if (this.size >= 5 && this.peekByte(4) === KIND_DATA) {
        if (len < 2) return this.fail('data frame without a channel');
        if (this.size < 6) return;
        this.dataChannel = this.take(6)[5]!;
        this.dataLeft = len - 2;
        if (this.dataLeft === 0) { this.emitData(Buffer.alloc(0)); continue; }
        // What is buffered of the payload now, then (push) the rest as it arrives.
        while (this.dataLeft > 0 && this.size > 0 && !this.failed) {
          const piece = this.takeUpTo(this.dataLeft);
          this.dataLeft -= piece.length;
          this.emitData(piece);
        }
        continue;
      }
      if (this.size < 4 + len) return;
      const buf = this.take(4 + len);
      const kind = buf[4];
      if (kind === KIND_JSON) {
        if (len - 1 > MAX_JSON_FRAME) return this.fail('JSON frame too large');
        let msg: unknown;
        try {
          msg = JSON.parse(buf.subarray(5).toString('utf8'));
        } catch {
          return this.fail('bad JSON frame');
        }
        if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return this.fail('JSON frame is not an object');
        this.onFrame({ kind: KIND_JSON, msg: msg as Record<string, unknown> });
      } else if (kind === KIND_PING) {
        this.onFrame({ kind: KIND_PING });
      } else {
        return this.fail(`unknown frame kind ${kind}`);
      }
    }
  }

  private fail(why: string): void {
    this.failed = true;
    this.chunks = [];
    this.size = 0;
    this.dataLeft = 0;
    this.onError(why);
  }

  /** A piece of the current data frame's payload: a view, or a copy when it is small. */
  private emitData(piece: Buffer): void {
    const data = piece.length >= MIN_VIEW ? piece : Buffer.from(piece);
    this.onFrame({ kind: KIND_DATA, channel: this.dataChannel, data });
  }

  private peekByte(i: number): number {
    for (const c of this.chunks) {
      if (i < c.length) return c[i]!;
      i -= c.length;
    }
    return -1;
  }

  /** Up to n bytes from the first chunk (a view; never empty while size > 0). */
  private takeUpTo(n: number): Buffer {
    const first = this.chunks[0]!;
    const k = Math.min(n, first.length);
    if (k === first.length) this.chunks.shift();
    else this.chunks[0] = first.subarray(k);
    this.size -= k;
    return first.subarray(0, k);
  }

  private peekLength(): number {
    const first = this.chunks[0]!;
    if (first.length >= 4) return first.readUInt32BE(0);
    const head = Buffer.concat(this.chunks).subarray(0, 4);
    return head.readUInt32BE(0);
  }

  /** The next n bytes (n <= size): a view when the first chunk holds them, else one copy. */
  private take(n: number): Buffer {
    this.size -= n;
    const first = this.chunks[0]!;
    if (first.length >= n && n >= MIN_VIEW) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    // Small frames are copied, so that one does not pin a large chunk.
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

/** Error codes the agent answers with ({"error":{"code","message"}}). */
export type AgentErrorCode =
  | 'unauthorized' | 'invalid_request' | 'not_found' | 'permission_denied' | 'exists' | 'not_a_directory'
  | 'is_a_directory' | 'not_empty' | 'no_space' | 'not_regular' | 'too_large' | 'spawn_failed' | 'internal';

/** Signals a client may send (by name). */
export const SIGNALS = ['SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGKILL', 'SIGTERM', 'SIGUSR1', 'SIGUSR2', 'SIGSTOP', 'SIGCONT', 'SIGWINCH'] as const;
export type SignalName = (typeof SIGNALS)[number];

export interface ExecRequest {
  op: 'exec';
  /** argv (no shell) ... */
  cmd?: string[];
  /** ... or a shell command line (/bin/bash -c, /bin/sh where there is no bash) */
  shell?: string;
  env?: Record<string, string>;
  cwd?: string;
  /** A user name from the guest's /etc/passwd (default: the agent's default user). */
  user?: string;
  /** Bytes to write to stdin first (base64). */
  stdin?: string;
  /** Keep stdin open for DATA frames after `stdin` (until {"eof":true}); otherwise it is closed. */
  stdinOpen?: boolean;
  /** Kill the process (group) after this many ms: the exit then says timedOut. */
  timeoutMs?: number;
  /** A pseudo-terminal of this size (stdout carries the terminal; stderr is empty). */
  pty?: { cols: number; rows: number };
  /** Survive this connection: output is kept (bounded) until a client attaches. */
  background?: boolean;
  tag?: string;
}

export interface ExitInfo {
  exitCode: number | null;
  signal?: string;
  timedOut: boolean;
  durationMs: number;
}

export interface ProcessInfo {
  pid: number;
  cmd: string[];
  user: string;
  tag?: string;
  pty: boolean;
  background: boolean;
  startedAt: string;
  running: boolean;
  attached: boolean;
  exit?: ExitInfo;
  /** Output bytes dropped while nobody was attached (the buffer is bounded). */
  droppedBytes: number;
}

export interface FileStat {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtime: string;
  target?: string;
}
