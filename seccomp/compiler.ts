// Policy -> classic BPF program for seccomp.
//
// Program shape:
//   ld arch; jeq AUDIT_ARCH_X86_64 else bad; ld nr; jset X32_SYSCALL_BIT -> bad; bad: ret badArch
//   dispatch: a binary search tree of `jge` over the sorted syscall numbers that have rules, ending
//   in short `jeq` chains (leaves); each leaf is followed by its syscalls' rule bodies so that most
//   jumps stay within the 8-bit jt/jf range.
//   body: for each rule, its conditions (each 64-bit compare split into high and low 32-bit words),
//   falling through to `ret action`; a failed condition jumps to the next rule; after the last
//   rule, `ret defaultAction`.
// Jumps are emitted against symbolic labels; layout() then inserts `ja` trampolines (32-bit k)
// wherever a conditional target is more than 255 instructions away, repeating until stable.
import {
  AUDIT_ARCH_X86_64,
  BPF_ABS,
  BPF_ALU,
  BPF_AND,
  BPF_JA,
  BPF_JEQ,
  BPF_JGE,
  BPF_JGT,
  BPF_JMP,
  BPF_JSET,
  BPF_K,
  BPF_LD,
  BPF_MAXINSNS,
  BPF_RET,
  BPF_W,
  SECCOMP_DATA_ARCH,
  SECCOMP_DATA_NR,
  X32_SYSCALL_BIT,
  argHighOffset,
  argLowOffset,
  encodeProgram,
  type SockFilter,
} from './bpf.js';
import { resolvePolicy, type Policy, type ResolvedCondition, type ResolvedPolicy, type ResolvedRule } from './policy.js';

export class CompileError extends Error {
  override name = 'CompileError';
}

export interface CompileOptions {
  /** Largest number of `jeq` tests in one leaf of the dispatch tree (default 4). */
  leafSize?: number;
}

export interface CompiledFilter {
  /** Array of struct sock_filter, ready for SECCOMP_SET_MODE_FILTER. */
  program: Buffer;
  instructions: SockFilter[];
  /** How many `ja` trampolines the layout needed. */
  trampolines: number;
}

// ---- a tiny assembler with labels ----

interface Label {
  at?: Insn;
}
type Insn =
  | { kind: 'stmt'; code: number; k: number }
  | { kind: 'cond'; code: number; k: number; jt: Label; jf: Label }
  | { kind: 'ja'; target: Label };

class Assembler {
  readonly insns: Insn[] = [];
  private pending: Label[] = [];

  label(): Label {
    return {};
  }
  /** Bind a label to the next emitted instruction. */
  bind(l: Label): void {
    if (l.at) throw new CompileError('internal: label bound twice');
    this.pending.push(l);
  }
  private push(i: Insn): void {
    for (const l of this.pending) l.at = i;
    this.pending = [];
    this.insns.push(i);
  }
  stmt(code: number, k: number): void {
    this.push({ kind: 'stmt', code, k: k >>> 0 });
  }
  /** Conditional jump; `null` targets mean "the next instruction". */
  cond(code: number, k: number, jt: Label | null, jf: Label | null): void {
    const next = jt === null || jf === null ? this.label() : null;
    this.push({ kind: 'cond', code, k: k >>> 0, jt: jt ?? next!, jf: jf ?? next! });
    if (next) this.bind(next);
  }
  ret(value: number): void {
    this.stmt(BPF_RET | BPF_K, value);
  }
  loadWord(offset: number): void {
    this.stmt(BPF_LD | BPF_W | BPF_ABS, offset);
  }
  finish(): void {
    if (this.pending.length) throw new CompileError('internal: label bound past the end of the program');
  }
}

/** Resolve labels to offsets, inserting `ja` trampolines for conditional jumps beyond 255. */
function layout(input: Insn[]): { insns: SockFilter[]; trampolines: number } {
  const insns = input.slice();
  let trampolines = 0;
  for (;;) {
    const index = new Map<Insn, number>();
    insns.forEach((ins, i) => index.set(ins, i));
    const dist = (from: number, l: Label): number => {
      const to = l.at ? index.get(l.at) : undefined;
      if (to === undefined) throw new CompileError('internal: jump to an unbound label');
      const d = to - from - 1;
      if (d < 0) throw new CompileError('internal: backward jump');
      return d;
    };
    let changed = false;
    for (let i = 0; i < insns.length && !changed; i++) {
      const ins = insns[i]!;
      if (ins.kind !== 'cond') continue;
      for (const which of ['jt', 'jf'] as const) {
        if (dist(i, ins[which]) <= 255) continue;
        // Far target: jump to a trampoline placed right after this instruction instead. Nothing
        // falls through into i+1 (a conditional jump names both targets), so insertion is safe.
        const tramp: Insn = { kind: 'ja', target: ins[which] };
        insns.splice(i + 1, 0, tramp);
        ins[which] = { at: tramp };
        trampolines++;
        changed = true;
        break;
      }
    }
    if (changed) continue;
    const out = insns.map((ins, i): SockFilter => {
      if (ins.kind === 'stmt') return { code: ins.code, jt: 0, jf: 0, k: ins.k };
      if (ins.kind === 'ja') return { code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: dist(i, ins.target) };
      return { code: ins.code, jt: dist(i, ins.jt), jf: dist(i, ins.jf), k: ins.k };
    });
    return { insns: out, trampolines };
  }
}

// ---- code generation ----

const hi32 = (v: bigint): number => Number((v >> 32n) & 0xffffffffn);
const lo32 = (v: bigint): number => Number(v & 0xffffffffn);
const J = (op: number): number => BPF_JMP | op | BPF_K;

/**
 * Emit one 64-bit condition. Falls through (or jumps to the next instruction) when it holds and
 * jumps to `fail` when it does not. The unsigned orderings compare the high words first and only
 * look at the low words when the high words are equal.
 */
function emitCondition(a: Assembler, c: ResolvedCondition, fail: Label): void {
  const hi = hi32(c.value);
  const lo = lo32(c.value);
  const pass = a.label();
  switch (c.op) {
    case '==':
      a.loadWord(argHighOffset(c.arg));
      a.cond(J(BPF_JEQ), hi, null, fail);
      a.loadWord(argLowOffset(c.arg));
      a.cond(J(BPF_JEQ), lo, null, fail);
      return;
    case '!=':
      a.loadWord(argHighOffset(c.arg));
      a.cond(J(BPF_JEQ), hi, null, pass);
      a.loadWord(argLowOffset(c.arg));
      a.cond(J(BPF_JEQ), lo, fail, null);
      break;
    case 'masked==': {
      const mhi = hi32(c.mask);
      const mlo = lo32(c.mask);
      // A zero half-mask makes that half irrelevant; an all-ones half-mask needs no AND.
      if (mhi !== 0) {
        a.loadWord(argHighOffset(c.arg));
        if (mhi !== 0xffffffff) a.stmt(BPF_ALU | BPF_AND | BPF_K, mhi);
        a.cond(J(BPF_JEQ), hi, null, fail);
      }
      if (mlo !== 0) {
        a.loadWord(argLowOffset(c.arg));
        if (mlo !== 0xffffffff) a.stmt(BPF_ALU | BPF_AND | BPF_K, mlo);
        a.cond(J(BPF_JEQ), lo, null, fail);
      }
      return;
    }
    case '>':
    case '>=':
      a.loadWord(argHighOffset(c.arg));
      a.cond(J(BPF_JGT), hi, pass, null); // high word bigger: holds whatever the low word is
      a.cond(J(BPF_JEQ), hi, null, fail); // high word smaller: fails
      a.loadWord(argLowOffset(c.arg));
      a.cond(J(c.op === '>' ? BPF_JGT : BPF_JGE), lo, null, fail);
      break;
    case '<':
    case '<=':
      a.loadWord(argHighOffset(c.arg));
      a.cond(J(BPF_JGT), hi, fail, null); // high word bigger: fails
      a.cond(J(BPF_JEQ), hi, null, pass); // high word smaller: holds
      a.loadWord(argLowOffset(c.arg));
      // a < v  <=>  !(a >= v);  a <= v  <=>  !(a > v)
      a.cond(J(c.op === '<' ? BPF_JGE : BPF_JGT), lo, fail, null);
      break;
  }
  a.bind(pass);
}

function emitBody(a: Assembler, rules: ResolvedRule[], defaultAction: number): void {
  for (const rule of rules) {
    if (rule.conditions.length === 0) {
      a.ret(rule.action); // unconditional: later rules are unreachable
      return;
    }
    const fail = a.label();
    for (const c of rule.conditions) emitCondition(a, c, fail);
    a.ret(rule.action);
    a.bind(fail);
  }
  a.ret(defaultAction);
}

interface Entry {
  nr: number;
  rules: ResolvedRule[];
}

const bodyKey = (rules: ResolvedRule[]): string =>
  JSON.stringify(rules, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString(16) : v));

function emitTree(a: Assembler, entries: Entry[], defaultAction: number, leafSize: number): void {
  if (entries.length > leafSize) {
    const mid = entries.length >> 1;
    const right = a.label();
    a.cond(J(BPF_JGE), entries[mid]!.nr, right, null);
    emitTree(a, entries.slice(0, mid), defaultAction, leafSize);
    a.bind(right);
    emitTree(a, entries.slice(mid), defaultAction, leafSize);
    return;
  }
  // Leaf: a jeq chain, the default for "none of these", then the bodies (shared when identical).
  const bodies = new Map<string, { label: Label; rules: ResolvedRule[] }>();
  for (const e of entries) {
    const key = bodyKey(e.rules);
    let b = bodies.get(key);
    if (!b) bodies.set(key, (b = { label: a.label(), rules: e.rules }));
    a.cond(J(BPF_JEQ), e.nr, b.label, null);
  }
  a.ret(defaultAction);
  for (const b of bodies.values()) {
    a.bind(b.label);
    emitBody(a, b.rules, defaultAction);
  }
}

/** Drop rules that cannot change the outcome, so they cost no instructions. */
function simplify(rules: ResolvedRule[], defaultAction: number): ResolvedRule[] {
  const firstUnconditional = rules.findIndex((r) => r.conditions.length === 0);
  let live = firstUnconditional >= 0 ? rules.slice(0, firstUnconditional + 1) : rules.slice();
  // Trailing rules whose action is the default do nothing: falling off the end gives the same.
  while (live.length && live[live.length - 1]!.action === defaultAction) live = live.slice(0, -1);
  return live;
}

/** Compile an already-resolved policy. */
export function compileResolved(p: ResolvedPolicy, opts: CompileOptions = {}): CompiledFilter {
  const leafSize = opts.leafSize ?? 4;
  if (!Number.isInteger(leafSize) || leafSize < 1) throw new CompileError('leafSize must be a positive integer');
  const a = new Assembler();
  const bad = a.label();
  a.loadWord(SECCOMP_DATA_ARCH);
  a.cond(J(BPF_JEQ), AUDIT_ARCH_X86_64, null, bad);
  a.loadWord(SECCOMP_DATA_NR);
  const dispatch = a.label();
  a.cond(J(BPF_JSET), X32_SYSCALL_BIT, bad, dispatch);
  a.bind(bad);
  a.ret(p.badArchAction);
  a.bind(dispatch);
  const entries: Entry[] = [...p.syscalls.entries()]
    .map(([nr, rules]) => ({ nr, rules: simplify(rules, p.defaultAction) }))
    .filter((e) => e.rules.length > 0)
    .sort((x, y) => x.nr - y.nr);
  emitTree(a, entries, p.defaultAction, leafSize);
  a.finish();
  const { insns, trampolines } = layout(a.insns);
  if (insns.length > BPF_MAXINSNS) {
    throw new CompileError(`compiled filter has ${insns.length} instructions; the kernel accepts at most ${BPF_MAXINSNS}`);
  }
  return { program: encodeProgram(insns), instructions: insns, trampolines };
}

/** Validate, resolve and compile a policy. */
export function compilePolicy(policy: Policy, opts: CompileOptions = {}): CompiledFilter {
  return compileResolved(resolvePolicy(policy), opts);
}
