-- capsule schema v5 (after 004, whatever order the branches landed in): tenants own VMs, volumes, tokens (and their events); token scopes and
-- expiry; quotas; the audit log. Existing data moves into a tenant named `default`, and every
-- existing token becomes an admin token of it (before tenants every token could do everything).
--
-- Names become unique per tenant, which SQLite can only do by rebuilding vms and volumes (a
-- column's UNIQUE cannot be dropped). The migrator runs with foreign keys off and checks them
-- before it commits (server/db/index.ts), so dropping the old tables cascades nothing.

CREATE TABLE tenants (
  id                TEXT PRIMARY KEY,
  name              TEXT NOT NULL UNIQUE,
  -- NULL: unlimited
  quota_vms         INTEGER CHECK (quota_vms >= 0),
  quota_vcpus       INTEGER CHECK (quota_vcpus >= 0),
  quota_memory_mib  INTEGER CHECK (quota_memory_mib >= 0),
  quota_volume_mib  INTEGER CHECK (quota_volume_mib >= 0),
  created_at        TEXT NOT NULL,
  updated_at        TEXT NOT NULL
);

INSERT INTO tenants (id, name, created_at, updated_at) VALUES (
  lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-'
        || substr('89ab', 1 + abs(random()) % 4, 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
  'default', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

CREATE TABLE vms_new (
  id          TEXT PRIMARY KEY,
  tenant_id   TEXT NOT NULL REFERENCES tenants(id),
  name        TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('created','starting','running','paused','stopping','stopped','crashed')),
  image       TEXT NOT NULL REFERENCES images(name),
  hypervisor  TEXT NOT NULL,
  vcpus       INTEGER NOT NULL CHECK (vcpus >= 1),
  memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 1),
  cmdline     TEXT,
  pid         INTEGER,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL,
  rng         INTEGER NOT NULL DEFAULT 1,
  balloon     INTEGER NOT NULL DEFAULT 0,
  balloon_deflate_on_oom INTEGER NOT NULL DEFAULT 0,
  rootfs_device TEXT NOT NULL DEFAULT 'virtio-blk' CHECK (rootfs_device IN ('virtio-blk','pmem'))
);
INSERT INTO vms_new (id, tenant_id, name, state, image, hypervisor, vcpus, memory_mib, cmdline, pid, created_at, updated_at, rng, balloon, balloon_deflate_on_oom, rootfs_device)
  SELECT id, (SELECT id FROM tenants WHERE name = 'default'), name, state, image, hypervisor, vcpus, memory_mib, cmdline, pid, created_at, updated_at, rng, balloon, balloon_deflate_on_oom, rootfs_device FROM vms;
DROP TABLE vms;
ALTER TABLE vms_new RENAME TO vms;
CREATE UNIQUE INDEX vms_tenant_name ON vms (tenant_id, name);

CREATE TABLE volumes_new (
  id          TEXT PRIMARY KEY,
  tenant_id   TEXT NOT NULL REFERENCES tenants(id),
  name        TEXT NOT NULL,
  size_bytes  INTEGER NOT NULL CHECK (size_bytes > 0),
  from_image  TEXT,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL
);
INSERT INTO volumes_new (id, tenant_id, name, size_bytes, from_image, created_at, updated_at)
  SELECT id, (SELECT id FROM tenants WHERE name = 'default'), name, size_bytes, from_image, created_at, updated_at FROM volumes;
DROP TABLE volumes;
ALTER TABLE volumes_new RENAME TO volumes;
CREATE UNIQUE INDEX volumes_tenant_name ON volumes (tenant_id, name);

CREATE TABLE tokens_new (
  id          TEXT PRIMARY KEY,
  tenant_id   TEXT NOT NULL REFERENCES tenants(id),
  name        TEXT NOT NULL,
  hash        TEXT NOT NULL UNIQUE,     -- sha256 of the token; the token itself is never stored
  scope       TEXT NOT NULL CHECK (scope IN ('admin','write','read')),
  expires_at  TEXT,                     -- NULL: never
  created_at  TEXT NOT NULL
);
INSERT INTO tokens_new (id, tenant_id, name, hash, scope, expires_at, created_at)
  SELECT id, (SELECT id FROM tenants WHERE name = 'default'), name, hash, 'admin', NULL, created_at FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
CREATE INDEX tokens_tenant ON tokens (tenant_id);

-- The tenant an event belongs to (its VM's), kept with the event: a deleted VM's VM_DELETED
-- must still reach only its tenant.
ALTER TABLE events ADD COLUMN tenant_id TEXT;
UPDATE events SET tenant_id = coalesce((SELECT tenant_id FROM vms WHERE vms.id = events.vm_id), (SELECT id FROM tenants WHERE name = 'default'));
CREATE INDEX events_tenant_seq ON events (tenant_id, seq);

-- Every change through the API: who, what, when, outcome. No foreign keys: entries outlive
-- the tokens, tenants and resources they name.
CREATE TABLE audit (
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  at            TEXT NOT NULL,
  token_id      TEXT NOT NULL,
  tenant_id     TEXT NOT NULL,            -- the caller's tenant
  method        TEXT NOT NULL,
  route         TEXT NOT NULL,            -- the route pattern, e.g. /v1/vms/:id/start
  path          TEXT NOT NULL,            -- the request path (never the query: it may hold a token)
  resource_type TEXT,                     -- vm, volume, tenant, token
  resource_id   TEXT,
  resource_tenant_id TEXT,                -- the tenant the resource belongs to (an admin acts across tenants)
  status        INTEGER NOT NULL
);
CREATE INDEX audit_tenant ON audit (tenant_id, id);
CREATE INDEX audit_resource_tenant ON audit (resource_tenant_id, id);
CREATE INDEX audit_resource ON audit (resource_id, id);
