// What E2B keeps about a sandbox that a capsule VM does not (yet) have: its template id as the
// client named it, metadata, environment variables for every command, and its timeout (the VM
// is deleted when it passes, as E2B kills a sandbox).
//
// Behind one interface so that it can move onto the VM itself once VMs have `metadata` and a TTL
// (`timeoutSec`, POST /v1/vms/:id/timeout): then this becomes a view of those fields. Until then
// it lives in memory: a server restart forgets metadata and timeouts (the VMs keep running and
// are still listed, with empty metadata and no end).
export interface SandboxRecord {
  vmId: string;
  templateId: string;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  startedAt: Date;
  endAt: Date;
}

export interface SandboxLifetimes {
  add(r: SandboxRecord): void;
  get(vmId: string): SandboxRecord | undefined;
  /** The sandbox now ends `seconds` from now; undefined when it is not known. */
  setTimeout(vmId: string, seconds: number): SandboxRecord | undefined;
  /** The sandbox is gone: its record and timer too. */
  forget(vmId: string): void;
  close(): void;
}

/** E2B's default when create gives no timeout. */
export const DEFAULT_TIMEOUT_SEC = 300;
/** E2B's longest (Pro): 24 h. */
export const MAX_TIMEOUT_SEC = 86_400;

/** In memory, one timer per sandbox; `expire` deletes the VM. */
export class MemoryLifetimes implements SandboxLifetimes {
  private readonly records = new Map<string, SandboxRecord>();
  private readonly timers = new Map<string, NodeJS.Timeout>();

  constructor(private readonly expire: (vmId: string) => Promise<void>, private readonly onError: (vmId: string, e: Error) => void = () => undefined) {}

  add(r: SandboxRecord): void {
    this.records.set(r.vmId, r);
    this.arm(r);
  }

  get(vmId: string): SandboxRecord | undefined {
    return this.records.get(vmId);
  }

  setTimeout(vmId: string, seconds: number): SandboxRecord | undefined {
    const r = this.records.get(vmId);
    if (!r) return undefined;
    r.endAt = new Date(Date.now() + seconds * 1000);
    this.arm(r);
    return r;
  }

  forget(vmId: string): void {
    clearTimeout(this.timers.get(vmId));
    this.timers.delete(vmId);
    this.records.delete(vmId);
  }

  close(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  private arm(r: SandboxRecord): void {
    clearTimeout(this.timers.get(r.vmId));
    // setTimeout holds at most 2^31-1 ms (24.8 days), more than MAX_TIMEOUT_SEC.
    const t = setTimeout(() => {
      this.forget(r.vmId);
      this.expire(r.vmId).catch((e: Error) => this.onError(r.vmId, e));
    }, Math.max(0, r.endAt.getTime() - Date.now()));
    t.unref();
    this.timers.set(r.vmId, t);
  }
}
