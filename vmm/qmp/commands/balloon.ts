// QMP balloon commands (the StratoVirt guidebook 3.5, QEMU's names and errors):
//   balloon {"value": BYTES}  the guest's target memory size; 0 < value <= guest memory. The
//                             balloon is asked to hold memory - value (in 4 KiB pages) and the
//                             driver hears it through a config-change interrupt. {}
//   query-balloon             {"actual": BYTES}: guest memory less the pages in the balloon, as the
//                             guest's driver reports them. Extra (not in QEMU's reply): "target"
//                             (the last value asked for), and "stats" / "stats-last-update" (seconds)
//                             when the driver posted statistics (QEMU's guest-stats names); each
//                             query also asks the driver for fresh ones, which the next query shows.
// Event BALLOON_CHANGE {"actual"} when the driver's count changes, at most one per second (the
// latest value; QEMU throttles this event the same way): Linux updates the count every 1 MiB.
// Without a balloon device both commands fail with DeviceNotActive, as in QEMU.
import { QmpError, type QmpServer } from '../server.js';

/** What the commands need of the device (VirtioBalloon). */
export interface BalloonDevice {
  readonly memorySize: number;
  readonly actualBytes: number;
  readonly targetBytes: number;
  readonly stats: { time: number; values: Record<string, number> } | null;
  setTarget(bytes: number): void;
  requestStats(): boolean;
  onActualChange: (actualBytes: number) => void;
}

export interface BalloonDeps {
  balloon: BalloonDevice | undefined;
  /** BALLOON_CHANGE rate limit in ms (tests shorten it) */
  eventIntervalMs?: number;
}

export function register(qmp: Pick<QmpServer, 'register' | 'event'>, deps: BalloonDeps): void {
  const dev = deps.balloon;
  const need = (): BalloonDevice => {
    if (!dev) throw new QmpError('DeviceNotActive', 'No balloon device has been activated');
    return dev;
  };

  if (dev) {
    const interval = deps.eventIntervalMs ?? 1000;
    let lastSent = -Infinity;
    let timer: NodeJS.Timeout | null = null;
    let pending: number | null = null;
    const send = (): void => {
      timer = null;
      if (pending === null) return;
      qmp.event('BALLOON_CHANGE', { actual: pending });
      pending = null;
      lastSent = Date.now();
    };
    dev.onActualChange = (actual) => {
      pending = actual;
      if (timer) return;
      const wait = lastSent + interval - Date.now();
      if (wait <= 0) send();
      else {
        timer = setTimeout(send, wait);
        timer.unref?.();
      }
    };
  }

  qmp.register('balloon', (args) => {
    const b = need();
    const v = args.value;
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new QmpError('GenericError', "Parameter 'value' expects an integer (bytes)");
    if (v <= 0 || v > b.memorySize) {
      throw new QmpError('GenericError', `Parameter 'value' must be in the range 1-${b.memorySize} (bytes, at most the guest's memory), got ${v}`);
    }
    b.setTarget(v);
    return {};
  });

  qmp.register('query-balloon', () => {
    const b = need();
    const out: Record<string, unknown> = { actual: b.actualBytes, target: b.targetBytes };
    const s = b.stats;
    if (s) {
      out.stats = s.values;
      out['stats-last-update'] = Math.floor(s.time / 1000);
    }
    b.requestStats();
    return out;
  });
}
