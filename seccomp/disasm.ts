// Disassembler in the style of seccomp-tools' `disasm`:
//    line  CODE  JT   JF      K
//   =================================
//    0000: 0x20 0x00 0x00 0x00000004  A = arch
//    0001: 0x15 0x00 0x02 0xc000003e  if (A != ARCH_X86_64) goto 0004
// Comparisons against the syscall number print the syscall's name. To know when A holds the
// syscall number, a forward data-flow pass tracks what A was loaded from (classic BPF only jumps
// forward, so one pass in program order sees every predecessor before its successors).
import {
  AUDIT_ARCH_I386,
  AUDIT_ARCH_X86_64,
  BPF_A,
  BPF_ABS,
  BPF_ADD,
  BPF_ALU,
  BPF_AND,
  BPF_DIV,
  BPF_IMM,
  BPF_JA,
  BPF_JEQ,
  BPF_JGE,
  BPF_JGT,
  BPF_JMP,
  BPF_JSET,
  BPF_K,
  BPF_LD,
  BPF_LDX,
  BPF_LEN,
  BPF_LSH,
  BPF_MEM,
  BPF_MISC,
  BPF_MOD,
  BPF_MUL,
  BPF_NEG,
  BPF_OR,
  BPF_RET,
  BPF_RSH,
  BPF_ST,
  BPF_STX,
  BPF_SUB,
  BPF_TAX,
  BPF_TXA,
  BPF_X,
  BPF_XOR,
  SECCOMP_DATA_ARCH,
  SECCOMP_DATA_ARGS,
  SECCOMP_DATA_IP,
  SECCOMP_DATA_NR,
  bpfClass,
  bpfMiscOp,
  bpfMode,
  bpfOp,
  bpfRval,
  bpfSrc,
  decodeProgram,
  type SockFilter,
} from './bpf.js';
import { decodeAction } from './emulator.js';
import { syscallName } from './syscalls.js';

const hex = (n: number): string => `0x${(n >>> 0).toString(16)}`;
const hex2 = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;
const hex8 = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
const line4 = (n: number): string => n.toString().padStart(4, '0');

/** Name of the seccomp_data field at a 32-bit load offset. */
function fieldName(k: number): string {
  if (k === SECCOMP_DATA_NR) return 'sys_number';
  if (k === SECCOMP_DATA_ARCH) return 'arch';
  if (k === SECCOMP_DATA_IP) return 'instruction_pointer';
  if (k === SECCOMP_DATA_IP + 4) return 'instruction_pointer >> 32';
  if (k >= SECCOMP_DATA_ARGS && k < SECCOMP_DATA_ARGS + 48) {
    const i = (k - SECCOMP_DATA_ARGS) >> 3;
    return (k - SECCOMP_DATA_ARGS) % 8 === 0 ? `args[${i}]` : `args[${i}] >> 32`;
  }
  return `data[${k}]`;
}

/** Human name of a return value, e.g. ALLOW, ERRNO(1), KILL_PROCESS. */
export function actionText(value: number): string {
  const { action, data } = decodeAction(value);
  const name = action.toUpperCase();
  if (action === 'errno') return `ERRNO(${data})`;
  if ((action === 'trace' || action === 'trap' || action === 'user_notif') && data !== 0) return `${name}(${data})`;
  if (action === 'kill_process' && (value >>> 0) !== 0x80000000) return `KILL_PROCESS /* unknown action ${hex(value)} */`;
  return name;
}

function operand(k: number, aHolds: string | undefined, op: number, src: number): string {
  if (src === BPF_X) return 'X';
  if (op === BPF_JEQ && aHolds === 'sys_number') {
    const n = syscallName(k);
    if (n) return n;
  }
  if (op === BPF_JEQ && aHolds === 'arch') {
    if (k >>> 0 === AUDIT_ARCH_X86_64) return 'ARCH_X86_64';
    if (k >>> 0 === AUDIT_ARCH_I386) return 'ARCH_I386';
  }
  return hex(k);
}

const UNKNOWN = '?';

function describe(ins: SockFilter, pc: number, aHolds: string | undefined): string {
  const { code, jt, jf, k } = ins;
  const src = bpfSrc(code);
  const kOrX = src === BPF_X ? 'X' : hex(k);
  switch (bpfClass(code)) {
    case BPF_LD:
    case BPF_LDX: {
      const r = bpfClass(code) === BPF_LDX ? 'X' : 'A';
      const mode = bpfMode(code);
      if (mode === BPF_ABS) return `${r} = ${fieldName(k)}`;
      if (mode === BPF_IMM) return `${r} = ${hex(k)}`;
      if (mode === BPF_MEM) return `${r} = mem[${k}]`;
      if (mode === BPF_LEN) return `${r} = sizeof(seccomp_data)`;
      return `/* unknown load ${hex(code)} */`;
    }
    case BPF_ST:
      return `mem[${k}] = A`;
    case BPF_STX:
      return `mem[${k}] = X`;
    case BPF_ALU: {
      const ops: Record<number, string> = {
        [BPF_ADD]: '+=', [BPF_SUB]: '-=', [BPF_MUL]: '*=', [BPF_DIV]: '/=', [BPF_OR]: '|=',
        [BPF_AND]: '&=', [BPF_LSH]: '<<=', [BPF_RSH]: '>>=', [BPF_MOD]: '%=', [BPF_XOR]: '^=',
      };
      if (bpfOp(code) === BPF_NEG) return 'A = -A';
      const o = ops[bpfOp(code)];
      return o ? `A ${o} ${kOrX}` : `/* unknown alu ${hex(code)} */`;
    }
    case BPF_JMP: {
      const op = bpfOp(code);
      if (op === BPF_JA) return `goto ${line4(pc + 1 + (k >>> 0))}`;
      const t = line4(pc + 1 + jt);
      const f = line4(pc + 1 + jf);
      const v = operand(k, aHolds, op, src);
      const pos: Record<number, string> = { [BPF_JEQ]: `A == ${v}`, [BPF_JGT]: `A > ${v}`, [BPF_JGE]: `A >= ${v}`, [BPF_JSET]: `A & ${v}` };
      const neg: Record<number, string> = { [BPF_JEQ]: `A != ${v}`, [BPF_JGT]: `A <= ${v}`, [BPF_JGE]: `A < ${v}`, [BPF_JSET]: `!(A & ${v})` };
      if (pos[op] === undefined) return `/* unknown jump ${hex(code)} */`;
      if (jf === 0) return `if (${pos[op]}) goto ${t}`;
      if (jt === 0) return `if (${neg[op]}) goto ${f}`;
      return `if (${pos[op]}) goto ${t} else goto ${f}`;
    }
    case BPF_RET: {
      if (bpfRval(code) === BPF_A) return 'return A';
      if (bpfRval(code) === BPF_K) return `return ${actionText(k)}`;
      return `/* unknown return ${hex(code)} */`;
    }
    case BPF_MISC:
      if (bpfMiscOp(code) === BPF_TAX) return 'X = A';
      if (bpfMiscOp(code) === BPF_TXA) return 'A = X';
      return `/* unknown misc ${hex(code)} */`;
  }
  return `/* unknown ${hex(code)} */`;
}

/** What A holds after `ins`, given what it held before. */
function transfer(ins: SockFilter, before: string | undefined): string {
  const cls = bpfClass(ins.code);
  if (cls === BPF_LD) return bpfMode(ins.code) === BPF_ABS ? fieldName(ins.k) : UNKNOWN;
  if (cls === BPF_ALU || (cls === BPF_MISC && bpfMiscOp(ins.code) === BPF_TXA)) return UNKNOWN;
  return before ?? UNKNOWN;
}

/** Disassemble a program (Buffer of struct sock_filter or decoded instructions) to text. */
export function disassemble(program: Uint8Array | readonly SockFilter[]): string {
  const insns = program instanceof Uint8Array ? decodeProgram(program) : program;
  const aIn: (string | undefined)[] = new Array(insns.length).fill(undefined);
  aIn[0] = UNKNOWN;
  const merge = (i: number, v: string): void => {
    if (i >= insns.length) return;
    aIn[i] = aIn[i] === undefined || aIn[i] === v ? v : UNKNOWN;
  };
  const lines = [' line  CODE  JT   JF      K', '================================='];
  insns.forEach((ins, pc) => {
    const before = aIn[pc];
    lines.push(` ${line4(pc)}: ${hex2(ins.code)} ${hex2(ins.jt)} ${hex2(ins.jf)} ${hex8(ins.k)}  ${describe(ins, pc, before)}`);
    const after = transfer(ins, before);
    const cls = bpfClass(ins.code);
    if (cls === BPF_RET) return;
    if (cls === BPF_JMP) {
      if (bpfOp(ins.code) === BPF_JA) merge(pc + 1 + (ins.k >>> 0), after);
      else {
        merge(pc + 1 + ins.jt, after);
        merge(pc + 1 + ins.jf, after);
      }
      return;
    }
    merge(pc + 1, after);
  });
  return lines.join('\n') + '\n';
}
