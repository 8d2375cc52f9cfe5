// E2B's sandbox lifetime on capsule's VM TTL (docs/api.md, "Lifetimes"): a sandbox is a VM
// created with `timeoutSec` and `onTimeout: "delete"` (E2B kills a sandbox whose time is up),
// and E2B's setTimeout is POST /v1/vms/:id/timeout (the clock restarts from now). The deadline
// is the VM's `expiresAt`, kept in the database: a restarted server still ends sandboxes on time.

/** E2B's default when create gives no timeout. */
export const DEFAULT_TIMEOUT_SEC = 300;
/** E2B's longest (Pro): 24 h. */
export const MAX_TIMEOUT_SEC = 86_400;

/** A sandbox's end as E2B shows it: the VM's deadline, or none (a VM made through capsule's own API without a TTL). */
export const NO_END = '9999-12-31T23:59:59.000Z';
