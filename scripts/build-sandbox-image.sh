#!/bin/bash
# build-sandbox-image.sh: build capsule's `sandbox` guest image: a Debian userland (python3,
# nodejs, curl, fio, ...) on a read-only ext4 root disk, and a writable layer per VM.
#
#   scripts/build-sandbox-image.sh [OUT_DIR]   (default: ${CAPSULE_IMAGES_DIR:-${CAPSULE_DATA_DIR:-./var}/images}/sandbox)
#
# Produces OUT_DIR/{vmlinuz,initramfs.cpio.gz,rootfs.ext4,image.json}:
#   rootfs.ext4        mmdebstrap --variant=minbase of Debian $SUITE with the packages below,
#                      made into a raw sparse ext4 image with mkfs.ext4 -d (no loop mount, no
#                      journal: it is only ever mounted read-only)
#   initramfs.cpio.gz  busybox, the device modules plus ext4 and overlay, and an /init
#                      (scripts/guest/sandbox-initramfs-init) that mounts root= read-only,
#                      the writable layer capsule.overlay= (or a tmpfs) over it with overlayfs,
#                      and switch_roots to /sbin/capsule-init (scripts/guest/sandbox-init)
#   vmlinuz            the Debian host kernel, as in the default image
# Packages come from the Debian mirrors the host's apt uses (apt-get indextargets), or
# CAPSULE_DEBIAN_MIRROR. Kept for rebuilds in OUT_DIR/../.cache/: the downloaded .debs (debs/)
# and the installed packages as a tarball (sandbox-base-KEY.tar.zst, KEY: a hash of the
# mmdebstrap arguments: packages, suite, mirrors).
# Needs root (mmdebstrap's root mode keeps file owners; mkfs.ext4 -d copies them).
# Cached: skipped when image.json is newer than the kernel, this script,
# scripts/lib/image-common.sh and the scripts/guest/ files it uses. CAPSULE_REBUILD=1 forces
# a build from fresh packages (new versions from the mirror).
set -euo pipefail
DATA=${CAPSULE_DATA_DIR:-./var}
OUT=${1:-${CAPSULE_IMAGES_DIR:-$DATA/images}/sandbox}
SUITE=${CAPSULE_SANDBOX_SUITE:-bookworm}
# What a sandbox user expects, and what capsule's tests use (fio: disk benchmarks).
PACKAGES=python3,nodejs,ca-certificates,netbase,iproute2,iputils-ping,procps,psmisc,less,curl,fio,busybox-static
PACKAGES=$PACKAGES${CAPSULE_SANDBOX_PACKAGES:+,$CAPSULE_SANDBOX_PACKAGES}
SELF=$(readlink -f "$0")
IMG_NAME=build-sandbox-image
. "$(dirname "$SELF")/lib/image-common.sh"

img_find_kernel
img_find_busybox
img_lock "$OUT"
# shellcheck disable=SC2046
# The guest agent (agent/*.ts, bundled by agent/build.mjs with esbuild from node_modules).
AGENT_SRC=$(dirname "$IMG_SCRIPTS")/agent
# shellcheck disable=SC2046
if [ "${CAPSULE_REBUILD:-0}" != 1 ] && img_up_to_date "$OUT/image.json" "$KERNEL" "$SELF" $(img_inputs power.sh net.sh udhcpc.script sandbox-initramfs-init sandbox-init vsock-tool.c) "$AGENT_SRC"/*.ts "$AGENT_SRC"/*.c "$AGENT_SRC/build.mjs"; then
  img_log "$OUT is up to date (kernel $KVER)"; exit 0
fi
[ "$(id -u)" -eq 0 ] || img_die "building the sandbox image needs root (mmdebstrap, file owners in the root filesystem)"
command -v mmdebstrap >/dev/null || img_die "mmdebstrap not found (install mmdebstrap)"
command -v mkfs.ext4 >/dev/null || img_die "mkfs.ext4 not found (install e2fsprogs)"
START=$(date +%s)
img_log "building $OUT: Debian $SUITE + $PACKAGES, kernel $KVER"
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
CACHE=${CAPSULE_DEB_CACHE:-$(dirname "$OUT")/.cache/debs}
mkdir -p "$CACHE"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/capsule-sandbox.XXXXXX"); trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs

# ---- the mirrors: the host apt's Debian sources for $SUITE (and $SUITE-updates, -security)
MIRRORS=()
if [ -n "${CAPSULE_DEBIAN_MIRROR:-}" ]; then
  MIRRORS=("deb $CAPSULE_DEBIAN_MIRROR $SUITE main")
elif command -v apt-get >/dev/null; then
  while read -r uri release origin codename; do
    case "$codename" in "$SUITE"|"$SUITE"-*) ;; *) continue ;; esac
    [ "$origin" = Debian ] && MIRRORS+=("deb $uri $release main")
  done < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(ORIGIN) $(CODENAME)' 'Identifier: Packages' 'Target-Of: deb' 'Component: main' 2>/dev/null | sort -u)
fi
[ ${#MIRRORS[@]} -gt 0 ] || MIRRORS=("deb http://deb.debian.org/debian $SUITE main")
APTOPTS=(--aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Retries "3"')
for proto in http https; do
  proxy=$(apt-config dump "Acquire::$proto::Proxy" 2>/dev/null | sed -n "s/^Acquire::$proto::Proxy \"\(.*\)\";$/\1/p" | head -1)
  [ -n "$proxy" ] && APTOPTS+=(--aptopt="Acquire::$proto::Proxy \"$proxy\"")
done
img_log "mirrors: ${MIRRORS[*]}"

# ---- the root filesystem: Debian's packages (mmdebstrap), kept as a tarball keyed by what
# went into it, so that a rebuild for changed capsule files (below) takes seconds; then
# capsule's files. Documentation, man pages and translations are left out; .debs are synced
# with the cache.
MMARGS=(--quiet --variant=minbase --include="$PACKAGES"
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  "${APTOPTS[@]}" --dpkgopt=force-unsafe-io
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --skip=download/empty --skip=essential/unlink
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
  --setup-hook="sync-in $CACHE /var/cache/apt/archives/"
  --customize-hook="sync-out /var/cache/apt/archives $CACHE"
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin'
  "$SUITE" "$ROOT" "${MIRRORS[@]}")
KEY=$(printf '%s\n' "${MMARGS[@]}" | sed "s|$ROOT|ROOT|" | sha256sum | cut -c1-16)
BASE=$(dirname "$CACHE")/sandbox-base-$KEY.tar.zst
mkdir -p "$ROOT"
if [ "${CAPSULE_REBUILD:-0}" != 1 ] && [ -f "$BASE" ]; then
  img_log "Debian packages: $BASE"
  zstd -dcq "$BASE" | tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf -
else
  mmdebstrap "${MMARGS[@]}" > "$WORK/mmdebstrap.log" 2>&1 ||
    { tail -30 "$WORK/mmdebstrap.log" >&2; img_die "mmdebstrap failed"; }
  rm -f "$(dirname "$CACHE")"/sandbox-base-*.tar.zst
  tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -cf - . | zstd -q -T0 -3 > "$BASE.tmp"
  mv "$BASE.tmp" "$BASE"
fi
T_PACKAGES=$(($(date +%s) - START))

# capsule's pieces: the init, power-off handling, vsock-tool, busybox for poweroff/reboot/halt
# (they signal PID 1) and vi.
img_install_guest sandbox-init "$ROOT/usr/sbin/capsule-init" 0755
mkdir -p "$ROOT/usr/lib/capsule"
img_install_guest power.sh "$ROOT/usr/lib/capsule/power.sh"
img_install_guest net.sh "$ROOT/usr/lib/capsule/net.sh"
mkdir -p "$ROOT/usr/share/udhcpc"
img_install_guest udhcpc.script "$ROOT/usr/share/udhcpc/default.script" 0755
ln -sf /bin/busybox "$ROOT/usr/local/sbin/udhcpc"
img_build_vsock_tool "$ROOT/usr/local/bin/vsock-tool"
for a in poweroff reboot halt; do ln -sf /bin/busybox "$ROOT/usr/local/sbin/$a"; done
ln -sf /bin/busybox "$ROOT/usr/local/bin/vi"
# capsule-agent (docs/agent.md): one bundled file for Debian's Node.js 18, started by the init ...
command -v node >/dev/null || img_die "node not found (the guest agent is bundled with the host's Node.js and esbuild)"
node "$AGENT_SRC/build.mjs" "$ROOT/usr/lib/capsule/capsule-agent.cjs" >/dev/null || img_die "the guest agent did not build (npm install first: esbuild)"
chmod 0755 "$ROOT/usr/lib/capsule/capsule-agent.cjs"
# ... and capsule-spawn beside it (agent/capsule-spawn.c: the agent starts processes through it).
[ -x "$ROOT/usr/lib/capsule/capsule-spawn" ] || img_die "capsule-spawn did not build (install gcc libc6-dev)"
# ... and capsule-recv (agent/capsule-recv.c: large uploads are copied off the connection by it).
[ -x "$ROOT/usr/lib/capsule/capsule-recv" ] || img_die "capsule-recv did not build (install gcc libc6-dev)"
# The unprivileged account commands run as by default: user (uid 1000), home /home/user.
if ! grep -q '^user:' "$ROOT/etc/passwd"; then
  echo 'user:x:1000:1000:sandbox user:/home/user:/bin/bash' >> "$ROOT/etc/passwd"
  echo 'user:x:1000:' >> "$ROOT/etc/group"
  echo 'user:!:19000:0:99999:7:::' >> "$ROOT/etc/shadow"
  [ -f "$ROOT/etc/gshadow" ] && echo 'user:!::' >> "$ROOT/etc/gshadow"
fi
mkdir -p "$ROOT/home/user"
cp -a "$ROOT/etc/skel/." "$ROOT/home/user/" 2>/dev/null || true
chown -R 1000:1000 "$ROOT/home/user"
chmod 0750 "$ROOT/home/user"
echo capsule > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcapsule\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
printf '# capsule: no network is configured by the image; put nameservers here.\n' > "$ROOT/etc/resolv.conf"
printf '# capsule: the root is an overlay set up by the initramfs (see /run/capsule/boot).\n' > "$ROOT/etc/fstab"
cat > "$ROOT/etc/capsule-image" <<INFO
name=sandbox
suite=$SUITE
kernel=$KVER
packages=$PACKAGES
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
INFO
find "$ROOT/var/log" "$ROOT/tmp" -xdev -type f -delete
rm -rf "$ROOT"/var/lib/apt/lists/*

# ---- ext4 image: 4 KiB blocks (DAX needs the page size; mke2fs would pick 1 KiB for a
# "small" filesystem), content + 10 % + 32 MiB, a multiple of 2 MiB (a virtio-pmem backend's
# alignment); inodes for the files + 25 %. No journal: read-only. Sparse: only used blocks
# take disk space.
KIB=$(du -s --block-size=1K "$ROOT" | cut -f1)
FILES=$(find "$ROOT" -xdev | wc -l)
MIB=$(( (KIB * 110 / 100 / 1024 + 32 + 1) / 2 * 2 ))
rm -f "$OUT/rootfs.ext4.tmp"
truncate -s "${MIB}M" "$OUT/rootfs.ext4.tmp"
mkfs.ext4 -q -F -d "$ROOT" -T default -b 4096 -I 256 -L capsule-root -m 0 -N $((FILES + FILES / 4 + 1024)) -O ^has_journal \
  -E lazy_itable_init=1 "$OUT/rootfs.ext4.tmp"
e2fsck -fn "$OUT/rootfs.ext4.tmp" >/dev/null 2>&1 || img_die "e2fsck found errors in the new rootfs"
chmod 0644 "$OUT/rootfs.ext4.tmp"

# ---- initramfs: busybox, the modules, the overlay /init
R=$WORK/initramfs
img_initramfs_skeleton "$R"
mkdir -p "$R"/{mnt,newroot}
# shellcheck disable=SC2086
img_add_modules "$R" $IMG_DEVICE_MODULES crc32c_generic crc32c_intel ext4 overlay
img_install_guest power.sh "$R/lib/capsule/power.sh"
img_install_guest sandbox-initramfs-init "$R/init" 0755
img_pack_initramfs "$R" "$OUT/initramfs.cpio.gz"

# ---- in place: rootfs, kernel, then image.json (the image exists once image.json does).
# A VM still running on the old rootfs.ext4 keeps its (unlinked) file.
mv "$OUT/rootfs.ext4.tmp" "$OUT/rootfs.ext4"
img_install_kernel "$OUT"
img_write_json "$OUT/image.json" <<JSON
{
  "name": "sandbox",
  "description": "Debian $SUITE (python3, nodejs, curl, fio, capsule-agent) on a read-only ext4 root with a writable layer per VM; kernel $KVER",
  "kernel": "vmlinuz",
  "initrd": "initramfs.cpio.gz",
  "rootfs": "rootfs.ext4",
  "cmdline": "console=ttyS0 quiet panic=-1 reboot=k root=/dev/vda ro capsule.overlay=/dev/vdb",
  "readyMarker": "$READY_MARKER"
}
JSON
img_log "done in $(($(date +%s) - START)) s (packages ${T_PACKAGES} s): rootfs ${MIB} MiB ($(du -h "$OUT/rootfs.ext4" | cut -f1) used, $FILES files), initramfs $(du -h "$OUT/initramfs.cpio.gz" | cut -f1)"
