// Name <-> number lookups over the generated x86_64 table. Separate from the generated file so
// that regenerating the table never touches hand-written code.
import { SYSCALLS_X86_64 } from './syscalls-x86_64.js';

const byNumber = new Map<number, string>();
for (const [name, nr] of Object.entries(SYSCALLS_X86_64)) byNumber.set(nr, name);

/** The x86_64 number of a syscall, or undefined when the name is not in the table. */
export function syscallNumber(name: string): number | undefined {
  return Object.prototype.hasOwnProperty.call(SYSCALLS_X86_64, name) ? SYSCALLS_X86_64[name] : undefined;
}

/** The x86_64 name of a syscall number, or undefined. */
export function syscallName(nr: number): string | undefined {
  return byNumber.get(nr);
}

/** All known syscall names, in number order. */
export function syscallNames(): string[] {
  return [...byNumber.entries()].sort((a, b) => a[0] - b[0]).map(([, n]) => n);
}
