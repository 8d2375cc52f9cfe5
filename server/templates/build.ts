// A template's build (docs/templates.md): boot a VM of the template's image, start its start
// command through the guest agent, run its ready command until it succeeds, snapshot the guest.
// Each step is published (TEMPLATE_PROGRESS) and kept in the row (`step`); any failure marks the
// template failed with a reason a client can act on. The build VM is deleted in every case.
import type { Template, TemplateStep } from '../db/templates.js';
import type { Vm } from '../db/vms.js';
import { agentAnswer, noAnswer, type ExecStream } from '../agent/client.js';
import type { ConsoleViewer } from '../console/bridge.js';
import type { TemplateDeps } from './service.js';

/** Each try of the ready command may take this long. */
const READY_TRY_MS = 10_000;
/** Pause between tries of the ready command. */
const READY_PAUSE_MS = 500;
/** Without a ready command, a start command still running this long after its start is ready. */
const START_SETTLE_MS = 1000;
/** What a failure message quotes of a command's output. */
const OUTPUT_TAIL = 512;

/** A step did not succeed: the template's `reason`, as a client reads it. */
export class BuildError extends Error {}

export async function buildTemplate(d: TemplateDeps, t: Template, gone: () => boolean): Promise<void> {
  const deadline = Date.now() + t.readyTimeoutSec * 1000;
  const step = (s: TemplateStep) => {
    if (gone()) throw new BuildError('the template was deleted');
    d.templates.setStep(t.id, s);
    d.hub.publish(t.id, 'TEMPLATE_PROGRESS', { template: t.name, step: s }, t.tenant);
  };
  let vm: Vm | undefined;
  try {
    step('booting');
    vm = d.vms.create({
      tenant: t.tenant, name: `_build.${t.name}`, image: t.image, hypervisor: t.hypervisor, vcpus: t.vcpus, memoryMiB: t.memoryMiB,
      template: t.id, role: 'template-build',
    }, () => d.quotas.checkNewVm(t.tenant));
    d.drives.createLayer(d.images.get(t.image)!, d.supervisor.paths(vm.id).dir);
    await d.supervisor.start(vm.id);
    const usesAgent = t.startCmd !== undefined || t.readyCmd !== undefined;
    if (usesAgent) await agentAnswers(d, vm, deadline);
    else await readyMarker(d, vm, t, deadline);
    let start: StartCommand | undefined;
    if (t.startCmd !== undefined) {
      step('starting');
      start = await startCommand(d, vm, t.startCmd);
    }
    try {
      if (t.readyCmd !== undefined) {
        step('waiting-ready');
        await untilReady(d, vm, t.readyCmd, deadline, start);
      } else if (start) {
        // No ready command: ready is the start command done (a setup), or still running a
        // moment after it started (a service).
        await Promise.race([start.stream.done.catch(() => undefined), new Promise((r) => setTimeout(r, START_SETTLE_MS))]);
      }
      start?.checkAlive();
    } finally {
      start?.stream.close(); // a background process: it keeps running in the guest
    }
    step('snapshotting');
    const snapshot = await d.snapshotService.createOwned(vm.id, `_template.${t.name}.${Date.now()}`, (s) => {
      // The same turn as the insert: the template owns the snapshot before anyone can list it.
      if (!gone()) d.templates.setReady(t.id, s.id);
    });
    if (gone()) {
      d.snapshotService.delete(snapshot);
      throw new BuildError('the template was deleted');
    }
    d.log.info({ template: t.id, snapshot: snapshot.id }, 'template built');
  } finally {
    if (vm) await d.supervisor.delete(vm.id, true).catch((e: Error) => d.log.error({ template: t.id, vm: vm!.id, err: e.message }, 'could not delete a template\'s build VM'));
  }
}

async function agentAnswers(d: TemplateDeps, vm: Vm, deadline: number, orElse = `the guest agent did not answer before the ready timeout (does image ${vm.image} run capsule's agent?)`): Promise<void> {
  const a = await agentAnswer(d.agent, vm.id, Math.max(1, deadline - Date.now()));
  if (!a.ok) throw new BuildError(noAnswer(a, orElse));
}

/** Without commands, ready is the image's ready marker on the console (images without the agent work too). */
async function readyMarker(d: TemplateDeps, vm: Vm, t: Template, deadline: number): Promise<void> {
  const marker = d.images.get(t.image)?.readyMarker;
  if (marker === undefined) {
    return agentAnswers(d, vm, deadline, `image ${t.image} has no ready marker and its guest agent did not answer before the ready timeout: give a readyCmd`);
  }
  const bridge = d.supervisor.console(vm.id);
  if (!bridge) throw new BuildError('the build VM has no console');
  let seen = '';
  let detach = () => {};
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new BuildError(`the image's ready marker did not appear on the console within ${t.readyTimeoutSec} s`)), Math.max(1, deadline - Date.now()));
      const viewer: ConsoleViewer = {
        write: (data) => {
          // Only the tail can still hold the start of the marker.
          seen = (seen + data.toString('latin1')).slice(-(marker.length + 4096));
          if (seen.includes(marker)) { clearTimeout(timer); resolve(); }
        },
        bufferedAmount: () => 0,
        close: () => { clearTimeout(timer); reject(new BuildError('the build VM stopped before it was ready')); },
      };
      detach = bridge.attach(viewer);
    });
  } finally {
    detach();
  }
}

interface StartCommand {
  stream: ExecStream;
  /** Throws when the start command has exited with a failure. */
  checkAlive(): void;
}

/** Starts the start command in the background and watches it while the build goes on. */
async function startCommand(d: TemplateDeps, vm: Vm, cmd: string): Promise<StartCommand> {
  let tail = '';
  let exit: { exitCode: number | null; signal?: string } | undefined;
  const stream = await d.agent.exec(vm.id, { shell: cmd, background: true, tag: 'template-start' }, {
    onOutput: (_ch, data) => { tail = (tail + data.toString('utf8')).slice(-OUTPUT_TAIL); },
  });
  await stream.started.catch((e: Error) => { throw new BuildError(`the start command did not start: ${e.message}`); });
  stream.done.then((e) => { exit = e ?? undefined; }, () => undefined);
  return {
    stream,
    checkAlive: () => {
      if (exit && exit.exitCode !== 0) {
        throw new BuildError(`the start command ended with ${exit.exitCode === null ? `signal ${exit.signal ?? '?'}` : `exit code ${exit.exitCode}`}: ${tail.trim() || '(no output)'}`);
      }
    },
  };
}

/** Runs the ready command until it exits 0; fails at the deadline, or when the start command failed. */
async function untilReady(d: TemplateDeps, vm: Vm, cmd: string, deadline: number, start: StartCommand | undefined): Promise<void> {
  let last = 'it never ran';
  for (;;) {
    start?.checkAlive();
    let out = '';
    const tryMs = Math.min(READY_TRY_MS, Math.max(1, deadline - Date.now()));
    try {
      const s = await d.agent.exec(vm.id, { shell: cmd, timeoutMs: tryMs }, {
        onOutput: (_ch, data) => { out = (out + data.toString('utf8')).slice(-OUTPUT_TAIL); },
      });
      const exit = await s.done;
      if (exit?.exitCode === 0) return;
      const timedOut = exit !== undefined && 'timedOut' in exit && exit.timedOut === true;
      // A last try cut short by the build's deadline says nothing about the command: the
      // reason keeps the try before it.
      if (!(timedOut && tryMs < READY_TRY_MS && last !== 'it never ran')) {
        last = `exit code ${exit?.exitCode ?? '?'}${timedOut ? ' (timed out)' : ''}: ${out.trim() || '(no output)'}`;
      }
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() + READY_PAUSE_MS >= deadline) throw new BuildError(`the ready command did not succeed before the ready timeout; its last try: ${last}`);
    await new Promise((r) => setTimeout(r, READY_PAUSE_MS));
  }
}
