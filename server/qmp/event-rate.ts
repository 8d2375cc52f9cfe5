// A VMM is not trusted to be polite (a compromised guest may drive it): its QMP events are rate
// limited before they reach the event store and the subscribers. Every event is still handed
// on, marked, so that state changes (SHUTDOWN, STOP, ...) apply even over the rate.
import { LeakyBucket } from '../../lib/leaky-bucket.js';
import type { QmpEvent } from '../../lib/qmp-wire.js';
import type { QmpClient } from './client.js';

/** QMP events a VMM may publish per second (burst: twice that). */
export const QMP_EVENT_RATE = 100;

/**
 * Calls `handle(ev, publish)` for every event of `qmp`: `publish` is false over the rate. When
 * events flow within the rate again, `dropped(n)` says how many were not published.
 */
export function onRateLimitedEvents(qmp: QmpClient, handle: (ev: QmpEvent, publish: boolean) => void, dropped: (count: number) => void, rate = QMP_EVENT_RATE): void {
  const bucket = new LeakyBucket(rate, 2 * rate);
  let over = 0;
  qmp.on('event', (ev: QmpEvent) => {
    const publish = bucket.tryTake();
    if (!publish) over++;
    else if (over > 0) {
      dropped(over);
      over = 0;
    }
    handle(ev, publish);
  });
}
