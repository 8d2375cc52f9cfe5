-- capsule schema v6: every VM's network (docs/network.md). On by default (a VM made before this
-- gets one at its next start); egress (NAT to the host's uplink) on by default, switchable at run
-- time; the slot is the VM's /30 in the host-side address pool (CAPSULE_NET_POOL), unique,
-- released with the row.
ALTER TABLE vms ADD COLUMN network_enabled INTEGER NOT NULL DEFAULT 1 CHECK (network_enabled IN (0, 1));
ALTER TABLE vms ADD COLUMN network_egress INTEGER NOT NULL DEFAULT 1 CHECK (network_egress IN (0, 1));
ALTER TABLE vms ADD COLUMN network_slot INTEGER CHECK (network_slot >= 0);
CREATE UNIQUE INDEX vms_network_slot ON vms (network_slot) WHERE network_slot IS NOT NULL;
