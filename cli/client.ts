// The HTTP and WebSocket client: one place that adds the token, turns error answers into
// ApiError, waits out rate limits, and says clearly when the server cannot be reached.
import WebSocket from 'ws';
import { ApiError, CliError } from './errors.js';
import type { Connection } from './config.js';

/** How often a 429 is retried (after its Retry-After) before it is reported. */
const RATE_LIMIT_RETRIES = 3;
const MAX_RETRY_WAIT_S = 10;

export class ApiClient {
  constructor(readonly url: string, private readonly token: string) {}

  static from(conn: Connection): ApiClient {
    return new ApiClient(conn.url, conn.token);
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  patch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body);
  }

  put<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PUT', path, body);
  }

  delete(path: string): Promise<void> {
    return this.request<void>('DELETE', path);
  }

  /** The raw text of a text/plain route (the VM log). */
  async text(path: string): Promise<string> {
    const res = await this.send('GET', path);
    return res.text();
  }

  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.send(method, path, body);
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      return text as T;
    }
  }

  private async send(method: string, path: string, body?: unknown): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}`, accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    for (let attempt = 0; ; attempt++) {
      let res: Response;
      try {
        res = await fetch(this.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      } catch (e) {
        throw unreachable(this.url, e);
      }
      if (res.ok) return res;
      const retryAfter = Number(res.headers.get('retry-after'));
      if (res.status === 429 && attempt < RATE_LIMIT_RETRIES && retryAfter > 0 && retryAfter <= MAX_RETRY_WAIT_S) {
        await res.body?.cancel();
        await new Promise((r) => setTimeout(r, retryAfter * 1000));
        continue;
      }
      throw await errorFromResponse(res);
    }
  }

  /**
   * Opens a WebSocket on `path`. The token goes in the Authorization header (a URL's query
   * string ends up in logs). An HTTP error answer to the upgrade becomes an ApiError.
   * `onMessage` is attached before the connection opens: the server may send its first frames
   * (a console's recent output) in the same packet as the upgrade answer, and a listener
   * added once the promise resolves would miss them.
   */
  openSocket(path: string, onMessage: (data: Buffer) => void): Promise<WebSocket> {
    const wsUrl = this.url.replace(/^http/, 'ws') + path;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${this.token}` } });
      ws.on('message', (data: Buffer) => onMessage(data));
      const fail = (e: Error) => {
        ws.removeAllListeners('open');
        reject(e);
      };
      ws.once('open', () => {
        ws.removeAllListeners('unexpected-response');
        resolve(ws);
      });
      ws.once('error', (e) => fail(unreachable(this.url, e)));
      ws.once('unexpected-response', (_req, res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => { text += d; });
        res.on('end', () => {
          ws.removeAllListeners('error');
          ws.on('error', () => { /* the request is being torn down */ });
          ws.terminate();
          fail(parseError(res.statusCode ?? 0, text));
        });
      });
    });
  }
}

function unreachable(url: string, e: unknown): CliError {
  const cause = (e as { cause?: { code?: string; message?: string } }).cause;
  const why = cause?.code ?? cause?.message ?? (e as Error).message;
  return new CliError('unreachable', `cannot reach ${url}: ${why}`);
}

async function errorFromResponse(res: Response): Promise<ApiError> {
  return parseError(res.status, await res.text().catch(() => ''));
}

/** The server's `{"error":{...}}` body, or a made-up one for answers without it (a proxy's 502). */
export function parseError(status: number, text: string): ApiError {
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; field?: unknown } };
    const e = body.error;
    if (e && typeof e.code === 'string' && typeof e.message === 'string') {
      return new ApiError(status, e.code, e.message, typeof e.field === 'string' ? e.field : undefined);
    }
  } catch { /* not JSON */ }
  const snippet = text.trim().slice(0, 200);
  return new ApiError(status, `http_${status}`, snippet || `HTTP ${status}`);
}
