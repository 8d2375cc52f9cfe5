// Command line: compile / disasm / eval.
//   node dist/seccomp/cli.js compile POLICY.json -o out.bpf
//   node dist/seccomp/cli.js disasm out.bpf|POLICY.json
//   node dist/seccomp/cli.js eval POLICY.json|out.bpf --nr write|1 [--args 1,2,3] [--arch x86_64|i386|x32] [--ip N]
// A file is treated as a policy when it parses as JSON, otherwise as a raw sock_filter array.
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT, decodeProgram } from './bpf.js';
import { compilePolicy } from './compiler.js';
import { disassemble, actionText } from './disasm.js';
import { emulate } from './emulator.js';
import { parsePolicyJson, toU64 } from './policy.js';
import { syscallName, syscallNumber } from './syscalls.js';

const USAGE = `usage:
  seccomp compile POLICY.json -o OUT.bpf
  seccomp disasm OUT.bpf|POLICY.json
  seccomp eval POLICY.json|OUT.bpf --nr NAME|NUMBER [--args A0,A1,...] [--arch x86_64|i386|x32] [--ip N]`;

class UsageError extends Error {}

/** Load a program from a policy (JSON) or a compiled .bpf file. */
function loadProgram(path: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const text = bytes.toString('utf8').trimStart();
  if (text.startsWith('{')) return compilePolicy(parsePolicyJson(text)).program;
  decodeProgram(bytes); // validates the length
  return bytes;
}

export function main(argv: string[], out: (s: string) => void = (s) => process.stdout.write(s)): number {
  const [cmd, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      output: { type: 'string', short: 'o' },
      nr: { type: 'string' },
      args: { type: 'string' },
      arch: { type: 'string' },
      ip: { type: 'string' },
    },
  });
  const file = positionals[0];
  if (!cmd || cmd === '-h' || cmd === '--help') throw new UsageError(USAGE);
  if (!file || positionals.length > 1) throw new UsageError(`${cmd}: expected exactly one input file\n${USAGE}`);
  switch (cmd) {
    case 'compile': {
      if (!values.output) throw new UsageError('compile: -o OUT.bpf is required');
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (e) {
        throw new UsageError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      const c = compilePolicy(parsePolicyJson(text));
      writeFileSync(values.output, c.program);
      out(`${values.output}: ${c.instructions.length} instructions (${c.program.length} bytes), ${c.trampolines} trampolines\n`);
      return 0;
    }
    case 'disasm':
      out(disassemble(loadProgram(file)));
      return 0;
    case 'eval': {
      if (!values.nr) throw new UsageError('eval: --nr NAME|NUMBER is required');
      let nr = /^\d+$/.test(values.nr) ? Number(values.nr) : syscallNumber(values.nr);
      if (nr === undefined) throw new UsageError(`eval: unknown syscall "${values.nr}"`);
      const archName = values.arch ?? 'x86_64';
      let arch: number;
      if (archName === 'x86_64') arch = AUDIT_ARCH_X86_64;
      else if (archName === 'i386') arch = AUDIT_ARCH_I386;
      else if (archName === 'x32') {
        arch = AUDIT_ARCH_X86_64;
        nr = (nr | X32_SYSCALL_BIT) >>> 0;
      } else throw new UsageError(`eval: unknown --arch "${archName}" (x86_64, i386, x32)`);
      const args = values.args ? values.args.split(',').map((a, i) => toU64(a, `--args[${i}]`)) : [];
      if (args.length > 6) throw new UsageError('eval: at most 6 --args');
      const r = emulate(loadProgram(file), { nr, arch, args, instruction_pointer: values.ip ? toU64(values.ip, '--ip') : 0n });
      const name = syscallName(nr & ~X32_SYSCALL_BIT) ?? String(nr);
      out(`${archName} ${name}(${args.map((a) => `0x${a.toString(16)}`).join(', ')}) -> ${actionText(r.value)} (0x${r.value.toString(16).padStart(8, '0')}, ${r.steps} instructions)\n`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${cmd}"\n${USAGE}`);
  }
}

// Run when executed directly (not when imported by tests).
if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`seccomp: ${(e as Error).message}\n`);
    process.exitCode = e instanceof UsageError ? 2 : 1;
  }
}
