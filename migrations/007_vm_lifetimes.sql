-- capsule schema v7: what sandboxes need of a VM definition (docs/api.md, "Metadata, lists and
-- lifetimes"). metadata: the client's string map, as JSON text. timeout_sec: the VM's TTL,
-- counted from each start (NULL: none); on_timeout: what happens at expiry; expires_at: the
-- deadline of the current run (set when the VM starts running or the timeout is reset, cleared
-- when it stops), so a restarted server still acts on it.
ALTER TABLE vms ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata) AND json_type(metadata) = 'object');
ALTER TABLE vms ADD COLUMN timeout_sec INTEGER CHECK (timeout_sec > 0);
ALTER TABLE vms ADD COLUMN on_timeout TEXT NOT NULL DEFAULT 'stop' CHECK (on_timeout IN ('stop', 'delete'));
ALTER TABLE vms ADD COLUMN expires_at TEXT;
CREATE INDEX vms_expires_at ON vms (expires_at) WHERE expires_at IS NOT NULL;
