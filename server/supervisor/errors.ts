// The error the supervisor (and the API routes) throw for a request that cannot be served:
// api/errors.ts turns it into {"error":{"code","message","field"?,"details"?}} with its status
// (and a Retry-After header when the condition passes by itself, e.g. host_full).
export type ApiErrorStatus = 400 | 403 | 404 | 409 | 413 | 500 | 502 | 503 | 504 | 507;

export interface ApiErrorExtras {
  /** Machine-readable numbers behind the message (e.g. requested, inUse, capacity). */
  details?: Record<string, unknown>;
  /** Sent as Retry-After (seconds). */
  retryAfterSeconds?: number;
}

export class ApiError extends Error {
  constructor(readonly status: ApiErrorStatus, readonly code: string, message: string, readonly field?: string, readonly extras: ApiErrorExtras = {}) {
    super(message);
  }
}
