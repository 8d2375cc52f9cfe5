// /v1/volumes: server-side disk files. A client names a size or an image to copy; the server
// picks the file (volumes/<id>.img under the data directory, 0600) and never shows its path.
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { ApiError } from '../supervisor/errors.js';
import { copySparse, createSparse, MiB, roundedSize, volumePath } from '../volumes/files.js';
import type { Volume } from '../db/volumes.js';
import { callerToken } from '../auth/middleware.js';
import { CreateVolumeSchema, ErrorSchema, IdParams, json, TenantQuery, VolumeSchema } from './schemas.js';
import { findVolume, visibleTenant } from './ownership.js';
import { newRouter, type AppDeps } from './app.js';

const errors = {
  400: json(ErrorSchema, 'invalid request'),
  401: json(ErrorSchema, 'missing or invalid token'),
  403: json(ErrorSchema, 'token scope too small'),
  404: json(ErrorSchema, 'no such volume (another tenant\'s is not found either)'),
  409: json(ErrorSchema, 'conflict (name taken), volume_in_use, quota_exceeded'),
  429: json(ErrorSchema, 'rate limited'),
};

const list = createRoute({ method: 'get', path: '/volumes', tags: ['volumes'], summary: 'The tenant\'s volumes (an admin: all, or ?tenant=)', request: { query: TenantQuery }, responses: { 200: json(z.object({ items: z.array(VolumeSchema) }), 'volumes'), ...errors } });
const get = createRoute({
  method: 'get', path: '/volumes/{id}', tags: ['volumes'], summary: 'A volume (by id or name)',
  request: { params: IdParams }, responses: { 200: json(VolumeSchema, 'the volume'), ...errors },
});
const create = createRoute({
  method: 'post', path: '/volumes', tags: ['volumes'], summary: 'Create a volume: an empty sparse disk, or a copy of an image\'s root filesystem',
  request: { body: { required: true, content: { 'application/json': { schema: CreateVolumeSchema } } } },
  responses: { 201: json(VolumeSchema, 'created'), ...errors, 413: json(ErrorSchema, 'body too large'), 507: json(ErrorSchema, 'the data directory is full') },
});
const del = createRoute({
  method: 'delete', path: '/volumes/{id}', tags: ['volumes'], summary: 'Delete a volume that no VM references',
  request: { params: IdParams }, responses: { 204: { description: 'deleted' }, ...errors },
});

export function volumeRoutes(deps: AppDeps) {
  const mustGet = (c: Context, ref: string): Volume => findVolume(deps.volumes, c, ref);
  const nameFree = (tenant: string, name: string) => {
    if (deps.volumes.getByName(tenant, name)) throw new ApiError(409, 'conflict', `name: a volume named ${name} exists`, 'name');
  };
  return newRouter()
    .openapi(list, (c) => c.json({ items: deps.volumes.list(visibleTenant(deps.tenants, c)) }, 200))
    .openapi(get, (c) => c.json(mustGet(c, c.req.valid('param').id), 200))
    .openapi(create, async (c) => {
      const body = c.req.valid('json');
      // The caller's tenant's volume: its name is unique there, its size counts against its quota.
      const tenant = callerToken(c).tenantId;
      c.set('resourceTenant', tenant);
      nameFree(tenant, body.name);
      const id = randomUUID();
      const path = volumePath(deps.config.dataDir, id);
      let sizeBytes: number;
      if (body.fromImage !== undefined) {
        const image = deps.images.get(body.fromImage);
        if (!image) throw new ApiError(400, 'invalid_request', `fromImage: no image named ${JSON.stringify(body.fromImage)}`, 'fromImage');
        if (!image.rootfs) throw new ApiError(400, 'invalid_request', `fromImage: image ${image.name} has no root filesystem to copy`, 'fromImage');
        const imageBytes = roundedSize(image.rootfs);
        if (body.sizeMiB !== undefined && body.sizeMiB * MiB < imageBytes) {
          throw new ApiError(400, 'invalid_request', `sizeMiB: the copy of ${image.name} needs at least ${imageBytes / MiB} MiB`, 'sizeMiB');
        }
        sizeBytes = Math.max(imageBytes, (body.sizeMiB ?? 0) * MiB);
        deps.quotas.checkVolume(tenant, Math.ceil(sizeBytes / MiB)); // before the copy; again at the insert
        try {
          await copySparse(image.rootfs, path, sizeBytes);
        } catch (e) {
          deps.log.error({ image: image.name, err: (e as Error).message }, 'copying an image\'s rootfs into a volume failed');
          if ((e as { code?: string }).code) throw e; // a storage error: 507/503
          throw new ApiError(500, 'internal', `copying image ${image.name} failed; see the server log`);
        }
      } else {
        sizeBytes = body.sizeMiB! * MiB;
        deps.quotas.checkVolume(tenant, body.sizeMiB!);
        createSparse(path, sizeBytes);
      }
      try {
        // The copy took a while: the name may have been taken meanwhile (then the UNIQUE constraint says so too).
        nameFree(tenant, body.name);
        // The quota again, in the insert's transaction: a concurrent create may have used it meanwhile.
        const v = deps.volumes.create({ id, tenant, name: body.name, sizeBytes, fromImage: body.fromImage },
          () => deps.quotas.checkVolume(tenant, Math.ceil(sizeBytes / MiB)));
        return c.json(v, 201);
      } catch (e) {
        rmSync(path, { force: true });
        throw e;
      }
    })
    .openapi(del, (c) => {
      const v = mustGet(c, c.req.valid('param').id);
      if (v.attachments.length > 0) {
        const a = v.attachments[0]!;
        throw new ApiError(409, 'volume_in_use', `volume ${v.name} is a drive of VM ${a.vmName} (${a.drive})${v.attachments.length > 1 ? ` and ${v.attachments.length - 1} more` : ''}: detach it first`);
      }
      deps.volumes.delete(v.id);
      rmSync(volumePath(deps.config.dataDir, v.id), { force: true });
      return c.body(null, 204);
    });
}
