// The virtio-rng device (on by default): the guest's /dev/hwrng, fed from the host's
// /dev/urandom (which the jail's /dev holds). Nothing to do at run time.
import type { LaunchContext, LaunchPlan, VmComponent } from './types.js';

export class RngComponent implements VmComponent {
  readonly name = 'rng';

  prepare(ctx: LaunchContext, plan: LaunchPlan): void {
    plan.devices.rng = ctx.vm.rng;
  }

  cleanup(): void { /* nothing held */ }
}
