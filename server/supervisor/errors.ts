// The error the supervisor (and the API routes) throw for a request that cannot be served:
// api/errors.ts turns it into {"error":{"code","message","field"?}} with its status.
export type ApiErrorStatus = 400 | 403 | 404 | 409 | 500 | 503 | 504 | 507;

export class ApiError extends Error {
  constructor(readonly status: ApiErrorStatus, readonly code: string, message: string, readonly field?: string) {
    super(message);
  }
}
