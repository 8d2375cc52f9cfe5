// Host facts for the jail: where tools are, and what binding a host path into the root takes
// (symbolic links along the way are recreated inside the root, the real file or directory is
// bound at its real path).
import { accessSync, constants, lstatSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { posix } from 'node:path';
import type { JailMount, JailSymlink } from './command.js';

/** The absolute path of an executable: `name` itself if absolute, else the first match in PATH. */
export function which(name: string, path = process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'): string | undefined {
  const candidates = name.includes('/') ? [posix.resolve(name)] : path.split(':').filter(Boolean).map((d) => posix.join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch { /* next */ }
  }
  return undefined;
}

/**
 * What it takes to see each of `paths` inside the root at the same path: read-only binds of
 * real files and directories, and the symbolic links met on the way (Debian's /lib -> usr/lib,
 * a node_modules link). Paths that do not exist are skipped. Binds inside another bound
 * directory, and links inside one, are dropped (the outer bind already shows them).
 */
export function resolveHostPaths(paths: readonly string[]): { mounts: JailMount[]; symlinks: JailSymlink[] } {
  const mounts = new Map<string, JailMount>();
  const links = new Map<string, string>();
  const visit = (p: string, hops: number): void => {
    if (hops > 32) return; // a link loop
    const parts = posix.normalize(p).split('/').filter(Boolean);
    let cur = '';
    for (let i = 0; i < parts.length; i++) {
      const next = `${cur}/${parts[i]}`;
      let st;
      try { st = lstatSync(next); } catch { return; }
      if (st.isSymbolicLink()) {
        const target = readlinkSync(next);
        links.set(next, target);
        visit(posix.join(posix.resolve(posix.dirname(next), target), ...parts.slice(i + 1)), hops + 1);
        return;
      }
      cur = next;
    }
    if (cur === '') throw new Error('jail: refusing to bind the host root into the jail');
    const st = statSync(cur);
    if (st.isDirectory() || st.isFile()) mounts.set(cur, { source: cur, target: cur, kind: st.isDirectory() ? 'dir' : 'file' });
  };
  for (const p of paths) visit(p, 0);
  const dirs = [...mounts.values()].filter((m) => m.kind === 'dir').map((m) => m.target);
  const inside = (p: string) => dirs.some((d) => p !== d && p.startsWith(`${d}/`));
  return {
    mounts: [...mounts.values()].filter((m) => !inside(m.target)),
    symlinks: [...links].filter(([p]) => !inside(p) && !mounts.has(p)).map(([path, target]) => ({ path, target })),
  };
}

/** The real path of a file (image files may be links). */
export function realFile(p: string): string {
  return realpathSync(p);
}
