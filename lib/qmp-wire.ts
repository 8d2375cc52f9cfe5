// QMP messages as they travel on the socket (QEMU's wire format): what capsule-vmm's QMP server
// (vmm/qmp/server.ts) writes and reads, and what the API server's QMP client (server/qmp/client.ts)
// reads and writes, to QEMU and capsule-vmm alike. One JSON object per message; QEMU and
// capsule-vmm end each with "\r\n".

export interface QmpVersion { major: number; minor: number; micro: number }

/** The first message on a connection. */
export interface QmpGreeting {
  QMP: { version: { qemu: QmpVersion; package: string }; capabilities: string[] };
}

/** Client → server. `exec-oob` is accepted in place of `execute` (run in order all the same). */
export interface QmpCommand {
  execute: string;
  arguments?: Record<string, unknown>;
  /** echoed in the reply */
  id?: unknown;
}

/** The error classes QEMU still uses (qapi/error.json). */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

export interface QmpErrorBody { class: QmpErrorClass; desc: string }

export interface QmpSuccess<T = unknown> { return: T; id?: unknown }
export interface QmpFailure { error: QmpErrorBody; id?: unknown }
export type QmpReply<T = unknown> = QmpSuccess<T> | QmpFailure;

export interface QmpTimestamp { seconds: number; microseconds: number }

/** Server → every negotiated client, unasked. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  /** QEMU and capsule-vmm always send it; a reader copes without it */
  timestamp?: QmpTimestamp;
}

/** Wall-clock time as QMP events carry it. */
export function qmpTimestamp(nowMs = Date.now()): QmpTimestamp {
  const us = Math.floor(nowMs * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}
