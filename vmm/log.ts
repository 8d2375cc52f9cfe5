// A small leveled logger: one line per record, "<iso time> <level> <module>: message".
// Level from CAPSULE_LOG_LEVEL (trace|debug|info|warn|error, default error). Destination: stderr
// (-D), a file (-D FILE), or nowhere.
import { closeSync, openSync, writeSync } from 'node:fs';

export const LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
export type Level = (typeof LEVELS)[number];

let threshold = LEVELS.indexOf('error');
let fd: number | null = null;
let ownFd = false;

export function parseLevel(s: string | undefined): Level {
  const v = (s ?? 'error').toLowerCase();
  return (LEVELS as readonly string[]).includes(v) ? (v as Level) : 'error';
}

export function configureLog(opts: { level?: Level; file?: string | null; stderr?: boolean }): void {
  if (opts.level) threshold = LEVELS.indexOf(opts.level);
  if (ownFd && fd !== null) closeSync(fd);
  ownFd = false;
  fd = null;
  if (opts.file) {
    fd = openSync(opts.file, 'a', 0o640);
    ownFd = true;
  } else if (opts.stderr) {
    fd = 2;
  }
}

export function logFd(): number | null {
  return fd;
}

/** What a worker thread needs to log where this thread does (IoThread.start passes it). */
export function logShared(): { fd: number | null; level: Level } {
  return { fd, level: LEVELS[threshold] as Level };
}

/** In a worker: log to the main thread's destination (the fd stays the main thread's). */
export function adoptLog(s: { fd: number | null; level: Level }): void {
  threshold = LEVELS.indexOf(s.level);
  fd = s.fd;
  ownFd = false;
}

/** Write raw bytes to the log destination (serial output when nothing else is attached). */
export function logRaw(b: Uint8Array): void {
  if (fd === null) return;
  try { writeSync(fd, b); } catch { /* ignore */ }
}

export interface Logger {
  trace(msg: string): void;
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export function logger(module: string): Logger {
  const emit = (lvl: Level, msg: string): void => {
    if (fd === null || LEVELS.indexOf(lvl) < threshold) return;
    try { writeSync(fd, `${new Date().toISOString()} ${lvl.toUpperCase()} ${module}: ${msg}\n`); } catch { /* ignore */ }
  };
  return {
    trace: (m) => emit('trace', m), debug: (m) => emit('debug', m), info: (m) => emit('info', m),
    warn: (m) => emit('warn', m), error: (m) => emit('error', m),
  };
}
