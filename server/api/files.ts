// Files in a VM through its guest agent (docs/agent.md):
//   GET    /v1/vms/:id/files?path=       a file's bytes (streamed), or a directory's listing (JSON)
//   PUT    /v1/vms/:id/files?path=       the request body becomes the file (streamed; no body limit)
//   DELETE /v1/vms/:id/files?path=       a file, or a directory with what is in it
//   GET    /v1/vms/:id/files/stat?path=
//   POST   /v1/vms/:id/files/mkdir       {"path"}           (with parents)
//   POST   /v1/vms/:id/files/move        {"from","to"}
// Relative paths are under the user's home; `user` (default "user") owns what is created.
import { createRoute, z } from '@hono/zod-openapi';
import { ApiError } from '../supervisor/errors.js';
import { contentLength } from '../util/http.js';
import { agentErrors, requireRunning } from './exec.js';
import { ErrorSchema, IdParams, json } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

/** PUT /v1/vms/:id/files streams its body to the guest: app.ts exempts it from the body limit. */
export const FILE_UPLOAD_PATH = /^\/v1\/vms\/[^/]+\/files$/;

const PathSchema = z.string().min(1).max(4096).refine((s) => !s.includes('\0'), 'no NUL').openapi({ description: 'absolute, or relative to the user\'s home' });
const UserSchema = z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/).optional().openapi({ description: 'the guest user (default "user"): relative paths are under its home; what is created is its' });
const PathQuery = z.object({ path: PathSchema, user: UserSchema });

const FileStatSchema = z.object({
  name: z.string(), path: z.string(), type: z.enum(['file', 'dir', 'symlink', 'other']), size: z.number().int(), mode: z.number().int(),
  uid: z.number().int(), gid: z.number().int(), mtime: z.string(), target: z.string().optional(),
}).openapi('FileStat');
const ListingSchema = z.object({ path: z.string(), entries: z.array(FileStatSchema), truncated: z.boolean() }).openapi('DirectoryListing');


const getFile = createRoute({
  method: 'get', path: '/vms/{id}/files', tags: ['files'], summary: 'Download a file (streamed), or list a directory',
  request: { params: IdParams, query: PathQuery },
  responses: {
    200: {
      description: 'a file: its bytes (application/octet-stream, X-Capsule-File-Size); a directory: its listing (JSON)',
      content: { 'application/octet-stream': { schema: z.string().openapi({ format: 'binary' }) }, 'application/json': { schema: ListingSchema } },
    },
    ...agentErrors,
  },
});
const putFile = createRoute({
  method: 'put', path: '/vms/{id}/files', tags: ['files'], summary: 'Upload a file (the body, streamed; parents made; replaced atomically)',
  request: { params: IdParams, query: PathQuery.extend({ mode: z.string().regex(/^[0-7]{3,4}$/).optional().openapi({ description: 'octal, default 644' }) }) },
  responses: { 200: json(z.object({ path: z.string(), size: z.number().int() }), 'written'), ...agentErrors, 507: json(ErrorSchema, 'the guest\'s disk is full') },
});
const deleteFile = createRoute({
  method: 'delete', path: '/vms/{id}/files', tags: ['files'], summary: 'Remove a file, or a directory and everything in it',
  request: { params: IdParams, query: PathQuery }, responses: { 204: { description: 'removed' }, ...agentErrors },
});
const statFile = createRoute({
  method: 'get', path: '/vms/{id}/files/stat', tags: ['files'], summary: 'A path\'s type, size, mode, owner and mtime (symlinks not followed)',
  request: { params: IdParams, query: PathQuery }, responses: { 200: json(FileStatSchema, 'stat'), ...agentErrors },
});
const mkdir = createRoute({
  method: 'post', path: '/vms/{id}/files/mkdir', tags: ['files'], summary: 'Make a directory (and its parents)',
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: z.object({ path: PathSchema, user: UserSchema }).strict() } } } },
  responses: { 200: json(z.object({ path: z.string(), created: z.boolean() }), 'made (created false: it was there)'), ...agentErrors },
});
const move = createRoute({
  method: 'post', path: '/vms/{id}/files/move', tags: ['files'], summary: 'Rename a file or directory (on the same filesystem)',
  request: { params: IdParams, body: { required: true, content: { 'application/json': { schema: z.object({ from: PathSchema, to: PathSchema, user: UserSchema }).strict() } } } },
  responses: { 200: json(z.object({ from: z.string(), to: z.string() }), 'moved'), ...agentErrors },
});

export function fileRoutes(deps: AppDeps) {
  return newRouter()
    .openapi(statFile, async (c) => {
      const { id } = c.req.valid('param');
      const { path, user } = c.req.valid('query');
      requireRunning(deps, id);
      return c.json(await deps.agent.stat(id, path, user), 200);
    })
    .openapi(getFile, async (c) => {
      const { id } = c.req.valid('param');
      const { path, user } = c.req.valid('query');
      requireRunning(deps, id);
      const r = await deps.agent.read(id, path, user);
      if (r.kind === 'dir') return c.json({ path: r.dir.path, entries: r.entries, truncated: r.truncated }, 200);
      // Not Content-Length: the file may change while it is read.
      return c.body(r.body, 200, {
        'content-type': 'application/octet-stream',
        'x-capsule-file-size': String(r.file.size),
        'content-disposition': `attachment; filename="${r.file.name.replace(/[^\x20-\x7e]|["\\]/g, '_')}"`,
      }) as never;
    })
    .openapi(putFile, async (c) => {
      const { id } = c.req.valid('param');
      const { path, user, mode } = c.req.valid('query');
      requireRunning(deps, id);
      const body = c.req.raw.body;
      const source: AsyncIterable<Uint8Array> = body ? (body as unknown as AsyncIterable<Uint8Array>) : (async function* () { /* empty file */ })();
      const w = await deps.agent.write(id, path, source, { user, mode: mode === undefined ? undefined : parseInt(mode, 8), size: contentLength(c.req.header('content-length')) });
      return c.json(w, 200);
    })
    .openapi(deleteFile, async (c) => {
      const { id } = c.req.valid('param');
      const { path, user } = c.req.valid('query');
      requireRunning(deps, id);
      await deps.agent.remove(id, path, user);
      return c.body(null, 204);
    })
    .openapi(mkdir, async (c) => {
      const { id } = c.req.valid('param');
      const { path, user } = c.req.valid('json');
      requireRunning(deps, id);
      return c.json(await deps.agent.mkdir(id, path, user), 200);
    })
    .openapi(move, async (c) => {
      const { id } = c.req.valid('param');
      const { from, to, user } = c.req.valid('json');
      requireRunning(deps, id);
      if (from === to) throw new ApiError(400, 'invalid_request', 'from and to are the same path', 'to');
      return c.json(await deps.agent.move(id, from, to, user), 200);
    });
}
