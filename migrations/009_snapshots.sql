-- capsule schema v9: snapshots (docs/snapshots.md). A snapshot is a server-side resource of a
-- tenant: a directory snapshots/<id>/ (the VMM's saved state and memory, the VM's writable layer,
-- the guest agent's secret) and this row, which keeps what a VM restored from it is made of
-- (`definition`, the VM's settings as JSON) and the files with their sizes (checked before a
-- restore: a truncated file is refused before any VMM starts).
--
-- kind: `user`, a snapshot a client took (listed, restorable into any number of VMs); `suspend`,
-- a VM's own memory saved by pause-to-disk (not listed; restored by that VM's resume, then
-- deleted).
--
-- vms.restore_snapshot: the snapshot the VM's next start restores instead of booting (set when
-- the VM is made from one, cleared once a restore has succeeded). A snapshot in use this way
-- cannot be deleted.
CREATE TABLE snapshots (
  id          TEXT PRIMARY KEY,
  tenant_id   TEXT NOT NULL REFERENCES tenants(id),
  name        TEXT NOT NULL,
  source_vm   TEXT,
  hypervisor  TEXT NOT NULL,
  image       TEXT NOT NULL,
  vcpus       INTEGER NOT NULL CHECK (vcpus >= 1),
  memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 1),
  definition  TEXT NOT NULL CHECK (json_valid(definition) AND json_type(definition) = 'object'),
  files       TEXT NOT NULL CHECK (json_valid(files) AND json_type(files) = 'array'),
  size_bytes  INTEGER NOT NULL CHECK (size_bytes >= 0),
  kind        TEXT NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'suspend')),
  created_at  TEXT NOT NULL,
  UNIQUE (tenant_id, name)
);
ALTER TABLE vms ADD COLUMN restore_snapshot TEXT REFERENCES snapshots(id);
