#!/bin/bash
# setup.sh: everything `npm start` needs on a fresh Debian machine: Debian packages, the
# build, and the default guest image in the data directory. Safe to run again (cached).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
[ -d node_modules ] || npm ci
npm run build --silent
DATA=${CAPSULE_DATA_DIR:-./var}
bash scripts/build-image.sh "${CAPSULE_IMAGES_DIR:-$DATA/images}/default"
echo "setup: ready. The admin token is written to $DATA/admin-token on the first start."
