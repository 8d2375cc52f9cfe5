#!/bin/bash
# install-deps.sh: the Debian packages capsule needs, installed only when missing.
#   qemu-system-x86   the QEMU backend (and the nested KVM lab for tests)
#   linux-image-amd64 the guest kernel of the default image
#   busybox-static    the guest userland of the default image (and the sandbox's initramfs)
#   cpio, kmod, xz-utils, zstd, file   building the initramfs
#   gcc, libc6-dev    building vsock-tool (static) for the guest images
#   mmdebstrap, e2fsprogs   the sandbox image's root filesystem (Debian userland -> ext4)
#   chromium          the browser the web UI tests drive (playwright-core)
#   iproute2, nftables   per-VM networks: namespaces, veth pairs, taps (ip), NAT and filtering (nft)
set -euo pipefail
PKGS=(qemu-system-x86 linux-image-amd64 busybox-static cpio kmod xz-utils zstd file gcc libc6-dev mmdebstrap e2fsprogs chromium iproute2 nftables)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all Debian packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
