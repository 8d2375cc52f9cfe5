// One error shape for every failure: {"error":{"code","message","field"?}}.
import type { Context } from 'hono';
import type { Logger } from 'pino';
import { HTTPException } from 'hono/http-exception';
import type { ZodError } from 'zod';
import { ApiError } from '../supervisor/errors.js';
import { isNoSpace, isStorageError } from '../db/storage.js';

export type ErrorStatus = 400 | 401 | 403 | 404 | 409 | 413 | 429 | 500 | 502 | 503 | 504 | 507;

export function errorResponse(c: Context, status: ErrorStatus, code: string, message: string, field?: string, details?: Record<string, unknown>): Response {
  const error: Record<string, unknown> = { code, message };
  if (field !== undefined) error.field = field;
  if (details !== undefined) error.details = details;
  return c.json({ error }, status);
}

/** The first zod issue, as a message that names the field. */
export function validationError(c: Context, error: ZodError): Response {
  const issue = error.issues[0];
  if (!issue) return errorResponse(c, 400, 'invalid_request', 'invalid request');
  if (issue.code === 'unrecognized_keys') {
    const keys = (issue as { keys: string[] }).keys;
    return errorResponse(c, 400, 'invalid_request', `unknown field${keys.length > 1 ? 's' : ''}: ${keys.join(', ')}`, keys[0]);
  }
  const field = issue.path.join('.');
  if (!field) return errorResponse(c, 400, 'invalid_request', `request body: ${issue.message}`);
  return errorResponse(c, 400, 'invalid_request', `${field}: ${issue.message}`, field);
}

/** The app's error handler: every failure as the one error shape; unexpected ones logged on `log`. */
export const errorHandler = (log?: Logger) => (err: Error, c: Context): Response => {
  if (err instanceof ApiError) {
    if (err.extras.retryAfterSeconds !== undefined) c.header('Retry-After', String(err.extras.retryAfterSeconds));
    return errorResponse(c, err.status, err.code, err.message, err.field, err.extras.details);
  }
  if (err instanceof HTTPException) {
    const status = err.status as ErrorStatus;
    const code = status === 400 ? 'invalid_request' : status === 413 ? 'payload_too_large' : 'http_error';
    return errorResponse(c, status, code, err.message || 'request failed');
  }
  // Method and path, never the query: it may hold a token.
  const where = { method: c.req.method, path: c.req.path };
  if (isStorageError(err)) {
    // The data directory refused a write: say so (nothing was saved), and log it.
    log?.error({ ...where, code: err.code, err: err.message }, 'data directory write failed');
    return isNoSpace(err)
      ? errorResponse(c, 507, 'insufficient_storage', 'the server\'s data directory is full: nothing was saved; free space on the host and retry')
      : errorResponse(c, 503, 'storage_unavailable', `the server's data directory failed (${err.code}): nothing was saved; retry later`);
  }
  log?.error({ ...where, err: err.message, stack: err.stack }, 'unhandled error');
  return errorResponse(c, 500, 'internal', 'internal server error');
};
