-- capsule schema v10: templates and their pools (docs/templates.md).
--
-- A template is a tenant's recipe for a ready guest: an image booted with CPUs and memory, a
-- start command run in it (through the guest agent) and a ready command polled until it
-- succeeds; then the guest is snapshotted (`snapshot_id`, a snapshot the template owns: not
-- listed among the tenant's snapshots, deleted with the template). `state` is building while
-- that runs (`step` says where), ready once the snapshot is taken, failed with `reason`.
--
-- `pool_size` clones of the snapshot are kept restored and running, waiting to be claimed by
-- POST /v1/vms {"template"}. They are rows of `vms` with `role` 'pool' ('pool-warming' while
-- being restored; a template's build VM: 'template-build'), hidden from VM lists; claiming one
-- clears its role. `template_id` stays on
-- a VM made from a template (no foreign key: a claimed VM outlives its template).
CREATE TABLE templates (
  id                 TEXT PRIMARY KEY,
  tenant_id          TEXT NOT NULL REFERENCES tenants(id),
  name               TEXT NOT NULL,
  image              TEXT NOT NULL,
  hypervisor         TEXT NOT NULL,
  vcpus              INTEGER NOT NULL CHECK (vcpus >= 1),
  memory_mib         INTEGER NOT NULL CHECK (memory_mib >= 1),
  start_cmd          TEXT,
  ready_cmd          TEXT,
  ready_timeout_sec  INTEGER NOT NULL CHECK (ready_timeout_sec >= 1),
  pool_size          INTEGER NOT NULL DEFAULT 0 CHECK (pool_size >= 0),
  state              TEXT NOT NULL CHECK (state IN ('building', 'ready', 'failed')),
  step               TEXT,
  reason             TEXT,
  snapshot_id        TEXT REFERENCES snapshots(id),
  created_at         TEXT NOT NULL,
  updated_at         TEXT NOT NULL,
  UNIQUE (tenant_id, name)
);
ALTER TABLE vms ADD COLUMN template_id TEXT;
ALTER TABLE vms ADD COLUMN role TEXT CHECK (role IN ('template-build', 'pool-warming', 'pool'));
CREATE INDEX vms_pool ON vms (template_id) WHERE role IS NOT NULL;
