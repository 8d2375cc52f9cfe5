#!/bin/bash
# build-image.sh: build capsule's default guest image from Debian packages.
#
#   scripts/build-image.sh [OUT_DIR]      (default: ${CAPSULE_IMAGES_DIR:-${CAPSULE_DATA_DIR:-./var}/images}/default)
#
# Produces OUT_DIR/{vmlinuz,initramfs.cpio.gz,image.json}: the distribution kernel
# (linux-image-amd64) and a busybox (busybox-static) initramfs holding the virtio, vsock and
# pmem modules, vsock-tool (scripts/guest/vsock-tool.c, built static), and an /init
# (scripts/guest/default-init) that mounts the basics, prints the ready marker and runs a
# shell on the console. The build is cached: it is skipped when image.json is newer than the
# kernel, this script, scripts/lib/image-common.sh and scripts/guest/*.
set -euo pipefail
DATA=${CAPSULE_DATA_DIR:-./var}
OUT=${1:-${CAPSULE_IMAGES_DIR:-$DATA/images}/default}
SELF=$(readlink -f "$0")
IMG_NAME=build-image
. "$(dirname "$SELF")/lib/image-common.sh"

img_find_kernel
img_find_busybox
# shellcheck disable=SC2046
if img_up_to_date "$OUT/image.json" "$KERNEL" "$SELF" $(img_common_inputs); then
  img_log "$OUT is up to date (kernel $KVER)"; exit 0
fi
img_log "building $OUT from kernel $KVER and $BUSYBOX"
mkdir -p "$OUT"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
R=$WORK/root
img_initramfs_skeleton "$R"
# shellcheck disable=SC2086
img_add_modules "$R" $IMG_DEVICE_MODULES
img_build_vsock_tool "$R/bin/vsock-tool"
img_install_guest power.sh "$R/lib/capsule/power.sh"
img_install_guest default-init "$R/init" 0755
img_pack_initramfs "$R" "$OUT/initramfs.cpio.gz"
img_install_kernel "$OUT"
img_write_json "$OUT/image.json" <<JSON
{
  "name": "default",
  "description": "Debian kernel $KVER with a busybox initramfs",
  "kernel": "vmlinuz",
  "initrd": "initramfs.cpio.gz",
  "cmdline": "console=ttyS0 quiet panic=-1 reboot=k",
  "readyMarker": "$READY_MARKER"
}
JSON
img_log "done ($(du -sh "$OUT" | cut -f1))"
