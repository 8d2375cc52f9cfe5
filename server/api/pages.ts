// Pages of a list ordered by (createdAt, id): the cursor names the last item of the previous
// page, so a page is stable while items are added or removed around it (no offsets that shift).
// The cursor is opaque to clients: base64url of JSON [createdAt, id].
import { ApiError } from '../supervisor/errors.js';

export interface Paged<T> {
  items: T[];
  /** Present when more items follow: pass it as ?cursor= for the next page. */
  nextCursor?: string;
}

interface Ordered { createdAt: string; id: string }

const after = (a: Ordered, createdAt: string, id: string) => a.createdAt > createdAt || (a.createdAt === createdAt && a.id > id);

export function encodeCursor(item: Ordered): string {
  return Buffer.from(JSON.stringify([item.createdAt, item.id])).toString('base64url');
}

function decodeCursor(cursor: string): [string, string] {
  try {
    const v = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string') return [v[0], v[1]];
  } catch { /* below */ }
  throw new ApiError(400, 'invalid_request', 'cursor: not a cursor this server gave (use nextCursor of the previous page)', 'cursor');
}

/** The page of `items` (already in (createdAt, id) order) after `cursor`, at most `limit` long. */
export function page<T extends Ordered>(items: readonly T[], limit: number, cursor?: string): Paged<T> {
  let start = 0;
  if (cursor !== undefined) {
    const [createdAt, id] = decodeCursor(cursor);
    start = items.findIndex((x) => after(x, createdAt, id));
    if (start < 0) start = items.length;
  }
  const slice = items.slice(start, start + limit);
  const more = start + limit < items.length;
  return more ? { items: slice, nextCursor: encodeCursor(slice.at(-1)!) } : { items: slice };
}
