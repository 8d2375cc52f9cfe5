// The policy format: what a user writes (TypeScript objects or JSON), its validation, and its
// resolution into numbers the compiler can work with.
//
// Semantics, stated once so compiler, emulator tests and docs agree:
// - Rules name syscalls; several rules for the same syscall are tried in the order written and the
//   FIRST rule whose conditions all hold decides the action (so rules for one syscall are OR-ed).
// - A rule's argument conditions are AND-ed; a rule without conditions always matches.
// - A syscall with no matching rule gets `defaultAction`.
// - Argument values are 64-bit unsigned. Negative numbers are accepted and taken as two's
//   complement (so -100 means AT_FDCWD as the kernel sees it sign-extended in a register).
import { constants as osConstants } from 'node:os';
import * as z from 'zod';
import {
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  SECCOMP_RET_KILL_THREAD,
  SECCOMP_RET_LOG,
  SECCOMP_RET_TRACE,
  SECCOMP_RET_TRAP,
} from './bpf.js';
import { syscallNumber } from './syscalls.js';

export type ArgValue = number | bigint | string;
export type CmpOp = '==' | '!=' | 'masked==' | '<' | '<=' | '>' | '>=';
export const CMP_OPS: readonly CmpOp[] = ['==', '!=', 'masked==', '<', '<=', '>', '>='];

/**
 * An action. `errno(N)` takes a number (0..4095) or an errno name (`errno(EPERM)`); `trace(N)` and
 * `trap(N)` take an optional 16-bit value handed to the tracer / put in si_errno.
 */
export type Action =
  | 'allow'
  | 'kill_process'
  | 'kill_thread'
  | 'trap'
  | 'log'
  | 'trace'
  | `errno(${number | string})`
  | `trace(${number})`
  | `trap(${number})`;

export interface ArgCondition {
  /** Argument index, 0..5. */
  arg: number;
  op: CmpOp;
  value: ArgValue;
  /** Required for `masked==`: the condition is `(args[arg] & mask) == value`. */
  mask?: ArgValue;
}

export interface Rule {
  /** One syscall name, or several that share this rule. */
  syscall: string | string[];
  action: Action;
  /** AND-ed argument conditions; absent or empty = always matches. */
  args?: ArgCondition[];
  /** Free text; ignored by the compiler, kept for humans reading the policy. */
  comment?: string;
}

export interface Policy {
  /** Only x86_64 is supported; the field exists so policies say what they were written for. */
  arch?: 'x86_64';
  /** Action for syscalls without a matching rule. */
  defaultAction: Action;
  /** Action for a foreign architecture (e.g. i386 via int 0x80) or an x32 syscall; default kill_process. */
  badArchAction?: Action;
  rules: Rule[];
}

const U64_MAX = (1n << 64n) - 1n;

/** Parse a 64-bit argument value; throws RangeError with the offending text. */
export function toU64(v: ArgValue, what = 'value'): bigint {
  let b: bigint;
  if (typeof v === 'bigint') b = v;
  else if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new RangeError(`${what} ${v} is not a safe integer; pass a bigint or a string for large values`);
    b = BigInt(v);
  } else {
    const s = v.trim();
    if (!/^-?(0x[0-9a-fA-F]+|0o[0-7]+|0b[01]+|\d+)$/.test(s)) throw new RangeError(`${what} "${v}" is not an integer (decimal, 0x, 0o or 0b)`);
    b = s.startsWith('-') ? -BigInt(s.slice(1)) : BigInt(s);
  }
  if (b < -(1n << 63n) || b > U64_MAX) throw new RangeError(`${what} ${v} does not fit in 64 bits`);
  return BigInt.asUintN(64, b);
}

const errnoByName = osConstants.errno as Record<string, number>;

/** Encode an action as the 32-bit seccomp return value. */
export function actionValue(action: Action): number {
  const simple: Record<string, number> = {
    allow: SECCOMP_RET_ALLOW,
    kill_process: SECCOMP_RET_KILL_PROCESS,
    kill_thread: SECCOMP_RET_KILL_THREAD,
    trap: SECCOMP_RET_TRAP,
    log: SECCOMP_RET_LOG,
    trace: SECCOMP_RET_TRACE,
  };
  const s = simple[action];
  if (s !== undefined) return s >>> 0;
  const m = /^(errno|trace|trap)\(\s*([A-Za-z0-9_]+)\s*\)$/.exec(action);
  if (!m) throw new Error(`unknown action "${action}" (expected allow, kill_process, kill_thread, trap, log, trace, errno(N), trace(N), trap(N))`);
  const [, kind, arg] = m as unknown as [string, 'errno' | 'trace' | 'trap', string];
  let n: number;
  if (/^\d+$/.test(arg)) n = Number(arg);
  else if (kind === 'errno' && errnoByName[arg] !== undefined) n = errnoByName[arg]!;
  else throw new Error(`action "${action}": ${kind === 'errno' ? 'unknown errno name' : 'expected a number'} "${arg}"`);
  // The kernel truncates errno to MAX_ERRNO (4095); anything larger is a policy bug, not intent.
  const max = kind === 'errno' ? 4095 : 0xffff;
  if (n > max) throw new RangeError(`action "${action}": ${n} exceeds ${max}`);
  const base = kind === 'errno' ? SECCOMP_RET_ERRNO : kind === 'trace' ? SECCOMP_RET_TRACE : SECCOMP_RET_TRAP;
  return (base | n) >>> 0;
}

// ---- zod schema for JSON (and for TS objects, so both paths get the same checks) ----

const argValueSchema = z.union([z.number().int(), z.bigint(), z.string()]);
const actionSchema = z.string().refine(
  (s) => {
    try {
      actionValue(s as Action);
      return true;
    } catch {
      return false;
    }
  },
  { message: 'invalid action (expected allow, kill_process, kill_thread, trap, log, trace, errno(N|ENAME), trace(N), trap(N))' },
);
const conditionSchema = z
  .object({
    arg: z.number().int().min(0).max(5),
    op: z.enum(CMP_OPS as [CmpOp, ...CmpOp[]]),
    value: argValueSchema,
    mask: argValueSchema.optional(),
  })
  .strict()
  .refine((c) => (c.op === 'masked==') === (c.mask !== undefined), { message: '`mask` is required with op "masked==" and only allowed there' });
const ruleSchema = z
  .object({
    syscall: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    action: actionSchema,
    args: z.array(conditionSchema).optional(),
    comment: z.string().optional(),
  })
  .strict();
export const policySchema = z
  .object({
    arch: z.literal('x86_64').optional(),
    defaultAction: actionSchema,
    badArchAction: actionSchema.optional(),
    rules: z.array(ruleSchema),
  })
  .strict();

export class PolicyError extends Error {
  override name = 'PolicyError';
}

/** Validate untrusted input (parsed JSON or an object) as a Policy. */
export function parsePolicy(input: unknown): Policy {
  const r = policySchema.safeParse(input);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
    throw new PolicyError(`invalid policy:\n  ${issues.join('\n  ')}`);
  }
  return r.data as Policy;
}

/** Parse policy JSON text (comments are not allowed; use the `comment` field on rules). */
export function parsePolicyJson(text: string): Policy {
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new PolicyError(`policy is not valid JSON: ${(e as Error).message}`);
  }
  return parsePolicy(obj);
}

// ---- resolved form: numbers only ----

export interface ResolvedCondition {
  arg: number;
  op: CmpOp;
  /** Already masked for `masked==`. */
  value: bigint;
  /** All ones except for `masked==`. */
  mask: bigint;
}

export interface ResolvedRule {
  conditions: ResolvedCondition[];
  /** 32-bit seccomp return value. */
  action: number;
}

export interface ResolvedPolicy {
  defaultAction: number;
  badArchAction: number;
  /** Rules per syscall number, in policy order. */
  syscalls: Map<number, ResolvedRule[]>;
}

/** Validate and resolve names and values. Unknown syscall names are reported all at once. */
export function resolvePolicy(input: Policy): ResolvedPolicy {
  const policy = parsePolicy(input);
  const unknown: string[] = [];
  const syscalls = new Map<number, ResolvedRule[]>();
  policy.rules.forEach((rule, ri) => {
    const conditions = (rule.args ?? []).map((c, ci): ResolvedCondition => {
      const where = `rules[${ri}].args[${ci}]`;
      const value = toU64(c.value, `${where}.value`);
      if (c.op !== 'masked==') return { arg: c.arg, op: c.op, value, mask: U64_MAX };
      const mask = toU64(c.mask!, `${where}.mask`);
      // A value with bits outside the mask can never match; that is always a mistake.
      if ((value & ~mask & U64_MAX) !== 0n) {
        throw new PolicyError(`${where}: value 0x${value.toString(16)} has bits outside mask 0x${mask.toString(16)}, so it can never match`);
      }
      return { arg: c.arg, op: c.op, value, mask };
    });
    const action = actionValue(rule.action);
    for (const name of Array.isArray(rule.syscall) ? rule.syscall : [rule.syscall]) {
      const nr = syscallNumber(name);
      if (nr === undefined) {
        unknown.push(name);
        continue;
      }
      const list = syscalls.get(nr) ?? [];
      list.push({ conditions, action });
      syscalls.set(nr, list);
    }
  });
  if (unknown.length) throw new PolicyError(`unknown syscall name${unknown.length > 1 ? 's' : ''} for x86_64: ${[...new Set(unknown)].join(', ')}`);
  return {
    defaultAction: actionValue(policy.defaultAction),
    badArchAction: actionValue(policy.badArchAction ?? 'kill_process'),
    syscalls,
  };
}
