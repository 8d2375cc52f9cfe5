// Public API of the seccomp library.
export type { Action, ArgCondition, ArgValue, CmpOp, Policy, Rule, ResolvedPolicy, ResolvedRule, ResolvedCondition } from './policy.js';
export { parsePolicy, parsePolicyJson, resolvePolicy, actionValue, toU64, policySchema, PolicyError, CMP_OPS } from './policy.js';
export type { CompileOptions, CompiledFilter } from './compiler.js';
export { compilePolicy, compileResolved, CompileError } from './compiler.js';
export type { SeccompData, EmulationResult, ActionName } from './emulator.js';
export { emulate, decodeAction, encodeSeccompData, EmulatorError } from './emulator.js';
export { disassemble, actionText } from './disasm.js';
export type { InstallOptions, ThreadSeccompStatus } from './install.js';
export {
  installFilter,
  installPolicy,
  setNoNewPrivs,
  noNewPrivs,
  currentSeccompMode,
  threadSeccompStatus,
  SeccompInstallError,
  SECCOMP_FILTER_FLAG_TSYNC,
  SECCOMP_FILTER_FLAG_LOG,
} from './install.js';
export { syscallNumber, syscallName, syscallNames } from './syscalls.js';
export { SYSCALLS_X86_64 } from './syscalls-x86_64.js';
export type { SockFilter } from './bpf.js';
export { encodeProgram, decodeProgram, BPF_MAXINSNS } from './bpf.js';
export { vmmPolicy, vmmSyscallNames, VMM_SYSCALLS, VMM_ERRNO_SYSCALLS, VMM_IOCTLS } from './policies/vmm.js';
