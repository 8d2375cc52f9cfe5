import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { probeKvm } from './kvm-probe.js';

test('KVM needs a read-write device and a CPU that shows vmx or svm; CAPSULE_KVM overrides', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvm-probe-'));
  const dev = join(dir, 'kvm');
  writeFileSync(dev, '');
  const cpuinfo = (flags: string): string => {
    const p = join(dir, `cpuinfo-${flags.replace(/\s/g, '_')}`);
    writeFileSync(p, `processor\t: 0\nflags\t\t: fpu ${flags} sse2\n`);
    return p;
  };
  const saved = process.env.CAPSULE_KVM;
  try {
    delete process.env.CAPSULE_KVM;
    assert.equal(probeKvm(dev, cpuinfo('vmx')).available, true);
    assert.equal(probeKvm(dev, cpuinfo('svm')).available, true);
    assert.match(probeKvm(dev, cpuinfo('pae')).reason, /neither vmx nor svm/);
    assert.match(probeKvm(join(dir, 'missing'), cpuinfo('vmx')).reason, /missing or not read-write/);
    process.env.CAPSULE_KVM = '1';
    assert.equal(probeKvm(dev, cpuinfo('pae')).available, true);
    assert.equal(probeKvm(join(dir, 'missing'), cpuinfo('vmx')).available, false, 'forcing does not make a missing device usable');
    process.env.CAPSULE_KVM = '0';
    assert.equal(probeKvm(dev, cpuinfo('vmx')).available, false);
  } finally {
    if (saved === undefined) delete process.env.CAPSULE_KVM;
    else process.env.CAPSULE_KVM = saved;
  }
});
