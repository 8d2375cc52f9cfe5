-- capsule schema v11: a tenant's quota on the disk its snapshots take (docs/snapshots.md), in MiB;
-- NULL: unlimited. Every snapshot of the tenant counts: those it took, its VMs' pause-to-disk
-- states and its templates' snapshots.
ALTER TABLE tenants ADD COLUMN quota_snapshot_mib INTEGER CHECK (quota_snapshot_mib IS NULL OR quota_snapshot_mib >= 0);
