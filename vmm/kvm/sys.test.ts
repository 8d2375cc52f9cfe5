// The libc wrappers that need no /dev/kvm.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// a kernel without THP has no such setting, nor a THP_enabled line to read
const noThp = !existsSync('/sys/kernel/mm/transparent_hugepage/enabled') && 'no transparent huge pages in this kernel';

const thpLine = (status: string): string | undefined => /^THP_enabled:\s*(\d)/m.exec(status)?.[1];

test('disableTransparentHugePages: this process and what it execs have THP off (PR_GET_THP_DISABLE, /proc status); allowTransparentHugePages lifts it', { skip: noThp }, () => {
  // in a child, so that the test runner keeps its own setting
  const sys = fileURLToPath(new URL('./sys.js', import.meta.url));
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', `
    import { readFileSync } from 'node:fs';
    import { execFileSync } from 'node:child_process';
    const sys = await import(${JSON.stringify(sys)});
    const before = sys.transparentHugePagesDisabled();
    sys.disableTransparentHugePages();
    console.log(JSON.stringify({
      before, after: sys.transparentHugePagesDisabled(),
      self: readFileSync('/proc/self/status', 'utf8'),
      child: execFileSync('cat', ['/proc/self/status'], { encoding: 'utf8' }),
      lifted: (sys.allowTransparentHugePages(), readFileSync('/proc/self/status', 'utf8')),
    }));`], { encoding: 'utf8' });
  const r = JSON.parse(out) as { before: boolean; after: boolean; self: string; child: string; lifted: string };
  assert.equal(r.before, false);
  assert.equal(r.after, true);
  assert.equal(thpLine(r.self), '0');
  assert.equal(thpLine(r.child), '0', 'an exec\'d child keeps it');
  assert.equal(thpLine(r.lifted), '1');
  assert.equal(thpLine(execFileSync('cat', ['/proc/self/status'], { encoding: 'utf8' })), '1', 'without it, a process may have THP');
});
