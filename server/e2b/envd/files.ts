// envd's HTTP routes on capsule's guest agent:
//   GET  /files?path=&username=    a file's bytes (streamed from the agent)
//   POST /files?path=&username=    multipart/form-data (one part per file; the part's file name is
//                                  its path when the query names none), or the body itself as one
//                                  file (application/octet-stream, optionally gzip), streamed
//   GET  /health                   204 while the sandbox's agent answers
// Answers a list of {name, type, path} for what was written; errors are {"code","message"}.
import type { Context } from 'hono';
import type { AgentClient } from '../../agent/client.js';
import { ApiError } from '../../supervisor/errors.js';
import { contentLength } from '../../util/http.js';
import { e2bError, guestUser, writtenEntry } from '../mapping.js';

/** A multipart upload is parsed in memory (FormData): bounded. Larger files go as octet-stream, streamed. */
export const MULTIPART_MAX_BYTES = 256 * 1024 * 1024;

type Ctx = Context<{ Variables: { vmId: string } }>;

function query(c: Ctx): { path: string | undefined; user: string } {
  const path = c.req.query('path');
  if (path !== undefined && (path === '' || path.includes('\0') || path.length > 4096)) throw new ApiError(400, 'invalid_request', 'path: a non-empty path');
  return { path, user: guestUser(c.req.query('username')) };
}

/** Errors (the agent's included) as envd's JSON. */
export function filesError(c: Context, e: unknown): Response {
  const status = e instanceof ApiError ? e.status : 500;
  const message = e instanceof Error ? e.message : 'internal error';
  return c.json(e2bError(status, message), status as 400);
}

/** The request body, failing once more than `max` bytes came. */
function bounded(body: ReadableStream<Uint8Array>, max: number): ReadableStream<Uint8Array> {
  let n = 0;
  return body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, ctl) {
      n += chunk.byteLength;
      if (n > max) ctl.error(new ApiError(413, 'payload_too_large', `a multipart upload is at most ${MAX_MIB} MiB here: send larger files as application/octet-stream`));
      else ctl.enqueue(chunk);
    },
  }));
}
const MAX_MIB = MULTIPART_MAX_BYTES / 1024 / 1024;

export async function getFile(c: Ctx, agent: AgentClient): Promise<Response> {
  const { path, user } = query(c);
  if (path === undefined) throw new ApiError(400, 'invalid_request', 'path: required');
  const r = await agent.read(c.get('vmId'), path, user);
  if (r.kind === 'dir') throw new ApiError(400, 'invalid_request', `path is a directory: ${r.dir.path}`);
  return c.body(r.body, 200, { 'content-type': 'application/octet-stream' });
}

export async function postFiles(c: Ctx, agent: AgentClient): Promise<Response> {
  const { path, user } = query(c);
  const vmId = c.get('vmId');
  const type = c.req.header('content-type') ?? '';
  const body = c.req.raw.body;
  if (!body) throw new ApiError(400, 'invalid_request', 'no body: send the file (application/octet-stream) or files (multipart/form-data)');
  if (/^multipart\/form-data/i.test(type)) {
    let form: FormData;
    try {
      form = await new Request('http://envd/files', { method: 'POST', headers: { 'content-type': type }, body: bounded(body, MULTIPART_MAX_BYTES), duplex: 'half' } as RequestInit).formData();
    } catch (e) {
      if (e instanceof ApiError) throw e;
      const cause = (e as { cause?: unknown }).cause;
      if (cause instanceof ApiError) throw cause;
      throw new ApiError(400, 'invalid_request', `not a multipart/form-data body: ${(e as Error).message}`);
    }
    const files = [...form.values()].filter((v): v is Exclude<ReturnType<FormData['get']>, string | null> => typeof v !== 'string');
    if (files.length === 0) throw new ApiError(400, 'invalid_request', 'the form has no file part');
    const written = [];
    for (const f of files) {
      const target = files.length === 1 && path !== undefined ? path : f.name;
      if (!target) throw new ApiError(400, 'invalid_request', 'a file part without a name, and no path in the query');
      const w = await agent.write(vmId, target, f.stream() as unknown as AsyncIterable<Uint8Array>, { user, size: f.size });
      written.push(writtenEntry(w.path));
    }
    return c.json(written, 200);
  }
  if (path === undefined) throw new ApiError(400, 'invalid_request', 'path: required for an application/octet-stream upload');
  const encoding = (c.req.header('content-encoding') ?? '').toLowerCase();
  if (encoding !== '' && encoding !== 'identity' && encoding !== 'gzip') throw new ApiError(400, 'invalid_request', `Content-Encoding: gzip or none, not ${encoding}`);
  const source = encoding === 'gzip' ? body.pipeThrough(new DecompressionStream('gzip') as unknown as TransformStream<Uint8Array, Uint8Array>) : body;
  const w = await agent.write(vmId, path, source as unknown as AsyncIterable<Uint8Array>, { user, size: encoding === 'gzip' ? undefined : contentLength(c.req.header('content-length')) });
  return c.json([writtenEntry(w.path)], 200);
}

export async function health(c: Ctx, agent: AgentClient): Promise<Response> {
  try {
    await agent.health(c.get('vmId'), 5000);
    return c.body(null, 204);
  } catch (e) {
    return c.json(e2bError(502, `the sandbox does not answer: ${(e as Error).message}`), 502);
  }
}
