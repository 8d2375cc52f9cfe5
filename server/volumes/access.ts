// Which jailed VMMs may open a disk file. Volume and layer files stay root's, mode 0600; a
// jailed VMM runs as an unprivileged per-VM uid, so each file it is given gets a POSIX ACL
// entry for that uid (rw for a writable drive, r for a read-only one) while the VMM runs, and
// loses it when the VMM is gone or the drive is detached. The ACL is always set whole from the
// list of current grants (never edited in place), so a crash between steps leaves nothing a
// later sync does not put right. The bind into the VMM's root decides what it can see at all;
// the ACL is what lets it open that file, and a read-only bind keeps it from writing even
// where a writable grant exists for another drive of the same uid.
//
// system.posix_acl_access is set through libc setxattr (koffi): no dependency on the acl
// package. Format (include/uapi/linux/posix_acl_xattr.h): u32 version 2, then entries of
// u16 tag, u16 perm, u32 id, sorted by tag then id; USER entries need a MASK entry.
import koffi from 'koffi';
import { chmodSync } from 'node:fs';

const ACL_USER_OBJ = 0x01;
const ACL_USER = 0x02;
const ACL_GROUP_OBJ = 0x04;
const ACL_MASK = 0x10;
const ACL_OTHER = 0x20;
const UNDEFINED_ID = 0xffffffff;
const R = 4;
const W = 2;
const XATTR = 'system.posix_acl_access';

export interface Grant {
  uid: number;
  write: boolean;
}

type SetXattr = (path: string, name: string, value: Buffer, size: number, flags: number) => number;
type RemoveXattr = (path: string, name: string) => number;
let libc: { set: SetXattr; remove: RemoveXattr } | undefined;

function lib(): { set: SetXattr; remove: RemoveXattr } {
  if (!libc) {
    const l = koffi.load('libc.so.6');
    libc = {
      set: l.func('int setxattr(const char *path, const char *name, const void *value, size_t size, int flags)') as SetXattr,
      remove: l.func('int removexattr(const char *path, const char *name)') as RemoveXattr,
    };
  }
  return libc;
}

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 13: 'EACCES', 22: 'EINVAL', 28: 'ENOSPC', 30: 'EROFS', 61: 'ENODATA', 95: 'EOPNOTSUPP' };

/** The xattr value for owner rw plus `grants` (several grants of one uid merge). */
export function encodeAcl(grants: readonly Grant[]): Buffer {
  const byUid = new Map<number, number>();
  for (const g of grants) byUid.set(g.uid, (byUid.get(g.uid) ?? 0) | R | (g.write ? W : 0));
  const users = [...byUid].sort((a, b) => a[0] - b[0]);
  const mask = users.reduce((m, [, p]) => m | p, 0);
  const entries: Array<[number, number, number]> = [
    [ACL_USER_OBJ, R | W, UNDEFINED_ID],
    ...users.map(([uid, perm]): [number, number, number] => [ACL_USER, perm, uid]),
    [ACL_GROUP_OBJ, 0, UNDEFINED_ID],
    [ACL_MASK, mask, UNDEFINED_ID],
    [ACL_OTHER, 0, UNDEFINED_ID],
  ];
  const buf = Buffer.alloc(4 + entries.length * 8);
  buf.writeUInt32LE(2, 0);
  entries.forEach(([tag, perm, id], i) => {
    buf.writeUInt16LE(tag, 4 + i * 8);
    buf.writeUInt16LE(perm, 6 + i * 8);
    buf.writeUInt32LE(id, 8 + i * 8);
  });
  return buf;
}

function fail(what: string, path: string): never {
  const errno = koffi.errno();
  const e = new Error(`${what} ${path}: ${ERRNO_NAMES[errno] ?? `errno ${errno}`}`) as Error & { code: string };
  e.code = ERRNO_NAMES[errno] ?? `E${errno}`;
  throw e;
}

/**
 * Sets the file's access to exactly: root rw, and each grant's uid r or rw; nobody else.
 * No grants: the ACL is removed and the mode is 0600 again.
 */
export function setFileAccess(path: string, grants: readonly Grant[]): void {
  if (grants.length === 0) {
    if (lib().remove(path, XATTR) !== 0 && koffi.errno() !== 61 /* ENODATA: none set */) fail('removing the ACL of', path);
    chmodSync(path, 0o600);
    return;
  }
  const value = encodeAcl(grants);
  if (lib().set(path, XATTR, value, value.length, 0) !== 0) fail('setting the ACL of', path);
}
