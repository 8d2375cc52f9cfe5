#!/bin/bash
# build-image.sh: build capsule's default guest image from Debian packages.
#
#   scripts/build-image.sh [OUT_DIR]      (default: ${CAPSULE_IMAGES_DIR:-${CAPSULE_DATA_DIR:-./var}/images}/default)
#
# Produces OUT_DIR/{vmlinuz,initramfs.cpio.gz,image.json}: the distribution kernel
# (linux-image-amd64) and a busybox (busybox-static) initramfs holding the virtio modules,
# an /init that mounts the basics, prints the ready marker and runs a shell on the console.
# The build is cached: it is skipped when image.json is newer than the kernel and this script.
set -euo pipefail
DATA=${CAPSULE_DATA_DIR:-./var}
OUT=${1:-${CAPSULE_IMAGES_DIR:-$DATA/images}/default}
READY_MARKER=${CAPSULE_READY_MARKER:-CAPSULE_READY}
SELF=$(readlink -f "$0")

KVER=${KVER:-$(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|.*/vmlinuz-||' | sort -V | tail -1)}
[ -n "$KVER" ] || { echo "build-image: no /boot/vmlinuz-* (install linux-image-amd64)" >&2; exit 1; }
[ -d "/lib/modules/$KVER" ] || { echo "build-image: no /lib/modules/$KVER" >&2; exit 1; }
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || { echo "build-image: busybox not found (install busybox-static)" >&2; exit 1; }
if ! file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' && ! ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic'; then
  echo "build-image: $BUSYBOX is not static (install busybox-static)" >&2; exit 1
fi

if [ -f "$OUT/image.json" ] && [ "$OUT/image.json" -nt "/boot/vmlinuz-$KVER" ] && [ "$OUT/image.json" -nt "$SELF" ]; then
  echo "build-image: $OUT is up to date (kernel $KVER)"; exit 0
fi
echo "build-image: building $OUT from kernel $KVER and $BUSYBOX"
mkdir -p "$OUT"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
R=$WORK/root
mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,run,root,etc,lib/modules}
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done

# Modules for the devices capsule's VMMs expose, in dependency order, decompressed so that
# busybox insmod can load them.
MODS="virtio_mmio virtio_blk virtio_net virtio_console virtio_rng virtio_balloon vmw_vsock_virtio_transport button evdev"
: > "$R/lib/modules/load-order"
for m in $MODS; do modprobe -S "$KVER" --show-depends "$m" 2>/dev/null || true; done |
  awk '$1=="insmod" && !seen[$2]++ {print $2}' |
  while read -r ko; do
    base=$(basename "$ko"); base=${base%.ko*}
    case "$ko" in
      *.ko.xz)  xz -dc "$ko" > "$R/lib/modules/$base.ko" ;;
      *.ko.zst) zstd -dcq "$ko" > "$R/lib/modules/$base.ko" ;;
      *)        cp "$ko" "$R/lib/modules/$base.ko" ;;
    esac
    echo "$base" >> "$R/lib/modules/load-order"
  done

cat > "$R/init" <<INIT
#!/bin/sh
# capsule guest init: PID 1 of the default image.
export PATH=/bin:/sbin HOME=/root PS1='capsule# '
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run
while read -r m; do insmod /lib/modules/\$m.ko 2>/dev/null; done < /lib/modules/load-order
hostname capsule
# busybox poweroff/reboot/halt signal PID 1: USR2, TERM, USR1.
trap 'sync; poweroff -f' USR2 USR1
trap 'sync; reboot -f' TERM
# ACPI power button (QMP system_powerdown) -> clean power-off.
for e in /sys/class/input/event*; do
  [ -e "\$e/device/name" ] || continue
  if grep -q 'Power Button' "\$e/device/name"; then
    (head -c 1 "/dev/input/\${e##*/}" >/dev/null && echo 'capsule: power button' && sync && poweroff -f) &
  fi
done
echo "$READY_MARKER cpus=\$(grep -c ^processor /proc/cpuinfo) uptime=\$(cut -d' ' -f1 /proc/uptime)"
(while :; do setsid cttyhack sh; done) &
while :; do wait; done
INIT
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -6) > "$OUT/initramfs.cpio.gz.tmp"
cp "/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"; mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
cat > "$OUT/image.json.tmp" <<JSON
{
  "name": "default",
  "description": "Debian kernel $KVER with a busybox initramfs",
  "kernel": "vmlinuz",
  "initrd": "initramfs.cpio.gz",
  "cmdline": "console=ttyS0 quiet panic=-1 reboot=k",
  "readyMarker": "$READY_MARKER"
}
JSON
mv "$OUT/image.json.tmp" "$OUT/image.json"
echo "build-image: done ($(du -sh "$OUT" | cut -f1))"
