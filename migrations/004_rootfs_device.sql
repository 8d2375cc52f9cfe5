-- capsule schema v4: how a VM of an image with a rootfs gets it: a virtio-blk disk (vda) or
-- persistent memory (native: virtio-pmem; QEMU: an NVDIMM), mapped into the guest and
-- mounted with DAX (Kata's block_device_driver = virtio-blk | nvdimm).
ALTER TABLE vms ADD COLUMN rootfs_device TEXT NOT NULL DEFAULT 'virtio-blk' CHECK (rootfs_device IN ('virtio-blk','pmem'));
