-- capsule schema v1: images, VMs, API tokens, events.
CREATE TABLE images (
  name        TEXT PRIMARY KEY,
  description TEXT NOT NULL DEFAULT '',
  kernel      TEXT NOT NULL,            -- host path, server-side only, never from a client
  initrd      TEXT,
  cmdline     TEXT NOT NULL DEFAULT '',
  ready_marker TEXT,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL
);

CREATE TABLE vms (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,
  state       TEXT NOT NULL CHECK (state IN ('created','starting','running','paused','stopping','stopped','crashed')),
  image       TEXT NOT NULL REFERENCES images(name),
  hypervisor  TEXT NOT NULL,
  vcpus       INTEGER NOT NULL CHECK (vcpus >= 1),
  memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 1),
  cmdline     TEXT,
  pid         INTEGER,
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL
);

CREATE TABLE tokens (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL,
  hash        TEXT NOT NULL UNIQUE,     -- sha256 of the token; the token itself is never stored
  created_at  TEXT NOT NULL
);

CREATE TABLE events (
  seq         INTEGER PRIMARY KEY AUTOINCREMENT,
  vm_id       TEXT NOT NULL,
  event       TEXT NOT NULL,
  data        TEXT NOT NULL,            -- JSON
  timestamp   TEXT NOT NULL
);
CREATE INDEX events_vm_seq ON events (vm_id, seq);
