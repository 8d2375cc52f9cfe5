// Compiler + emulator: every action, every comparison at 32/64-bit edges, masks, rule ordering,
// arch/x32 rejection, long-jump trampolines, limits. The emulator enforces the kernel checker's
// rules (in-range jumps and loads), so a layout bug fails loudly here; install.test.ts then
// proves the same programs against the real kernel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, BPF_JA, BPF_JMP, decodeProgram, encodeProgram, stmt, BPF_RET, BPF_K, BPF_LD, BPF_W, BPF_ABS } from './bpf.js';
import { compilePolicy, CompileError } from './compiler.js';
import { emulate, EmulatorError } from './emulator.js';
import { PolicyError, parsePolicyJson, resolvePolicy, toU64, type Action, type ArgCondition, type CmpOp, type Policy } from './policy.js';
import { SYSCALLS_X86_64 } from './syscalls-x86_64.js';

const NR = SYSCALLS_X86_64 as Record<string, number>;
const U64 = (1n << 64n) - 1n;
const EDGES = [0n, 1n, 5n, 0xfffffffen, 0xffffffffn, 0x100000000n, 0x100000001n, 0x100000005n, 0xffffffff00000000n, U64 - 1n, U64];

/** The policy semantics written directly, independent of the compiler. */
function reference(policy: Policy, nr: number, args: bigint[]): number {
  const r = resolvePolicy(policy);
  for (const rule of r.syscalls.get(nr) ?? []) {
    const ok = rule.conditions.every((c) => {
      const a = args[c.arg] ?? 0n;
      switch (c.op) {
        case '==': return a === c.value;
        case '!=': return a !== c.value;
        case 'masked==': return (a & c.mask) === c.value;
        case '<': return a < c.value;
        case '<=': return a <= c.value;
        case '>': return a > c.value;
        case '>=': return a >= c.value;
      }
    });
    if (ok) return rule.action;
  }
  return r.defaultAction;
}

function run(policy: Policy, nr: number, args: bigint[] = [], arch = AUDIT_ARCH_X86_64) {
  return emulate(compilePolicy(policy).program, { nr, arch, args });
}

test('every action encodes and decodes', () => {
  const cases: [Action, string, number][] = [
    ['allow', 'allow', 0],
    ['kill_process', 'kill_process', 0],
    ['kill_thread', 'kill_thread', 0],
    ['trap', 'trap', 0],
    ['trap(7)', 'trap', 7],
    ['log', 'log', 0],
    ['trace', 'trace', 0],
    ['trace(42)', 'trace', 42],
    ['errno(1)', 'errno', 1],
    ['errno(EACCES)', 'errno', 13],
    ['errno(4095)', 'errno', 4095],
  ];
  for (const [action, name, data] of cases) {
    const r = run({ defaultAction: 'allow', rules: [{ syscall: 'getppid', action }] }, NR.getppid!);
    assert.equal(r.action, name, action);
    assert.equal(r.data, data, action);
  }
  assert.throws(() => compilePolicy({ defaultAction: 'allow', rules: [{ syscall: 'read', action: 'errno(4096)' as Action }] }), /invalid action/);
  assert.throws(() => compilePolicy({ defaultAction: 'allow', rules: [{ syscall: 'read', action: 'errno(ENOTANERRNO)' as Action }] }), /invalid action/);
  assert.throws(() => compilePolicy({ defaultAction: 'explode' as Action, rules: [] }), /defaultAction: invalid action/);
});

test('default action for syscalls without rules, including an empty rule list', () => {
  assert.equal(run({ defaultAction: 'errno(38)', rules: [] }, 0).data, 38);
  const p: Policy = { defaultAction: 'kill_process', rules: [{ syscall: ['read', 'write'], action: 'allow' }] };
  assert.equal(run(p, NR.read!).action, 'allow');
  assert.equal(run(p, NR.write!).action, 'allow');
  assert.equal(run(p, NR.open!).action, 'kill_process');
  assert.equal(run(p, 449).action, 'kill_process');
  assert.equal(run(p, 0x3fffffff).action, 'kill_process');
});

test('arch other than x86_64 and x32 syscalls are rejected with badArchAction', () => {
  const p: Policy = { defaultAction: 'allow', rules: [{ syscall: 'read', action: 'allow' }] };
  assert.equal(run(p, 0, [], AUDIT_ARCH_I386).action, 'kill_process');
  assert.equal(run(p, 0, [], 0).action, 'kill_process');
  assert.equal(run(p, 0x40000000 | 0).action, 'kill_process', 'x32 read');
  assert.equal(run(p, 0x40000000 | 1).action, 'kill_process', 'x32 write');
  assert.equal(run(p, -1 >>> 0).action, 'kill_process', 'nr -1 has the x32 bit set');
  const q: Policy = { ...p, badArchAction: 'errno(EINVAL)' };
  assert.deepEqual([run(q, 0, [], AUDIT_ARCH_I386).action, run(q, 0, [], AUDIT_ARCH_I386).data], ['errno', 22]);
  assert.equal(run(q, 1, [], AUDIT_ARCH_X86_64).action, 'allow');
});

test('every comparison operator on 64-bit edge values matches the reference, for several arg indices', () => {
  const ops: CmpOp[] = ['==', '!=', '<', '<=', '>', '>='];
  let checked = 0;
  for (const op of ops) {
    for (const v of EDGES) {
      for (const argIdx of [0, 3, 5]) {
        const p: Policy = {
          defaultAction: 'errno(1)',
          rules: [{ syscall: 'ioctl', action: 'allow', args: [{ arg: argIdx, op, value: v }] }],
        };
        const prog = compilePolicy(p).program;
        for (const a of EDGES) {
          const args = [7n, 7n, 7n, 7n, 7n, 7n];
          args[argIdx] = a;
          const got = emulate(prog, { nr: NR.ioctl!, args }).value;
          assert.equal(got, reference(p, NR.ioctl!, args), `${a} ${op} ${v} (arg ${argIdx})`);
          checked++;
        }
      }
    }
  }
  assert.ok(checked > 2000);
});

test('explicit high-word-equal cases for < and >', () => {
  const mk = (op: CmpOp, value: bigint): Policy => ({ defaultAction: 'errno(1)', rules: [{ syscall: 'read', action: 'allow', args: [{ arg: 0, op, value }] }] });
  const v = 0x0000000500000010n;
  const act = (op: CmpOp, a: bigint) => run(mk(op, v), 0, [a]).action;
  assert.equal(act('<', 0x000000050000000fn), 'allow'); // same high word, low smaller
  assert.equal(act('<', 0x0000000500000010n), 'errno');
  assert.equal(act('<', 0x0000000400000020n), 'allow'); // high smaller, low bigger
  assert.equal(act('<', 0x0000000600000000n), 'errno'); // high bigger, low smaller
  assert.equal(act('>', 0x0000000500000011n), 'allow');
  assert.equal(act('>', 0x0000000500000010n), 'errno');
  assert.equal(act('>', 0x000000060000000fn), 'allow'); // high bigger, low smaller
  assert.equal(act('>', 0x0000000400000020n), 'errno'); // high smaller, low bigger
  assert.equal(act('<=', v), 'allow');
  assert.equal(act('>=', v), 'allow');
});

test('masked== on the low half, the high half and both', () => {
  const cases: { mask: bigint; value: bigint; hit: bigint[]; miss: bigint[] }[] = [
    { mask: 0xffffffffn, value: 0xc008ae67n, hit: [0xc008ae67n, 0xffffffffc008ae67n, 0x12345678c008ae67n], miss: [0xc008ae68n, 0x1c008ae67n - 0x100000000n + 1n] },
    { mask: 0xffffffff00000000n, value: 0x1234567800000000n, hit: [0x1234567800000000n, 0x12345678ffffffffn], miss: [0x1234567900000000n, 0n] },
    { mask: 0xff00ff0000ff00ffn, value: 0x1200340000560078n, hit: [0x12aa34bbcc56dd78n], miss: [0x13aa34bbcc56dd78n, 0x12aa34bbcc56dd79n] },
    { mask: 0x3n, value: 0x2n, hit: [2n, 6n, U64 - 1n], miss: [0n, 1n, 3n, U64] }, // O_ACCMODE-style
  ];
  for (const c of cases) {
    const p: Policy = { defaultAction: 'kill_process', rules: [{ syscall: 'ioctl', action: 'allow', args: [{ arg: 1, op: 'masked==', mask: c.mask, value: c.value }] }] };
    for (const a of c.hit) assert.equal(run(p, NR.ioctl!, [0n, a]).action, 'allow', `hit ${a.toString(16)}`);
    for (const a of c.miss) assert.equal(run(p, NR.ioctl!, [0n, a]).action, 'kill_process', `miss ${a.toString(16)}`);
  }
  assert.throws(
    () => compilePolicy({ defaultAction: 'allow', rules: [{ syscall: 'read', action: 'allow', args: [{ arg: 0, op: 'masked==', mask: 0xf0, value: 0x0f }] }] }),
    /bits outside mask/,
  );
  assert.throws(() => compilePolicy({ defaultAction: 'allow', rules: [{ syscall: 'read', action: 'allow', args: [{ arg: 0, op: 'masked==', value: 1 }] }] }), /mask/);
});

test('conditions AND, rules OR, first matching rule wins', () => {
  const p: Policy = {
    defaultAction: 'kill_process',
    rules: [
      { syscall: 'mmap', action: 'errno(13)', args: [{ arg: 2, op: 'masked==', mask: 4, value: 4 }, { arg: 3, op: 'masked==', mask: 0x20, value: 0x20 }] },
      { syscall: 'mmap', action: 'allow', args: [{ arg: 1, op: '<=', value: 0x10000 }] },
      { syscall: 'mmap', action: 'log', args: [{ arg: 0, op: '==', value: 0 }] },
    ],
  };
  const act = (args: bigint[]) => run(p, NR.mmap!, args);
  assert.equal(act([0n, 0x1000n, 7n, 0x22n]).data, 13); // PROT_EXEC|MAP_ANONYMOUS: rule 1 first
  assert.equal(act([0n, 0x1000n, 7n, 0x2n]).action, 'allow'); // rule 1 fails on arg3, rule 2 matches
  assert.equal(act([0n, 0x20000n, 3n, 0x22n]).action, 'log'); // rules 1, 2 fail; 3 matches
  assert.equal(act([1n, 0x20000n, 3n, 0x22n]).action, 'kill_process'); // nothing matches
});

test('random policies agree with the reference semantics', () => {
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed % n;
  };
  const rnd64 = (): bigint => (rnd(3) === 0 ? EDGES[rnd(EDGES.length)]! : (BigInt(rnd(0x10000)) << BigInt(rnd(4) * 16)) | BigInt(rnd(16)));
  const names = ['read', 'write', 'close', 'mmap', 'ioctl', 'futex', 'openat', 'exit_group'];
  const ops: CmpOp[] = ['==', '!=', 'masked==', '<', '<=', '>', '>='];
  const actions: Action[] = ['allow', 'errno(1)', 'errno(2)', 'log', 'trap', 'trace(3)', 'kill_thread'];
  for (let iter = 0; iter < 150; iter++) {
    const rules = Array.from({ length: 1 + rnd(12) }, () => ({
      syscall: names[rnd(names.length)]!,
      action: actions[rnd(actions.length)]!,
      args: Array.from({ length: rnd(4) }, (): ArgCondition => {
        const op = ops[rnd(ops.length)]!;
        const value = rnd64();
        return op === 'masked==' ? { arg: rnd(6), op, mask: value | 0xffn, value: value & 0xf0n } : { arg: rnd(6), op, value };
      }),
    }));
    const p: Policy = { defaultAction: 'kill_process', rules };
    const prog = compilePolicy(p, { leafSize: 1 + rnd(5) }).program;
    for (let k = 0; k < 40; k++) {
      const nr = NR[names[rnd(names.length)]!]!;
      // Arguments near the rule values hit the equal / off-by-one paths.
      const pool = rules.flatMap((r) => r.args.map((c) => toU64(c.value)));
      const args = Array.from({ length: 6 }, () => {
        if (pool.length && rnd(2) === 0) return BigInt.asUintN(64, pool[rnd(pool.length)]! + BigInt(rnd(3) - 1));
        return rnd64();
      });
      assert.equal(emulate(prog, { nr, args }).value, reference(p, nr, args), JSON.stringify({ iter, nr, args: args.map(String) }));
    }
  }
});

test('300+ syscalls with argument rules need long-jump trampolines and still decide correctly', () => {
  const all = Object.keys(SYSCALLS_X86_64);
  assert.ok(all.length >= 300);
  const rules = all.map((name, i) => ({
    syscall: name,
    action: (i % 3 === 0 ? 'allow' : `errno(${(i % 100) + 1})`) as Action,
    args: [{ arg: i % 6, op: (i % 2 ? '>=' : '!=') as CmpOp, value: BigInt(i) << 30n }],
  }));
  const p: Policy = { defaultAction: 'kill_process', rules };
  const c = compilePolicy(p);
  assert.ok(c.trampolines > 0, 'expected trampolines');
  assert.ok(c.instructions.length <= 4096, `${c.instructions.length} instructions`);
  assert.ok(c.instructions.some((i) => i.code === (BPF_JMP | BPF_JA) && i.k > 255), 'a ja beyond 8 bits');
  for (const [i, name] of all.entries()) {
    const nr = NR[name]!;
    for (const a of [0n, BigInt(i) << 30n, (BigInt(i) << 30n) - 1n, U64]) {
      const args = [0n, 0n, 0n, 0n, 0n, 0n];
      args[i % 6] = a;
      assert.equal(emulate(c.program, { nr, args }).value, reference(p, nr, args), `${name} ${a}`);
    }
  }
  assert.equal(emulate(c.program, { nr: 1000 }).action, 'kill_process');
});

test('a rule with a long AND list: its first failure jumps past 255 instructions', () => {
  const conds: ArgCondition[] = Array.from({ length: 80 }, (_, i) => ({ arg: i % 6, op: '!=', value: 0x100000000n * BigInt(i + 1) + BigInt(i) }));
  const p: Policy = {
    defaultAction: 'kill_process',
    rules: [
      { syscall: 'futex', action: 'allow', args: conds },
      { syscall: 'futex', action: 'errno(EINVAL)' },
    ],
  };
  const c = compilePolicy(p);
  assert.ok(c.trampolines > 0, 'expected trampolines');
  assert.equal(emulate(c.program, { nr: NR.futex!, args: [1, 2, 3, 4, 5, 6] }).action, 'allow');
  for (let i = 0; i < 80; i += 7) {
    const args = [1n, 2n, 3n, 4n, 5n, 6n];
    args[i % 6] = 0x100000000n * BigInt(i + 1) + BigInt(i);
    assert.equal(emulate(c.program, { nr: NR.futex!, args }).data, 22, `condition ${i} fails`);
  }
});

test('one syscall with a long list of alternatives', () => {
  const reqs = Array.from({ length: 120 }, (_, i) => 0x4000ae00 + i * 3);
  const p: Policy = {
    defaultAction: 'errno(1)',
    rules: [
      ...reqs.map((r) => ({ syscall: 'ioctl', action: 'allow' as Action, args: [{ arg: 1, op: '==' as CmpOp, value: r }] })),
      { syscall: 'ioctl', action: 'log', args: [{ arg: 0, op: '<', value: 3 }] },
      { syscall: ['read', 'write', 'close'], action: 'allow' },
    ],
  };
  const c = compilePolicy(p);
  for (const r of reqs) assert.equal(emulate(c.program, { nr: NR.ioctl!, args: [5, r] }).action, 'allow');
  assert.equal(emulate(c.program, { nr: NR.ioctl!, args: [5, 0x4000ae01] }).action, 'errno');
  assert.equal(emulate(c.program, { nr: NR.ioctl!, args: [2, 0x4000ae01] }).action, 'log');
  assert.equal(emulate(c.program, { nr: NR.close! }).action, 'allow');
});

test('programs over 4096 instructions are refused', () => {
  // Distinct values per syscall so that identical bodies cannot be shared.
  const rules = Object.keys(SYSCALLS_X86_64).map((name, i) => ({
    syscall: name,
    action: 'allow' as Action,
    args: Array.from({ length: 3 }, (_, a): ArgCondition => ({ arg: a, op: '<', value: 1000 + i })),
  }));
  assert.throws(() => compilePolicy({ defaultAction: 'kill_process', rules }), (e: unknown) => e instanceof CompileError && /at most 4096/.test(e.message));
});

test('unknown syscall names are an error naming all of them', () => {
  assert.throws(
    () => compilePolicy({ defaultAction: 'allow', rules: [{ syscall: ['read', 'frobnicate'], action: 'allow' }, { syscall: 'socketcall', action: 'allow' }] }),
    (e: unknown) => e instanceof PolicyError && /frobnicate/.test(e.message) && /socketcall/.test(e.message) && !/\bread\b/.test(e.message),
  );
});

test('argument values: number, bigint, decimal/hex strings, negative as two\'s complement, range errors', () => {
  assert.equal(toU64(5), 5n);
  assert.equal(toU64('0xffffffffffffffff'), U64);
  assert.equal(toU64('18446744073709551615'), U64);
  assert.equal(toU64(-100), 0xffffffffffffff9cn);
  assert.equal(toU64(2n ** 32n), 0x100000000n);
  assert.throws(() => toU64('0x10000000000000000'), RangeError);
  assert.throws(() => toU64(2 ** 60), /safe integer/);
  assert.throws(() => toU64('12abc'), /not an integer/);
  const p: Policy = { defaultAction: 'errno(1)', rules: [{ syscall: 'openat', action: 'allow', args: [{ arg: 0, op: '==', value: -100 }] }] };
  assert.equal(run(p, NR.openat!, [0xffffffffffffff9cn]).action, 'allow');
  assert.equal(run(p, NR.openat!, [0xffffff9cn]).action, 'errno');
});

test('JSON policies are validated with clear messages', () => {
  const good = parsePolicyJson('{"defaultAction":"kill_process","rules":[{"syscall":"read","action":"allow","args":[{"arg":0,"op":"<=","value":"0x10"}]}]}');
  assert.equal(good.rules.length, 1);
  assert.throws(() => parsePolicyJson('{'), /not valid JSON/);
  assert.throws(() => parsePolicyJson('{"defaultAction":"allow","rules":[{"syscall":"read","action":"allow","args":[{"arg":6,"op":"==","value":1}]}]}'), /rules\.0\.args\.0\.arg/);
  assert.throws(() => parsePolicyJson('{"defaultAction":"allow","rules":[{"syscall":"read","action":"allow","args":[{"arg":0,"op":"=~","value":1}]}]}'), /op/);
  assert.throws(() => parsePolicyJson('{"defaultAction":"allow","rules":[],"extra":1}'), /extra|Unrecognized/i);
});

test('emulator guards: bad jumps, loads, falling off the end', () => {
  const ld = (k: number) => stmt(BPF_LD | BPF_W | BPF_ABS, k);
  assert.throws(() => emulate([ld(0)], { nr: 0 }), EmulatorError); // falls off
  assert.throws(() => emulate([ld(64), stmt(BPF_RET | BPF_K, 0)], { nr: 0 }), /outside seccomp_data/);
  assert.throws(() => emulate([ld(2), stmt(BPF_RET | BPF_K, 0)], { nr: 0 }), /misaligned/);
  assert.throws(() => emulate([{ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: 5 }, stmt(BPF_RET | BPF_K, 0)], { nr: 0 }), /past the end/);
  assert.throws(() => emulate([], { nr: 0 }), /length/);
  assert.equal(emulate([ld(16), stmt(BPF_RET | BPF_K, 0x7fff0000)], { nr: 0, args: [1] }).action, 'allow');
});

test('Buffer encoding round-trips', () => {
  const c = compilePolicy({ defaultAction: 'allow', rules: [{ syscall: 'read', action: 'errno(1)', args: [{ arg: 0, op: '>', value: 3 }] }] });
  assert.equal(c.program.length, c.instructions.length * 8);
  assert.deepEqual(decodeProgram(c.program), c.instructions);
  assert.deepEqual(encodeProgram(decodeProgram(c.program)), c.program);
});
