// Which lifecycle action is allowed in which VM state (the API contract's table).
import type { VmState } from './api.js';

export type ActionId = 'start' | 'stop' | 'forceStop' | 'pause' | 'resume' | 'reboot' | 'delete';

export interface ActionDef {
  id: ActionId;
  label: string;
  busyLabel: string;
  from: readonly VmState[] | 'any';
  danger?: boolean;
}

export const ACTIONS: readonly ActionDef[] = [
  { id: 'start', label: 'Start', busyLabel: 'Starting…', from: ['created', 'stopped', 'crashed'] },
  { id: 'stop', label: 'Stop', busyLabel: 'Stopping…', from: ['running', 'paused', 'starting'] },
  { id: 'pause', label: 'Pause', busyLabel: 'Pausing…', from: ['running'] },
  { id: 'resume', label: 'Resume', busyLabel: 'Resuming…', from: ['paused'] },
  { id: 'reboot', label: 'Reboot', busyLabel: 'Rebooting…', from: ['running'] },
  // Also from "stopping": killing a guest that ignores the clean power-off is what force is for.
  { id: 'forceStop', label: 'Force stop', busyLabel: 'Killing…', from: ['running', 'paused', 'starting', 'stopping'], danger: true },
  { id: 'delete', label: 'Delete', busyLabel: 'Deleting…', from: 'any', danger: true },
];

export function actionDef(id: ActionId): ActionDef {
  const d = ACTIONS.find((a) => a.id === id);
  if (!d) throw new Error(`unknown action ${id}`);
  return d;
}

export function isAllowed(state: VmState | string, id: ActionId): boolean {
  const d = actionDef(id);
  return d.from === 'any' || (d.from as readonly string[]).includes(state);
}

/** States in which a serial console is there or on its way (a booting VM's comes with `running`). */
export function consoleAvailable(state: VmState | string): boolean {
  return state === 'starting' || state === 'running' || state === 'paused';
}

/**
 * States in which the server accepts a console WebSocket: its console bridge exists once the
 * VMM is up, which is when the VM turns `running`; while `starting` it answers 409.
 */
export function consoleAttachable(state: VmState | string): boolean {
  return state === 'running' || state === 'paused';
}

/** States that end a boot: keystrokes still waiting for a console are for a guest that is gone. */
export function bootEnded(state: VmState | string): boolean {
  return state === 'stopping' || state === 'stopped' || state === 'crashed' || state === 'deleted';
}

export const STATES: readonly VmState[] = ['created', 'starting', 'running', 'paused', 'stopping', 'stopped', 'crashed'];

/**
 * May `next` be started while `busy` actions are in flight on the same VM? Only one at a
 * time, except that a slow clean stop can be overtaken by force stop or delete.
 */
export function canOvertake(busy: readonly ActionId[], next: ActionId): boolean {
  if (busy.length === 0) return true;
  if (busy.includes(next)) return false;
  return busy.every((b) => b === 'stop') && (next === 'forceStop' || next === 'delete');
}
