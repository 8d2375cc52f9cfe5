// A classic-BPF interpreter with seccomp's rules: runs a filter on a struct seccomp_data and
// returns what the kernel would decide. It exists so that policies can be tested in milliseconds
// without installing anything; it is deliberately strict (guards on every jump and load) so that
// a compiler bug shows up as an exception here rather than as EINVAL from the kernel.
import {
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
  BPF_MAXINSNS,
  BPF_MEM,
  BPF_MEMWORDS,
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
  BPF_W,
  BPF_X,
  BPF_XOR,
  SECCOMP_DATA_SIZE,
  SECCOMP_RET_ACTION_FULL,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_DATA,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  SECCOMP_RET_KILL_THREAD,
  SECCOMP_RET_LOG,
  SECCOMP_RET_TRACE,
  SECCOMP_RET_TRAP,
  SECCOMP_RET_USER_NOTIF,
  bpfClass,
  bpfMiscOp,
  bpfMode,
  bpfOp,
  bpfRval,
  bpfSize,
  bpfSrc,
  decodeProgram,
  type SockFilter,
} from './bpf.js';

/** struct seccomp_data, with friendlier types. Missing args are 0. */
export interface SeccompData {
  /** Syscall number as the kernel stores it (int; x32 syscalls have 0x40000000 set). */
  nr: number;
  /** AUDIT_ARCH_* value; defaults to AUDIT_ARCH_X86_64. */
  arch?: number;
  instruction_pointer?: bigint | number;
  args?: ReadonlyArray<bigint | number>;
}

export type ActionName = 'kill_process' | 'kill_thread' | 'trap' | 'errno' | 'user_notif' | 'trace' | 'log' | 'allow';

export interface EmulationResult {
  /** The raw 32-bit return value. */
  value: number;
  action: ActionName;
  /** SECCOMP_RET_DATA part (errno, trace message, trap si_errno). */
  data: number;
  /** Instructions executed. */
  steps: number;
}

export class EmulatorError extends Error {
  override name = 'EmulatorError';
}

/** Lay out struct seccomp_data exactly as the kernel does (little endian, 64 bytes). */
export function encodeSeccompData(d: SeccompData): Buffer {
  const b = Buffer.alloc(SECCOMP_DATA_SIZE);
  b.writeInt32LE(d.nr | 0, 0);
  b.writeUInt32LE((d.arch ?? AUDIT_ARCH_X86_64) >>> 0, 4);
  b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(d.instruction_pointer ?? 0)), 8);
  const args = d.args ?? [];
  if (args.length > 6) throw new EmulatorError(`seccomp_data has 6 args; got ${args.length}`);
  for (let i = 0; i < 6; i++) b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(args[i] ?? 0)), 16 + 8 * i);
  return b;
}

/**
 * Decode the action the kernel takes for a return value. Like the kernel, unknown action values
 * are treated as kill_process (seccomp_run_filters + the default in __seccomp_filter).
 */
export function decodeAction(value: number): { action: ActionName; data: number } {
  const v = value >>> 0;
  const data = v & SECCOMP_RET_DATA;
  switch ((v & SECCOMP_RET_ACTION_FULL) >>> 0) {
    case SECCOMP_RET_KILL_PROCESS:
      return { action: 'kill_process', data };
    case SECCOMP_RET_KILL_THREAD:
      return { action: 'kill_thread', data };
    case SECCOMP_RET_TRAP:
      return { action: 'trap', data };
    case SECCOMP_RET_ERRNO:
      return { action: 'errno', data: Math.min(data, 4095) };
    case SECCOMP_RET_USER_NOTIF:
      return { action: 'user_notif', data };
    case SECCOMP_RET_TRACE:
      return { action: 'trace', data };
    case SECCOMP_RET_LOG:
      return { action: 'log', data };
    case SECCOMP_RET_ALLOW:
      return { action: 'allow', data };
    default:
      return { action: 'kill_process', data };
  }
}

function insnsOf(program: Uint8Array | readonly SockFilter[]): readonly SockFilter[] {
  return program instanceof Uint8Array ? decodeProgram(program) : program;
}

/** Run `program` on `data`. Throws EmulatorError for anything the kernel's checker would reject. */
export function emulate(program: Uint8Array | readonly SockFilter[], data: SeccompData): EmulationResult {
  const insns = insnsOf(program);
  if (insns.length === 0 || insns.length > BPF_MAXINSNS) throw new EmulatorError(`program length ${insns.length} is outside 1..${BPF_MAXINSNS}`);
  const mem = encodeSeccompData(data);
  const M = new Uint32Array(BPF_MEMWORDS);
  let A = 0;
  let X = 0;
  let pc = 0;
  let steps = 0;
  const u32 = (n: number): number => n >>> 0;
  const memIndex = (k: number): number => {
    if (k >= BPF_MEMWORDS) throw new EmulatorError(`pc ${pc}: scratch slot M[${k}] out of range`);
    return k;
  };
  for (;;) {
    if (pc < 0 || pc >= insns.length) throw new EmulatorError(`pc ${pc}: fell off the end of the program (${insns.length} instructions)`);
    const ins = insns[pc]!;
    steps++;
    const { code, k } = ins;
    const src = bpfSrc(code) === BPF_X ? X : k >>> 0;
    switch (bpfClass(code)) {
      case BPF_LD:
      case BPF_LDX: {
        const toX = bpfClass(code) === BPF_LDX;
        let v: number;
        const mode = bpfMode(code);
        if (mode === BPF_IMM) v = k >>> 0;
        else if (mode === BPF_LEN) v = SECCOMP_DATA_SIZE; // seccomp rewrites LEN to sizeof(seccomp_data)
        else if (mode === BPF_MEM) v = M[memIndex(k)]!;
        else if (mode === BPF_ABS && !toX) {
          // seccomp only allows aligned 32-bit absolute loads inside seccomp_data.
          if (bpfSize(code) !== BPF_W) throw new EmulatorError(`pc ${pc}: seccomp only allows 32-bit loads`);
          if (k % 4 !== 0 || k + 4 > SECCOMP_DATA_SIZE) throw new EmulatorError(`pc ${pc}: load at offset ${k} is outside seccomp_data or misaligned`);
          v = mem.readUInt32LE(k);
        } else throw new EmulatorError(`pc ${pc}: unsupported load 0x${code.toString(16)}`);
        if (toX) X = v;
        else A = v;
        pc++;
        break;
      }
      case BPF_ST:
        M[memIndex(k)] = A;
        pc++;
        break;
      case BPF_STX:
        M[memIndex(k)] = X;
        pc++;
        break;
      case BPF_ALU: {
        const op = bpfOp(code);
        switch (op) {
          case BPF_ADD: A = u32(A + src); break;
          case BPF_SUB: A = u32(A - src); break;
          case BPF_MUL: A = u32(Math.imul(A, src)); break;
          case BPF_DIV:
          case BPF_MOD:
            if (src === 0) {
              if (bpfSrc(code) === BPF_K) throw new EmulatorError(`pc ${pc}: division by constant zero`);
              return finish(0); // the classic-BPF runtime returns 0 on division by zero in X
            }
            A = op === BPF_DIV ? u32(Math.floor(A / src)) : u32(A % src);
            break;
          case BPF_OR: A = u32(A | src); break;
          case BPF_AND: A = u32(A & src); break;
          case BPF_XOR: A = u32(A ^ src); break;
          case BPF_LSH: A = src >= 32 ? 0 : u32(A << src); break;
          case BPF_RSH: A = src >= 32 ? 0 : A >>> src; break;
          case BPF_NEG: A = u32(-A); break;
          default: throw new EmulatorError(`pc ${pc}: unknown ALU op 0x${code.toString(16)}`);
        }
        pc++;
        break;
      }
      case BPF_JMP: {
        const op = bpfOp(code);
        let target: number;
        if (op === BPF_JA) {
          if (bpfSrc(code) !== BPF_K) throw new EmulatorError(`pc ${pc}: bad ja`);
          target = pc + 1 + (k >>> 0);
        } else {
          let taken: boolean;
          if (op === BPF_JEQ) taken = A === src;
          else if (op === BPF_JGT) taken = A > src;
          else if (op === BPF_JGE) taken = A >= src;
          else if (op === BPF_JSET) taken = (A & src) !== 0;
          else throw new EmulatorError(`pc ${pc}: unknown jump 0x${code.toString(16)}`);
          target = pc + 1 + (taken ? ins.jt : ins.jf);
        }
        if (target >= insns.length) throw new EmulatorError(`pc ${pc}: jump to ${target} is past the end (${insns.length} instructions)`);
        pc = target;
        break;
      }
      case BPF_RET: {
        const r = bpfRval(code);
        if (r === BPF_K) return finish(k >>> 0);
        if (r === BPF_A) return finish(A);
        throw new EmulatorError(`pc ${pc}: bad return 0x${code.toString(16)}`);
      }
      case BPF_MISC: {
        const op = bpfMiscOp(code);
        if (op === BPF_TAX) X = A;
        else if (op === BPF_TXA) A = X;
        else throw new EmulatorError(`pc ${pc}: unknown misc op 0x${code.toString(16)}`);
        pc++;
        break;
      }
      default:
        throw new EmulatorError(`pc ${pc}: unknown instruction class 0x${code.toString(16)}`);
    }
  }
  function finish(value: number): EmulationResult {
    return { value: value >>> 0, ...decodeAction(value), steps };
  }
}
