// Guest tools for benchmarks: the host's fio and iperf3, with every shared library they load,
// packed as an uncompressed cpio that is put in front of a guest image's initramfs. The kernel
// unpacks concatenated archives in order (as early-microcode initrds do), so the busybox guest
// gains the tools without a second disk that would compete with the one being measured.
//
// The binaries come from the host (`apt install fio iperf3`); in the lab, the host's / is the
// chroot, so the same files are found there. In the guest, run them through `guestTool()`:
// there is no ld.so.cache, so the library folders are given in LD_LIBRARY_PATH.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { tmpdir } from 'node:os';

export const GUEST_TOOLS = ['fio', 'iperf3'] as const;
export type GuestTool = (typeof GUEST_TOOLS)[number];

/** Absolute path of a host binary, or a clear error saying which package to install. */
function hostBinary(name: string): string {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const path = r.stdout.trim();
  if (r.status !== 0 || !path) throw new Error(`${name} is not installed on the host: apt install ${name}`);
  return path;
}

/** The shared objects a binary loads (ldd's resolved paths, and the dynamic loader itself). */
function libraries(binary: string): string[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    const resolved = /=>\s+(\/\S+)/.exec(line);
    const loader = /^\s*(\/\S+ld-linux\S*)/.exec(line);
    if (resolved) libs.push(resolved[1] as string);
    else if (loader) libs.push(loader[1] as string);
    else if (/not found/.test(line)) throw new Error(`ldd ${binary}: ${line.trim()}`);
  }
  return libs;
}

/** Folders the guest's loader must search (every folder a library was found in). */
let libraryDirs: string[] = [];

/**
 * Writes `<image initrd> + tools` as one initrd under `dir` and returns its path. The tools
 * archive comes first and holds no /init, so the image's own init still runs.
 */
export function initrdWithTools(baseInitrd: string, dir: string): string {
  const stage = mkdtempSync(join(tmpdir(), 'capsule-guest-tools-'));
  try {
    const files = new Set<string>();
    for (const tool of GUEST_TOOLS) {
      const bin = hostBinary(tool);
      files.add(bin);
      for (const lib of libraries(bin)) files.add(lib);
    }
    for (const f of files) {
      mkdirSync(join(stage, dirname(f)), { recursive: true });
      copyFileSync(f, join(stage, f)); // follows symlinks: the guest gets the real file at the linked name
    }
    libraryDirs = [...new Set([...files].filter((f) => /\.so/.test(f)).map((f) => dirname(f)))];
    const cpio = spawnSync('sh', ['-c', `cd '${stage}' && find . -mindepth 1 | cpio -o -H newc --quiet`], { maxBuffer: 1 << 30 });
    if (cpio.status !== 0) throw new Error(`cpio: ${cpio.stderr.toString()}`);
    const out = join(dir, 'initrd-with-tools.cpio');
    writeFileSync(out, Buffer.concat([cpio.stdout, readFileSync(baseInitrd)]));
    return out;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}

/** A guest shell command that runs `tool` with the libraries the tools archive brought. */
export function guestTool(tool: GuestTool, args: string): string {
  if (libraryDirs.length === 0) throw new Error('initrdWithTools() first');
  return `LD_LIBRARY_PATH=${libraryDirs.join(':')} ${hostBinary(tool)} ${args}`;
}
