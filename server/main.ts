// capsule API server: configuration, database, images, supervisor, HTTP.
import { chmodSync, mkdirSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Server } from 'node:http';
import { REPO_ROOT } from './paths.js';
import { serve } from '@hono/node-server';
import { pino } from 'pino';
import { loadConfig } from './config.js';
import { openDb } from './db/index.js';
import { VmStore, type HypervisorName } from './db/vms.js';
import { ImageStore } from './db/images.js';
import { VolumeStore } from './db/volumes.js';
import { ensureVolumesDir } from './volumes/files.js';
import { DrivesComponent } from './supervisor/components/drives.js';
import { RngComponent } from './supervisor/components/rng.js';
import { BalloonComponent } from './supervisor/components/balloon.js';
import { AgentComponent } from './supervisor/components/agent.js';
import { SnapshotComponent } from './supervisor/components/snapshot.js';
import { SnapshotStore } from './db/snapshots.js';
import { SnapshotService } from './snapshots/service.js';
import { removePartials } from './snapshots/files.js';
import { TemplateStore } from './db/templates.js';
import { TemplateService } from './templates/service.js';
import { AgentClient } from './agent/client.js';
import { NetworkTransport, RoutedTransport, UsernetTransport, type GuestPath } from './agent/transports.js';
import { NetworkComponent } from './supervisor/components/network.js';
import { networkConfigFromEnv } from './network/host.js';
import { TokenStore } from './db/tokens.js';
import { DEFAULT_TENANT, TenantStore } from './db/tenants.js';
import { AuditStore } from './db/audit.js';
import { Quotas } from './tenants/quotas.js';
import { EventStore } from './db/events.js';
import { StorageMonitor } from './db/storage.js';
import { EventHub } from './events/hub.js';
import { QemuHypervisor } from './hypervisors/qemu.js';
import { NativeHypervisor } from './hypervisors/native.js';
import type { Hypervisor } from './hypervisors/types.js';
import { Supervisor } from './supervisor/index.js';
import { HostAdmission } from './supervisor/admission.js';
import { Metrics } from './metrics/index.js';
import { Readiness } from './health/readiness.js';
import { thpAdvice } from './health/host-memory.js';
import { metricsListenerApp } from './api/metrics.js';
import { ensureDefaultImage, registerImages } from './images/registry.js';
import { createApp } from './api/app.js';
import { probeKvm } from '../lib/kvm-probe.js';
import { Jail } from './jail/index.js';
import { installShutdown, trackInFlight } from './shutdown.js';
import { VmTimeouts } from './lifetimes/timeouts.js';
import { E2bSandboxStore } from './db/e2b-sandboxes.js';


async function main(): Promise<void> {
  const config = loadConfig();
  const log = pino({ level: config.logLevel, base: { svc: 'capsule' } });
  // A bug in a request path must cost that request, not the server (and every VM's events).
  process.on('unhandledRejection', (reason) => {
    const e = reason instanceof Error ? reason : new Error(String(reason));
    log.error({ err: e.message, stack: e.stack }, 'unhandled promise rejection');
  });
  // The data directory holds token hashes, VM definitions and events: the server's alone.
  // (build-image.sh may have created it first, with the default umask.)
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  chmodSync(config.dataDir, 0o700);
  mkdirSync(config.vmsDir, { recursive: true, mode: 0o700 });
  // Unix socket paths are limited to 107 bytes: refuse a data directory that breaks them.
  const longest = join(config.vmsDir, '00000000-0000-0000-0000-000000000000', 'console.sock');
  if (Buffer.byteLength(longest) > 107) throw new Error(`CAPSULE_DATA_DIR is too long for Unix socket paths (${longest})`);

  const db = openDb(config.dbPath);
  const storage = new StorageMonitor(config.dataDir, config.minFreeBytes, log);
  const volumes = new VolumeStore(db);
  const vms = new VmStore(db, storage, volumes);
  ensureVolumesDir(config.dataDir);
  const images = new ImageStore(db);
  const snapshots = new SnapshotStore(db);
  // Snapshots whose writing a killed server left half done.
  const partial = removePartials(config.dataDir);
  if (partial.length > 0) log.warn({ partial }, 'removed unfinished snapshot directories');
  const tokens = new TokenStore(db);
  const tenants = new TenantStore(db);
  const quotas = new Quotas({ tenants, vms });
  const audit = new AuditStore(db, config.auditMaxRows, storage);
  const hub = new EventHub(new EventStore(db, config.eventHistory, storage), config.eventRate, { replayLimit: config.eventReplayLimit }, (vm) => vms.tenantOf(vm));
  // VM states the disk refused are kept in memory; save them once there is room again.
  setInterval(() => vms.flushUnsaved(), 5000).unref();

  if (tokens.count() === 0) {
    // The first admin belongs to the tenant migration 005 made (it holds what came before tenants).
    const home = tenants.getByName(DEFAULT_TENANT) ?? tenants.create(DEFAULT_TENANT);
    const { token } = tokens.create({ tenantId: home.id, name: 'admin', scope: 'admin' });
    writeFileSync(config.adminTokenPath, token + '\n', { mode: 0o600 });
    log.info({ file: config.adminTokenPath }, 'created the admin token');
  }

  if (process.env.CAPSULE_BUILD_IMAGE !== '0') ensureDefaultImage(config.imagesDir, log);
  const registered = registerImages(config.imagesDir, images, log);
  log.info({ images: registered }, 'images registered');

  const kvm = probeKvm();
  const thp = thpAdvice();
  if (thp) log.warn(thp);
  const native = new NativeHypervisor(kvm);
  const hypervisors = new Map<HypervisorName, Hypervisor>([
    ['qemu', new QemuHypervisor(config.qemuBinary, kvm.available)],
    ['native', native],
  ]);
  // The native VMM is the default wherever it can run; QEMU (TCG) is the portable fallback.
  const defaultHypervisor: HypervisorName = config.defaultHypervisor ?? (native.availability().available ? 'native' : 'qemu');
  const jail = new Jail(config.jail, log);
  const jailStatus = jail.status();
  if (config.jail.mode !== 'off' && !jail.enabled) log.warn({ reasons: jailStatus.reasons }, `VMMs are not jailed: ${jail.unavailableReason()}`);
  else log.info({ enabled: jailStatus.enabled, cgroups: jailStatus.cgroups, reasons: jailStatus.reasons }, 'VMM jail');
  const drives = new DrivesComponent({ dataDir: config.dataDir, volumes, images, hub, jail, log });
  const balloon = new BalloonComponent();
  const network = new NetworkComponent({ vms, dataDir: config.dataDir, config: networkConfigFromEnv(), log });
  log.info(network.status(), 'VM networks');
  // The guest agent: a secret per boot; reached over the VM's own network, or, on hosts without
  // per-VM networking, QEMU user networking with CAPSULE_AGENT_USERNET=1 (docs/agent.md).
  const agents = new AgentComponent({ vmsDir: config.vmsDir, usernet: config.agentUsernet, log });
  const paths: GuestPath[] = [new NetworkTransport(network)];
  if (config.agentUsernet) paths.push(new UsernetTransport(agents));
  const noPath = network.available ? 'it was created without a network, or is not running' : `per-VM networking is off here (${network.reason}); CAPSULE_AGENT_USERNET=1 reaches unjailed QEMU VMs instead`;
  const agent = new AgentClient({ transport: new RoutedTransport(paths, noPath), token: (id) => agents.token(id) });
  agents.onVmGone = (id) => agent.abortVm(id, 'the VM stopped');
  // The network before the agent: the agent's user-mode fallback is only for VMs without a NIC.
  // The snapshot component before the agent's: a restored guest keeps its agent secret.
  const snapshotComponent = new SnapshotComponent({ dataDir: config.dataDir, snapshots, vms });
  const components = [snapshotComponent, drives, new RngComponent(), balloon, network, agents];
  const admission = new HostAdmission(config.admission);
  // Made before reattach so that the events reattach publishes (CRASHED for a VMM gone meanwhile) are counted.
  const metrics = new Metrics({ vms, hub, admission, backends: [...hypervisors.keys()], cgroups: jail.cgroups, tenantName: (id) => tenants.get(id)?.name });
  const supervisor = new Supervisor({ vms, images, hub, hypervisors, vmsDir: config.vmsDir, stopTimeoutMs: config.stopTimeoutMs, log, jail, admission, quotas, components });
  // Observes state changes from here on (the reattach above publishes none that start a run).
  const timeouts = new VmTimeouts({ vms, hub, actions: supervisor, log });
  await supervisor.reattachAll();
  timeouts.start(); // deadlines that passed while the server was down act now
  log.info({ capacity: config.admission, reserved: admission.usage() }, 'host admission');

  const webDir = join(REPO_ROOT, 'dist', 'web');
  if (!existsSync(join(webDir, 'index.html'))) log.warn({ webDir }, 'web UI not built (npm run build)');
  const readiness = new Readiness({ db, images, hypervisors, storage });
  const snapshotService = new SnapshotService({ dataDir: config.dataDir, minFreeBytes: config.minFreeBytes, snapshots, vms, images, supervisor, hub, log, agent, quotas });
  snapshotComponent.onRestored = (vm, snapshot) => snapshotService.restored(vm, snapshot);
  supervisor.onVmDeleted = (vm) => snapshotService.vmDeleted(vm);
  const templates = new TemplateStore(db);
  const templateService = new TemplateService({ config, log, vms, images, quotas, supervisor, hypervisors, templates, snapshots, snapshotService, drives, agent, hub, timeouts, network });
  await templateService.recover(); // pools' VMs were reattached above
  const { app, injectWebSocket, closeSockets } = createApp({
    config, log, vms, images, tokens, tenants, quotas, audit, hub, supervisor, volumes, snapshots,
    snapshotService, templates, templateService, drives, balloon, network, agent, timeouts, e2bSandboxes: new E2bSandboxStore(db), hypervisors, kvm: kvm.available, defaultHypervisor, webDir, jail: jailStatus, storage,
    readiness, metrics, metricsOnMainListener: config.metricsAddr === undefined,
  });
  const server = serve({ fetch: app.fetch, port: config.port, hostname: config.host }, (info) => {
    log.info({ url: `http://${config.host}:${info.port}`, port: info.port, kvm: kvm.available, kvmReason: kvm.reason }, 'listening');
  });
  injectWebSocket(server as Server);
  const inFlight = trackInFlight(server as Server);
  let metricsServer: ReturnType<typeof serve> | undefined;
  if (config.metricsAddr) {
    const { host, port } = config.metricsAddr;
    metricsServer = serve({ fetch: metricsListenerApp(metrics).fetch, port, hostname: host }, (info) => {
      log.info({ url: `http://${host.includes(':') ? `[${host}]` : host}:${info.port}/metrics`, port: info.port }, 'metrics listening');
    });
    // A listener that cannot bind is a configuration error: stop rather than run unobserved.
    metricsServer.on('error', (e: Error) => { log.fatal({ err: e.message }, 'the metrics listener (CAPSULE_METRICS_ADDR) failed'); process.exit(1); });
  }

  // SIGTERM/SIGINT: stop accepting, finish what is in flight, leave the VMs running (shutdown.ts).
  installShutdown({
    server: server as Server, inFlight, closeSockets, timeoutMs: config.shutdownTimeoutMs, log,
    finish: () => {
      timeouts.close();
      templateService.close();
      supervisor.detachAll();
      metricsServer?.close();
      db.close();
    },
  });
}

main().catch((e: Error) => {
  console.error(`capsule: ${e.message}`);
  process.exit(1);
});
