// What a new VM (or a template's VMs) may be: a registered image, an available hypervisor and
// the CPUs and memory that hypervisor and the host's admission allow. 400 naming the field.
import { ApiError } from '../supervisor/errors.js';
import { checkDefinition } from '../supervisor/admission.js';
import type { HypervisorName } from '../db/vms.js';
import type { AppDeps } from './app.js';

export interface VmShape {
  image: string;
  hypervisor?: HypervisorName | undefined;
  vcpus: number;
  memoryMiB: number;
}

/** Checks the shape; returns the hypervisor it runs on (the server's default when not given). */
export function checkVmShape(deps: Pick<AppDeps, 'images' | 'hypervisors' | 'defaultHypervisor' | 'config'>, body: VmShape): HypervisorName {
  if (!deps.images.get(body.image)) throw new ApiError(400, 'invalid_request', `image: no image named ${JSON.stringify(body.image)}`, 'image');
  const hypervisor = body.hypervisor ?? deps.defaultHypervisor;
  const backend = deps.hypervisors.get(hypervisor);
  if (!backend?.availability().available) {
    throw new ApiError(400, 'invalid_request', `hypervisor: ${hypervisor} is not available on this host (${backend?.availability().reason ?? 'unknown'})`, 'hypervisor');
  }
  if (body.memoryMiB < backend.limits.minMemoryMiB) {
    throw new ApiError(400, 'invalid_request', `memoryMiB: the ${hypervisor} hypervisor needs at least ${backend.limits.minMemoryMiB} MiB`, 'memoryMiB');
  }
  if (body.vcpus > backend.limits.maxVcpus) {
    throw new ApiError(400, 'invalid_request', `vcpus: the ${hypervisor} hypervisor allows at most ${backend.limits.maxVcpus}`, 'vcpus');
  }
  checkDefinition(body, deps.config.admission);
  return hypervisor;
}
