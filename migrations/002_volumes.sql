-- capsule schema v2: volumes (server-side disk files), VM drives, rng and balloon devices,
-- images with a root filesystem.
CREATE TABLE volumes (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,
  size_bytes  INTEGER NOT NULL CHECK (size_bytes > 0),
  from_image  TEXT,                    -- the image whose rootfs it was copied from, if any
  created_at  TEXT NOT NULL,
  updated_at  TEXT NOT NULL
);

-- A VM's drives in guest order (position), user drives only: an image's rootfs and the VM's
-- writable layer come first and are not rows here. `state`: attached, or in flight on a
-- running VM (attaching: hot-plug under way; detaching: device_del sent, DEVICE_DELETED awaited).
CREATE TABLE vm_drives (
  vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
  id          TEXT NOT NULL,            -- drive-N, also the device id in the VMM
  position    INTEGER NOT NULL,
  volume_id   TEXT NOT NULL REFERENCES volumes(id),
  read_only   INTEGER NOT NULL DEFAULT 0,
  cache       TEXT NOT NULL DEFAULT 'writeback' CHECK (cache IN ('none','writeback','unsafe')),
  iops        INTEGER,
  state       TEXT NOT NULL DEFAULT 'attached' CHECK (state IN ('attached','attaching','detaching')),
  created_at  TEXT NOT NULL,
  PRIMARY KEY (vm_id, id)
);
CREATE INDEX vm_drives_volume ON vm_drives (volume_id);

ALTER TABLE vms ADD COLUMN rng INTEGER NOT NULL DEFAULT 1;
ALTER TABLE vms ADD COLUMN balloon INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vms ADD COLUMN balloon_deflate_on_oom INTEGER NOT NULL DEFAULT 0;

ALTER TABLE images ADD COLUMN rootfs TEXT;  -- host path of an ext4 root filesystem image, server-side only
