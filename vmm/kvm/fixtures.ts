// Parses fixtures/layout.txt (output of fixtures/layout.c). Used by tests.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export interface LayoutFixture {
  sizeof: Map<string, number>;
  offsetof: Map<string, number>;
  ioctl: Map<string, number>;
  /** flags, capabilities and other #define'd numbers */
  consts: Map<string, number>;
}

export function loadLayoutFixture(): LayoutFixture {
  // dist/vmm/kvm/fixtures.js -> vmm/kvm/fixtures/layout.txt in the source tree
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, 'fixtures', 'layout.txt'), join(here, '..', '..', '..', 'vmm', 'kvm', 'fixtures', 'layout.txt')];
  let text: string | undefined;
  for (const c of candidates) {
    try { text = readFileSync(c, 'utf8'); break; } catch { /* next */ }
  }
  if (text === undefined) throw new Error(`layout.txt not found in ${candidates.join(', ')}`);
  const fx: LayoutFixture = { sizeof: new Map(), offsetof: new Map(), ioctl: new Map(), consts: new Map() };
  for (const line of text.split('\n')) {
    const [kind, name, value] = line.trim().split(/\s+/);
    if (!kind || !name || value === undefined) continue;
    const n = Number(value);
    if (kind === 'sizeof') fx.sizeof.set(name, n);
    else if (kind === 'offsetof') fx.offsetof.set(name, n);
    else if (kind === 'ioctl') fx.ioctl.set(name, n);
    else if (kind === 'const') fx.consts.set(name, n);
  }
  return fx;
}
