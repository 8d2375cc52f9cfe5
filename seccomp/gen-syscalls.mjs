#!/usr/bin/env node
// Generates seccomp/syscalls-x86_64.ts from the kernel UAPI header.
//
// Why generated and checked in: the table must match the kernel ABI exactly, and typing ~360
// numbers by hand invites silent mistakes. Checking the output in keeps builds independent of
// whether the build host has kernel headers installed.
//
// Usage: node seccomp/gen-syscalls.mjs [/usr/include/x86_64-linux-gnu/asm/unistd_64.h] > seccomp/syscalls-x86_64.ts
import { readFileSync } from 'node:fs';

const source = process.argv[2] ?? '/usr/include/x86_64-linux-gnu/asm/unistd_64.h';
const text = readFileSync(source, 'utf8');
const entries = [];
const seen = new Set();
for (const line of text.split('\n')) {
  const m = /^#define\s+__NR_(\w+)\s+(\d+)\s*$/.exec(line);
  if (!m) continue;
  const [, name, num] = m;
  if (seen.has(name)) throw new Error(`duplicate syscall name ${name} in ${source}`);
  seen.add(name);
  entries.push([name, Number(num)]);
}
if (entries.length < 300) throw new Error(`only ${entries.length} syscalls parsed from ${source}; wrong header?`);
entries.sort((a, b) => a[1] - b[1]);

// Name the header version in the output so a reader knows which kernel ABI the table reflects.
let version = 'unknown version';
try {
  const v = readFileSync(source.replace(/[^/]*\/asm\/unistd_64\.h$/, '').replace(/x86_64-linux-gnu\/$/, '') + 'linux/version.h', 'utf8');
  const maj = /LINUX_VERSION_MAJOR (\d+)/.exec(v)?.[1];
  const min = /LINUX_VERSION_PATCHLEVEL (\d+)/.exec(v)?.[1];
  const sub = /LINUX_VERSION_SUBLEVEL (\d+)/.exec(v)?.[1];
  if (maj && min && sub) version = `linux-libc-dev ${maj}.${min}.${sub}`;
} catch {
  // version.h is optional; the table itself does not depend on it.
}

const out = [];
out.push('// GENERATED FILE - do not edit by hand.');
out.push(`// Source: ${source} (Linux UAPI asm/unistd_64.h, ${version}), ${entries.length} syscalls.`);
out.push('// Regenerate with: node seccomp/gen-syscalls.mjs > seccomp/syscalls-x86_64.ts');
out.push('');
out.push('/** x86_64 syscall numbers by name (native 64-bit ABI, no x32 bit). */');
out.push('export const SYSCALLS_X86_64: Readonly<Record<string, number>> = Object.freeze({');
for (const [name, num] of entries) out.push(`  ${name}: ${num},`);
out.push('});');
out.push('');
process.stdout.write(out.join('\n'));
