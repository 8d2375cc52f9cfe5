#!/bin/bash
# robustness.sh: runs the hostile-input and crash drills of issue 10 one file at a time (each
# writes its figures to $ROBUSTNESS_OUT), the QMP fuzz in the KVM lab, then merges the figures into
# bench/results/robustness.json (bench/robustness.ts). Needs root (tmpfs mounts, the jail) and QEMU.
# Takes about 15 minutes on 2 cores. SKIP_LAB=1 leaves the QMP fuzz out.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export ROBUSTNESS_OUT=${ROBUSTNESS_OUT:-/tmp/robustness-out}
# The soak drill runs 200 lifecycles here (npm test runs 50).
export LIFECYCLES=${LIFECYCLES:-200}
mkdir -p "$ROBUSTNESS_OUT"
[ "${CAPSULE_NO_BUILD:-0}" = 1 ] || npm run build
for f in server/api/fuzz vmm/qmp/fuzz server/api/websocket-abuse server/supervisor/shutdown server/supervisor/diskfull server/supervisor/kill9 server/supervisor/lifecycles; do
  node --test "dist/$f.test.js"
done
LAB_ARGS=()
if [ "${SKIP_LAB:-0}" != 1 ]; then
  LOG="$ROBUSTNESS_OUT/qmp-fuzz-lab.log"
  CAPSULE_NO_BUILD=1 bash scripts/kvm-tests.sh dist/vmm/qmp/fuzz.kvm.test.js 2>&1 | tee "$LOG"
  LAB_ARGS=(--lab-log "$LOG")
fi
node dist/bench/robustness.js --in "$ROBUSTNESS_OUT" "${LAB_ARGS[@]}"
