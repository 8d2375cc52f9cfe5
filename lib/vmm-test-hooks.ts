// Test-only hooks of capsule-vmm that the API server passes through (docs/vmm.md, "Seccomp").

/**
 * CAPSULE_VMM_TEST_FORBIDDEN_SYSCALL_AFTER_MS=N: N ms after its seccomp filter is on, the VMM calls
 * socket(2) (forbidden) once, so tests can check that a seccomp kill is reported as a crash. The
 * server copies exactly this variable from its environment to the VMMs it starts. Never set it in
 * production.
 */
export const FORBIDDEN_SYSCALL_ENV = 'CAPSULE_VMM_TEST_FORBIDDEN_SYSCALL_AFTER_MS';
