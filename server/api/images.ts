import { createRoute, z } from '@hono/zod-openapi';
import type { Image } from '../db/images.js';
import { ImageSchema } from './schemas.js';
import { newRouter, type AppDeps } from './app.js';

const list = createRoute({
  method: 'get', path: '/images', tags: ['images'], summary: 'Guest images registered on this server',
  responses: { 200: { description: 'images', content: { 'application/json': { schema: z.object({ items: z.array(ImageSchema) }) } } } },
});

/** What a client may see of an image: never its host paths. */
function publicImage(img: Image) {
  const { name, description, cmdline, readyMarker, createdAt, updatedAt } = img;
  const rootfs = img.rootfs !== undefined;
  return readyMarker === undefined ? { name, description, cmdline, rootfs, createdAt, updatedAt } : { name, description, cmdline, readyMarker, rootfs, createdAt, updatedAt };
}

export function imageRoutes(deps: AppDeps) {
  return newRouter().openapi(list, (c) => c.json({ items: deps.images.list().map(publicImage) }, 200));
}
