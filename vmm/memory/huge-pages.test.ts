import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// a kernel without THP has no such setting, nor a THP_enabled line to read
const noThp = !existsSync('/sys/kernel/mm/transparent_hugepage/enabled') && 'no transparent huge pages in this kernel';
import { ownAnonymousMappings } from './huge-pages.js';

const MAPS = `55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/node
55d0c2000000-55d0c2400000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
7f0010000000-7f0010800000 ---p 00000000 00:00 0
7f0020000000-7f0020100000 rw-s 00000000 00:01 77 /memfd:guest (deleted)
7f0030000000-7f0030001000 rw-p 00000000 00:00 0 [anon:glibc.malloc]
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0 [vvar]
7ffd00104000-7ffd00106000 r-xp 00000000 00:00 0 [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
`;

test('own anonymous mappings: heap, stacks, unnamed and reserved ranges; not files, the kernel\'s, or guest RAM', () => {
  const guest = [{ start: 0x7f0000000000n, end: 0x7f0010000000n }];
  assert.deepEqual(ownAnonymousMappings(MAPS, guest).map((r) => r.start.toString(16)), ['55d0c2000000', '7f0010000000', '7f0030000000', '7ffd00000000']);
  assert.equal(ownAnonymousMappings(MAPS, []).length, 5);
  assert.deepEqual(ownAnonymousMappings('garbage\n\n', []), []);
});

test('allowHugePagesForGuestOnly: the flag is lifted, guest RAM may take huge pages, the heap and stacks are marked nh', { skip: noThp }, () => {
  // in a child: the test runner keeps its own settings
  const dir = fileURLToPath(new URL('.', import.meta.url));
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
    const hp = await import(${JSON.stringify(`${dir}huge-pages.js`)});
    const { mappings } = await import(${JSON.stringify(`${dir}../testing/proc-mem.js`)});
    const sys = await import(${JSON.stringify(`${dir}../kvm/sys.js`)});
    hp.startWithoutHugePages();
    const off = sys.transparentHugePagesDisabled();
    const size = 64 << 20;
    const guest = sys.mmap(size, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS | sys.MAP_NORESERVE);
    const marked = hp.allowHugePagesForGuestOnly([{ start: guest, end: guest + BigInt(size) }]);
    const flags = {};
    for (const m of mappings('self')) {
      const name = m.start === guest ? 'guest' : m.name;
      if (name === 'guest' || name === '[heap]' || name === '[stack]') flags[name] = m.vmFlags;
    }
    console.log(JSON.stringify({ off, after: sys.transparentHugePagesDisabled(), marked, flags }));`], { encoding: 'utf8' });
  const r = JSON.parse(out) as { off: boolean; after: boolean; marked: number | string; flags: Record<string, string[]> };
  assert.equal(r.off, true);
  assert.equal(r.after, false);
  assert.ok(typeof r.marked === 'number' && r.marked > 10, `${r.marked} mappings marked`);
  assert.ok(r.flags['[stack]']?.includes('nh'), `[stack]: ${r.flags['[stack]']?.join(' ')}`);
  if (r.flags['[heap]']) assert.ok(r.flags['[heap]'].includes('nh'), `[heap]: ${r.flags['[heap]'].join(' ')}`);
  assert.ok(r.flags.guest && !r.flags.guest.includes('nh'), `guest RAM: ${r.flags.guest?.join(' ')}`);
});
