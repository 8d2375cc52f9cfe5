#!/bin/bash
# docker-test-base.sh: make a Debian bookworm base image with Node.js, without Docker Hub.
#
#   scripts/docker-test-base.sh TAG
#
# For building capsule's Dockerfile where the official Node image cannot be pulled (these
# machines reach deb.debian.org but not Docker Hub): mmdebstrap makes a minimal bookworm
# (--variant=minbase) and `docker import` turns it into an image. Debian bookworm's own nodejs
# is 18, too old for capsule, so this host's node (the one running this script's caller, or
# `node` on PATH; NODE=/path/to/node to choose) is copied in, with its npm and its headers (so
# that node-gyp needs no download): the same layout as the official image (/usr/local). The
# node must be dynamically linked against nothing newer than bookworm's glibc and libstdc++
# (Debian's and NodeSource's bookworm packages, the official Linux tarballs are).
# A host behind a TLS-inspecting proxy trusts the proxy's CA through
# /usr/local/share/ca-certificates: those certificates are added to the base too, and npm is
# told to use the system's CA bundle (/usr/local/etc/npmrc), or `npm ci` in the build fails
# with SELF_SIGNED_CERT_IN_CHAIN.
# Skipped when TAG already exists (CAPSULE_REBUILD=1 makes it again). Needs root, mmdebstrap
# and a Debian mirror (CAPSULE_DEBIAN_MIRROR, default mmdebstrap's). ~20 s to 2.5 min.
set -euo pipefail
TAG=${1:?usage: docker-test-base.sh TAG}
if [ "${CAPSULE_REBUILD:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "docker-test-base: $TAG exists"; exit 0
fi
NODE=$(readlink -f "${NODE:-$(command -v node)}")
PREFIX=$(dirname "$(dirname "$NODE")")            # /usr (Debian, NodeSource) or /usr/local (tarball)
NPM=$PREFIX/lib/node_modules/npm
HEADERS=$PREFIX/include/node
[ -f "$NPM/bin/npm-cli.js" ] || { echo "docker-test-base: no npm at $NPM" >&2; exit 1; }
[ -f "$HEADERS/common.gypi" ] || { echo "docker-test-base: no node headers at $HEADERS" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "docker-test-base: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }
echo "docker-test-base: making $TAG: Debian bookworm (minbase) + $NODE ($("$NODE" --version))"
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=minbase --include=libstdc++6,ca-certificates \
  --customize-hook='mkdir -p "$1/usr/local/bin" "$1/usr/local/lib/node_modules" "$1/usr/local/include"' \
  --customize-hook="copy-in $NODE /usr/local/bin" \
  --customize-hook="copy-in $NPM /usr/local/lib/node_modules" \
  --customize-hook="copy-in $HEADERS /usr/local/include" \
  --customize-hook='ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm"' \
  --customize-hook='ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
  --customize-hook='if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
      mkdir -p "$1/usr/local/share/ca-certificates" "$1/usr/local/etc"
      cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"
      chroot "$1" update-ca-certificates >/dev/null
      echo cafile=/etc/ssl/certs/ca-certificates.crt > "$1/usr/local/etc/npmrc"
    fi' \
  bookworm - ${CAPSULE_DEBIAN_MIRROR:+"$CAPSULE_DEBIAN_MIRROR"} |
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$TAG" >/dev/null
docker run --rm "$TAG" node -e 'console.log(`docker-test-base: ${process.argv[1]} runs node ${process.version}`)' "$TAG"
