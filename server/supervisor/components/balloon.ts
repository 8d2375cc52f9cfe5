// The virtio-balloon device (off by default): the host asks the guest to give memory back
// (QMP balloon: the guest's target size) and reads what it has (query-balloon). Both backends
// speak these two commands.
import type { Vm } from '../../db/vms.js';
import { ApiError } from '../errors.js';
import type { LaunchContext, LaunchPlan, LiveVmContext, VmComponent } from './types.js';

const MiB = 1024 * 1024;

export class BalloonComponent implements VmComponent {
  readonly name = 'balloon';

  prepare(ctx: LaunchContext, plan: LaunchPlan): void {
    if (ctx.vm.balloon.enabled) plan.devices.balloon = { deflateOnOom: ctx.vm.balloon.deflateOnOom };
  }

  cleanup(): void { /* nothing held */ }

  /** Sets the guest's target memory size (the balloon inflates by the difference). */
  async setTarget(vm: Vm, live: LiveVmContext | undefined, targetMiB: number): Promise<{ targetMiB: number; actualMiB: number }> {
    const l = this.check(vm, live);
    if (targetMiB > vm.memoryMiB) throw new ApiError(400, 'invalid_request', `targetMiB: at most the VM's memory (${vm.memoryMiB} MiB)`, 'targetMiB');
    await l.qmp.execute('balloon', { value: targetMiB * MiB });
    return { targetMiB, ...(await this.query(vm, l)) };
  }

  /** The guest's memory size as the balloon driver reports it. */
  async query(vm: Vm, live: LiveVmContext | undefined): Promise<{ actualMiB: number }> {
    const l = this.check(vm, live);
    const r = await l.qmp.execute<{ actual: number }>('query-balloon');
    return { actualMiB: Math.round(r.actual / MiB) };
  }

  private check(vm: Vm, live: LiveVmContext | undefined): LiveVmContext {
    if (!vm.balloon.enabled) throw new ApiError(409, 'no_balloon', `VM ${vm.name} has no balloon device (create it with "balloon": true)`);
    if (!live || (vm.state !== 'running' && vm.state !== 'paused')) throw new ApiError(409, 'not_running', `VM ${vm.name} is not running (state ${vm.state})`);
    return live;
  }
}
