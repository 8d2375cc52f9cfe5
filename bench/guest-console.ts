// The serial console of a guest a benchmark booted: waits for the socket, the image's ready
// marker and the shell's prompt, with deadlines for the nested lab (slow, more so under load).
// A guest that never comes up fails with its VMM's last stderr, which says why, and its VMM
// process (a child, or a daemon's pid), when given, is killed first (nothing left running for the
// bench's retry or exit).
import type { ChildProcess } from 'node:child_process';
import { ConsoleClient, waitForFile } from '../vmm/testing/clients.js';
import { killPid, killProcess } from './util.js';

export async function guestConsole(conPath: string, stderr: () => string, vmm?: ChildProcess | number): Promise<ConsoleClient> {
  try {
    await waitForFile(conPath, 180_000);
    const con = await ConsoleClient.connect(conPath);
    await con.waitFor(/CAPSULE_READY/, 400_000);
    await con.waitFor(/# /, 60_000);
    return con;
  } catch (e) {
    const failed = new Error(`${(e as Error).message}\n${stderr().slice(-2000)}`);
    if (typeof vmm === 'number') await killPid(vmm);
    else if (vmm) await killProcess(vmm);
    throw failed;
  }
}
