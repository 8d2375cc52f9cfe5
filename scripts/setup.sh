#!/bin/bash
# setup.sh: everything `npm start` needs on a fresh Debian machine: Debian packages, the
# build, and the guest images in the data directory: `default` (~2 s) and `sandbox` (Debian
# userland on a rootfs: ~1-2 min the first time, needs root; CAPSULE_SANDBOX_IMAGE=0 skips
# it). Safe to run again (cached).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci
npm run build --silent
DATA=${CAPSULE_DATA_DIR:-./var}
IMAGES=${CAPSULE_IMAGES_DIR:-$DATA/images}
bash scripts/build-image.sh "$IMAGES/default"
if [ "${CAPSULE_SANDBOX_IMAGE:-1}" != 0 ]; then
  # Not fatal: the server runs without it (the default image is the default).
  bash scripts/build-sandbox-image.sh "$IMAGES/sandbox" ||
    echo "setup: the sandbox image was not built (see above); the server starts without it" >&2
fi
echo "setup: ready. The admin token is written to $DATA/admin-token on the first start."
