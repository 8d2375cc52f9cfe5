# image-common.sh: the parts capsule's guest image builders share (sourced by
# scripts/build-image.sh and scripts/build-sandbox-image.sh; bash, set -euo pipefail).
#
# A guest image is a directory with image.json and the files it names. Both images boot the
# Debian host kernel (/boot/vmlinuz-*) with a busybox initramfs holding the kernel modules
# for capsule's devices; the guest-side scripts they run live in scripts/guest/.

IMG_SCRIPTS=$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")
IMG_GUEST=$IMG_SCRIPTS/guest
READY_MARKER=${CAPSULE_READY_MARKER:-CAPSULE_READY}

# The drivers for the devices capsule's VMMs expose, in load order (each module's own
# dependencies are loaded before it). Some may be built in or absent in a kernel: skipped.
# vsock_loopback gives the guest a local vsock (CID 1) to test vsock programs without a host.
IMG_DEVICE_MODULES="virtio_ring virtio virtio_mmio virtio_pci virtio_blk failover net_failover virtio_net
  virtio_rng virtio_balloon virtio_console virtio_pmem nfit nd_pmem vsock vmw_vsock_virtio_transport_common
  vmw_vsock_virtio_transport vsock_loopback button evdev"

img_log() { echo "${IMG_NAME:-image}: $*"; }
img_die() { echo "${IMG_NAME:-image}: $*" >&2; exit 1; }

# Sets KVER (newest /boot/vmlinuz-*, or $KVER) and checks its modules are there.
img_find_kernel() {
  KVER=${KVER:-$(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|.*/vmlinuz-||' | sort -V | tail -1)}
  [ -n "$KVER" ] || img_die "no /boot/vmlinuz-* (install linux-image-amd64)"
  [ -d "/lib/modules/$KVER" ] || img_die "no /lib/modules/$KVER"
  KERNEL=/boot/vmlinuz-$KVER
}

# Sets BUSYBOX to a static busybox.
img_find_busybox() {
  BUSYBOX=$(command -v busybox || true)
  [ -n "$BUSYBOX" ] || img_die "busybox not found (install busybox-static)"
  if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' && ! ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic'; then
    img_die "$BUSYBOX is not static (install busybox-static)"
  fi
}

# img_lock OUT_DIR: one build of OUT_DIR at a time (a second builder waits, then finds it
# up to date). The lock is held until the script exits.
img_lock() {
  mkdir -p "$1"
  exec 9>"$1/.build.lock"
  flock 9
}

# img_up_to_date IMAGE_JSON INPUT...: true when IMAGE_JSON exists and is newer than every input.
img_up_to_date() {
  local json=$1 f; shift
  [ -f "$json" ] || return 1
  for f in "$@"; do [ "$json" -nt "$f" ] || return 1; done
}

# img_inputs GUEST_FILE...: the files an image build reads besides the kernel and its own
# script: this library and the named scripts/guest/ files.
img_inputs() {
  local f
  echo "$IMG_SCRIPTS/lib/image-common.sh"
  for f in "$@"; do echo "$IMG_GUEST/$f"; done
}

# img_initramfs_skeleton DIR: the directories, busybox and its applet links.
img_initramfs_skeleton() {
  local r=$1 a
  mkdir -p "$r"/{bin,sbin,proc,sys,dev,tmp,run,root,etc,lib/modules,lib/capsule}
  cp "$BUSYBOX" "$r/bin/busybox"
  for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
}

# img_add_modules DIR MODULE...: the modules with their dependencies, in order, decompressed
# (busybox insmod reads plain .ko files) into DIR/lib/modules, their names in load-order.
img_add_modules() {
  local r=$1 m; shift
  : > "$r/lib/modules/load-order"
  for m in "$@"; do
    if ! modprobe -S "$KVER" --show-depends "$m" >/dev/null 2>&1; then
      img_log "note: no module $m in $KVER (skipped)" >&2
    fi
  done
  for m in "$@"; do modprobe -S "$KVER" --show-depends "$m" 2>/dev/null || true; done |
    awk '$1=="insmod" && !seen[$2]++ {print $2}' |
    while read -r ko; do
      base=$(basename "$ko"); base=${base%.ko*}
      case "$ko" in
        *.ko.xz)  xz -dc "$ko" > "$r/lib/modules/$base.ko" ;;
        *.ko.zst) zstd -dcq "$ko" > "$r/lib/modules/$base.ko" ;;
        *)        cp "$ko" "$r/lib/modules/$base.ko" ;;
      esac
      echo "$base" >> "$r/lib/modules/load-order"
    done
}

# img_install_guest SRC DEST [MODE]: a file from scripts/guest/ with @READY_MARKER@ filled in.
img_install_guest() {
  sed "s|@READY_MARKER@|$READY_MARKER|g" "$IMG_GUEST/$1" > "$2"
  chmod "${3:-0644}" "$2"
}

# img_build_vsock_tool OUT: scripts/guest/vsock-tool.c, static (gcc, libc6-dev).
img_build_vsock_tool() {
  command -v gcc >/dev/null || img_die "gcc not found (install gcc libc6-dev)"
  gcc -static -Os -s -Wall -o "$1" "$IMG_GUEST/vsock-tool.c" || img_die "vsock-tool did not build (install gcc libc6-dev)"
}

# img_pack_initramfs DIR OUT: a gzip'd newc cpio of DIR (written atomically).
img_pack_initramfs() {
  (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6) > "$2.tmp"
  mv "$2.tmp" "$2"
}

# img_install_kernel OUT_DIR: the kernel as OUT_DIR/vmlinuz.
img_install_kernel() {
  cp "$KERNEL" "$1/vmlinuz.tmp"
  mv "$1/vmlinuz.tmp" "$1/vmlinuz"
}

# img_write_json FILE: stdin to FILE, atomically (the image exists once image.json does).
img_write_json() {
  cat > "$1.tmp"
  mv "$1.tmp" "$1"
}
