// Disassembly of known small filters, compared to expected text line for line.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BPF_ABS, BPF_ALU, BPF_AND, BPF_IMM, BPF_JA, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_MISC, BPF_RET, BPF_A, BPF_TAX, BPF_W, encodeProgram, jump, stmt } from './bpf.js';
import { compilePolicy } from './compiler.js';
import { disassemble } from './disasm.js';

test('a compiled policy disassembles to the expected seccomp-tools style text', () => {
  const c = compilePolicy({
    defaultAction: 'errno(1)',
    rules: [
      { syscall: 'write', action: 'allow', args: [{ arg: 0, op: '<=', value: 2 }] },
      { syscall: 'exit_group', action: 'allow' },
      { syscall: 'execve', action: 'kill_process' },
    ],
  });
  const expected = ` line  CODE  JT   JF      K
=================================
 0000: 0x20 0x00 0x00 0x00000004  A = arch
 0001: 0x15 0x00 0x02 0xc000003e  if (A != ARCH_X86_64) goto 0004
 0002: 0x20 0x00 0x00 0x00000000  A = sys_number
 0003: 0x45 0x00 0x01 0x40000000  if (!(A & 0x40000000)) goto 0005
 0004: 0x06 0x00 0x00 0x80000000  return KILL_PROCESS
 0005: 0x15 0x03 0x00 0x00000001  if (A == write) goto 0009
 0006: 0x15 0x09 0x00 0x0000003b  if (A == execve) goto 0016
 0007: 0x15 0x09 0x00 0x000000e7  if (A == exit_group) goto 0017
 0008: 0x06 0x00 0x00 0x00050001  return ERRNO(1)
 0009: 0x20 0x00 0x00 0x00000014  A = args[0] >> 32
 0010: 0x25 0x04 0x00 0x00000000  if (A > 0x0) goto 0015
 0011: 0x15 0x00 0x02 0x00000000  if (A != 0x0) goto 0014
 0012: 0x20 0x00 0x00 0x00000010  A = args[0]
 0013: 0x25 0x01 0x00 0x00000002  if (A > 0x2) goto 0015
 0014: 0x06 0x00 0x00 0x7fff0000  return ALLOW
 0015: 0x06 0x00 0x00 0x00050001  return ERRNO(1)
 0016: 0x06 0x00 0x00 0x80000000  return KILL_PROCESS
 0017: 0x06 0x00 0x00 0x7fff0000  return ALLOW
`;
  assert.equal(disassemble(c.program), expected);
  assert.equal(disassemble(c.instructions), expected);
});

test('hand-written program: ja, immediates, ALU, jset with both branches, return A, data-flow naming', () => {
  const prog = encodeProgram([
    stmt(BPF_LD | BPF_W | BPF_ABS, 0), // A = sys_number
    jump(BPF_JMP | BPF_JGE | BPF_K, 0x3b, 0, 1),
    { code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: 3 },
    stmt(BPF_LD | BPF_W | BPF_ABS, 28), // A = args[1] >> 32
    stmt(BPF_ALU | BPF_AND | BPF_K, 0xff),
    jump(BPF_JMP | BPF_JSET | BPF_K, 0x4, 1, 2),
    stmt(BPF_LD | BPF_W | BPF_IMM, 0x50001),
    stmt(BPF_MISC | BPF_TAX, 0),
    stmt(BPF_RET | BPF_A, 0),
    stmt(BPF_RET | BPF_K, 0x7ff00007),
    stmt(BPF_RET | BPF_K, 0x7ffc0000),
  ]);
  assert.equal(
    disassemble(prog),
    ` line  CODE  JT   JF      K
=================================
 0000: 0x20 0x00 0x00 0x00000000  A = sys_number
 0001: 0x35 0x00 0x01 0x0000003b  if (A < 0x3b) goto 0003
 0002: 0x05 0x00 0x00 0x00000003  goto 0006
 0003: 0x20 0x00 0x00 0x0000001c  A = args[1] >> 32
 0004: 0x54 0x00 0x00 0x000000ff  A &= 0xff
 0005: 0x45 0x01 0x02 0x00000004  if (A & 0x4) goto 0007 else goto 0008
 0006: 0x00 0x00 0x00 0x00050001  A = 0x50001
 0007: 0x07 0x00 0x00 0x00000000  X = A
 0008: 0x16 0x00 0x00 0x00000000  return A
 0009: 0x06 0x00 0x00 0x7ff00007  return TRACE(7)
 0010: 0x06 0x00 0x00 0x7ffc0000  return LOG
`,
  );
});

test('a comparison where A may hold different fields does not print syscall names', () => {
  const prog = encodeProgram([
    stmt(BPF_LD | BPF_W | BPF_ABS, 0),
    jump(BPF_JMP | BPF_JSET | BPF_K, 1, 0, 1),
    stmt(BPF_LD | BPF_W | BPF_ABS, 16), // A = args[0] on one path only
    jump(BPF_JMP | 0x10 | BPF_K, 1, 0, 1), // jeq 1: `write` only if A surely is the syscall number
    stmt(BPF_RET | BPF_K, 0x7fff0000),
    stmt(BPF_RET | BPF_K, 0),
  ]);
  const text = disassemble(prog);
  assert.match(text, /0003: 0x15 0x00 0x01 0x00000001  if \(A != 0x1\) goto 0005\n/);
  assert.doesNotMatch(text, /write/);
});
