// Classic BPF (cBPF) as the seccomp filter engine sees it: the struct sock_filter encoding from
// <linux/filter.h> / <linux/bpf_common.h>, plus the seccomp return values and struct seccomp_data
// offsets from <linux/seccomp.h> and <linux/audit.h>.
//
// Kept free of policy and compiler concerns so the disassembler and emulator can reuse it.

/** One struct sock_filter: u16 code, u8 jt, u8 jf, u32 k (8 bytes, host = little endian). */
export interface SockFilter {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

export const SOCK_FILTER_SIZE = 8;
/** BPF_MAXINSNS: the kernel refuses longer classic programs with EINVAL. */
export const BPF_MAXINSNS = 4096;

// Instruction classes.
export const BPF_LD = 0x00;
export const BPF_LDX = 0x01;
export const BPF_ST = 0x02;
export const BPF_STX = 0x03;
export const BPF_ALU = 0x04;
export const BPF_JMP = 0x05;
export const BPF_RET = 0x06;
export const BPF_MISC = 0x07;

// ld/ldx sizes and modes.
export const BPF_W = 0x00;
export const BPF_H = 0x08;
export const BPF_B = 0x10;
export const BPF_IMM = 0x00;
export const BPF_ABS = 0x20;
export const BPF_IND = 0x40;
export const BPF_MEM = 0x60;
export const BPF_LEN = 0x80;
export const BPF_MSH = 0xa0;

// alu/jmp operations.
export const BPF_ADD = 0x00;
export const BPF_SUB = 0x10;
export const BPF_MUL = 0x20;
export const BPF_DIV = 0x30;
export const BPF_OR = 0x40;
export const BPF_AND = 0x50;
export const BPF_LSH = 0x60;
export const BPF_RSH = 0x70;
export const BPF_NEG = 0x80;
export const BPF_MOD = 0x90;
export const BPF_XOR = 0xa0;

export const BPF_JA = 0x00;
export const BPF_JEQ = 0x10;
export const BPF_JGT = 0x20;
export const BPF_JGE = 0x30;
export const BPF_JSET = 0x40;

// Operand source.
export const BPF_K = 0x00;
export const BPF_X = 0x08;
// Return value source (BPF_RET).
export const BPF_A = 0x10;

// BPF_MISC operations.
export const BPF_TAX = 0x00;
export const BPF_TXA = 0x80;

/** Number of scratch memory slots (M[0..15]). */
export const BPF_MEMWORDS = 16;

export const bpfClass = (code: number): number => code & 0x07;
export const bpfSize = (code: number): number => code & 0x18;
export const bpfMode = (code: number): number => code & 0xe0;
export const bpfOp = (code: number): number => code & 0xf0;
export const bpfSrc = (code: number): number => code & 0x08;
export const bpfRval = (code: number): number => code & 0x18;
export const bpfMiscOp = (code: number): number => code & 0xf8;

// seccomp return values (<linux/seccomp.h>). The high 16 bits select the action, the low 16 bits
// carry data (errno, trace message, trap si_errno).
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_KILL_THREAD = 0x00000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_USER_NOTIF = 0x7fc00000;
export const SECCOMP_RET_TRACE = 0x7ff00000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
/** Masks as the kernel applies them: ACTION_FULL includes the sign bit for KILL_PROCESS. */
export const SECCOMP_RET_ACTION_FULL = 0xffff0000;
export const SECCOMP_RET_DATA = 0x0000ffff;

// AUDIT_ARCH_* values (<linux/audit.h>): EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
export const AUDIT_ARCH_X86_64 = 0xc000003e;
export const AUDIT_ARCH_I386 = 0x40000003;
/** x32 syscalls arrive with AUDIT_ARCH_X86_64 but this bit set in nr. */
export const X32_SYSCALL_BIT = 0x40000000;

// struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
export const SECCOMP_DATA_NR = 0;
export const SECCOMP_DATA_ARCH = 4;
export const SECCOMP_DATA_IP = 8;
export const SECCOMP_DATA_ARGS = 16;
export const SECCOMP_DATA_SIZE = 64;
/** Offset of the low (little-endian first) 32-bit word of args[i]. */
export const argLowOffset = (i: number): number => SECCOMP_DATA_ARGS + 8 * i;
/** Offset of the high 32-bit word of args[i]. */
export const argHighOffset = (i: number): number => SECCOMP_DATA_ARGS + 8 * i + 4;

/** Build a statement (no jump targets). */
export function stmt(code: number, k: number): SockFilter {
  return { code, jt: 0, jf: 0, k: k >>> 0 };
}

/** Build a conditional jump with 8-bit relative offsets. */
export function jump(code: number, k: number, jt: number, jf: number): SockFilter {
  if (!Number.isInteger(jt) || jt < 0 || jt > 255 || !Number.isInteger(jf) || jf < 0 || jf > 255) {
    throw new RangeError(`jump offsets must fit in 8 bits (jt=${jt}, jf=${jf})`);
  }
  return { code, jt, jf, k: k >>> 0 };
}

/** Serialize instructions into the byte layout the kernel reads (array of struct sock_filter). */
export function encodeProgram(insns: readonly SockFilter[]): Buffer {
  const buf = Buffer.alloc(insns.length * SOCK_FILTER_SIZE);
  insns.forEach((ins, i) => {
    const o = i * SOCK_FILTER_SIZE;
    buf.writeUInt16LE(ins.code & 0xffff, o);
    buf.writeUInt8(ins.jt & 0xff, o + 2);
    buf.writeUInt8(ins.jf & 0xff, o + 3);
    buf.writeUInt32LE(ins.k >>> 0, o + 4);
  });
  return buf;
}

/** Parse a Buffer of struct sock_filter back into instructions. */
export function decodeProgram(buf: Uint8Array): SockFilter[] {
  if (buf.length % SOCK_FILTER_SIZE !== 0) {
    throw new Error(`a BPF program is a multiple of ${SOCK_FILTER_SIZE} bytes; got ${buf.length}`);
  }
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: SockFilter[] = [];
  for (let o = 0; o < b.length; o += SOCK_FILTER_SIZE) {
    out.push({ code: b.readUInt16LE(o), jt: b.readUInt8(o + 2), jf: b.readUInt8(o + 3), k: b.readUInt32LE(o + 4) });
  }
  return out;
}
