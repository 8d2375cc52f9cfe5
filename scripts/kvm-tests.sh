#!/bin/bash
# kvm-tests.sh: run capsule's KVM tests (dist/**/*.kvm.test.js) where a usable /dev/kvm exists.
#
#   scripts/kvm-tests.sh [EXTRA_TEST_FILE...]
#
# - KVM usable here (lib/kvm-probe.ts says so): `node --test` runs the tests directly.
# - Otherwise: a nested lab (one L1 boot, or more when one dies). An L1 Linux guest runs under QEMU/TCG with an AMD CPU
#   that has SVM (-cpu EPYC); its init loads kvm_amd (=> a real /dev/kvm inside), mounts the host's
#   / read-only over 9p (multidevs=remap) and a writable work folder at the same path as on the
#   host, chroots into the host's / and runs the tests there, one file at a time. Output is
#   printed; the exit status is the tests' status. The lab is slow and noisy: a file that fails
#   runs once more (said in a KVMTESTS: line), and an L1 whose kernel locks up (soft lockup of
#   CAPSULE_LAB_LOCKUP_S, 120 s), panics, or stops (no heartbeat, finished file or console output for
#   CAPSULE_LAB_HANG_S, 600 s) is ended, and a fresh one runs the files left (at most
#   CAPSULE_LAB_BOOTS L1s, within one time budget). The L1 boots with nokaslr and a QEMU monitor
#   on $CAPSULE_LAB_DIR/monitor.sock (`info registers -a` shows where a stuck L1 is).
# - No QEMU: says so and exits 3.
#
# Env: CAPSULE_LAB_DIR (work folder, default /tmp/capsule-lab; the L1 initramfs is cached there)
#      CAPSULE_LAB_TIMEOUT (whole seconds, 3300: one budget for all L1 boots together)  CAPSULE_LAB_BOOTS (6)  CAPSULE_LAB_MEM (4G)  CAPSULE_LAB_SMP (2)  CAPSULE_LAB_CPU (EPYC)
#      CAPSULE_LAB_VERBOSE=1 (print the whole L1 console)  CAPSULE_LAB_LOCKUP_S (120)  CAPSULE_LAB_HANG_S (600)
#      CAPSULE_LAB_FILE_S (600: one test file's time limit, twice that with its rerun)
#      KVM_TESTS_ENV="VAR1 VAR2" (extra variables passed into the lab; CAPSULE_* always are)
#      CAPSULE_NO_BUILD=1 (skip `tsc`)   CAPSULE_TEST_IMAGE (guest image dir; built if unset)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
say() { echo "kvm-tests: $*" >&2; }

if [ "${CAPSULE_NO_BUILD:-0}" != 1 ]; then
  # tsc's modules (the tests) and the VMM bundle that bin/capsule-vmm runs (vmm/build.mjs)
  { npx --no-install tsc -p tsconfig.json && node vmm/build.mjs > /dev/null; } || { say "build failed"; exit 2; }
fi
# `--cmd 'COMMAND'` runs a shell command (e.g. a benchmark) on KVM instead of test files.
CMD=""
if [ "${1:-}" = --cmd ]; then
  shift; CMD="$*"; TESTS=("(command)")
elif [ $# -gt 0 ]; then
  TESTS=("$@")
else
  mapfile -t TESTS < <(find dist -name '*.kvm.test.js' -not -path '*/node_modules/*' | sort)
fi
if [ ${#TESTS[@]} -eq 0 ]; then say "no *.kvm.test.js files under dist/"; exit 2; fi

PROBE=$(node --input-type=module -e "
import { probeKvm } from '$ROOT/dist/lib/kvm-probe.js';
const p = probeKvm(); console.log((p.available ? 'yes ' : 'no ') + p.reason);")
if [ "${PROBE%% *}" = yes ]; then
  say "KVM usable (${PROBE#* }): running ${CMD:-${#TESTS[@]} file(s)} directly"
  [ -n "$CMD" ] && exec sh -c "$CMD"
  exec node --test --test-concurrency=1 "${TESTS[@]}"
fi
say "KVM not usable here (${PROBE#* }): using a nested lab"

QEMU=$(command -v qemu-system-x86_64 || true)
if [ -z "$QEMU" ]; then
  say "no qemu-system-x86_64: cannot run KVM tests on this machine (install qemu-system-x86, or run where /dev/kvm works)"
  exit 3
fi
LAB=${CAPSULE_LAB_DIR:-/tmp/capsule-lab}
mkdir -p "$LAB"
LAB=$(cd "$LAB" && pwd)
KVER=${KVER:-$(ls -1 /boot/vmlinuz-* 2>/dev/null | sed 's|.*/vmlinuz-||' | sort -V | tail -1)}
if [ -z "$KVER" ] || [ ! -d "/lib/modules/$KVER" ]; then say "need /boot/vmlinuz-* and /lib/modules (linux-image-amd64) for the lab"; exit 3; fi
for tool in busybox cpio gzip; do command -v $tool >/dev/null || { say "need $tool for the lab (busybox-static, cpio)"; exit 3; }; done

# ---- the L1 initramfs (cached) ----
SELF=$(readlink -f "$0")
INITRD=$LAB/l1-$KVER.cpio.gz
if [ ! -f "$INITRD" ] || [ "$SELF" -nt "$INITRD" ]; then
  say "building the L1 initramfs ($KVER) in $LAB"
  R=$(mktemp -d "$LAB/rootfs.XXXXXX")
  mkdir -p "$R"/{bin,proc,sys,dev,tmp,host,lab,lib/modules}
  cp "$(command -v busybox)" "$R/bin/busybox"
  for a in sh mount umount mkdir insmod cat tr poweroff chroot sleep echo sync grep cut ifconfig; do ln -s busybox "$R/bin/$a"; done
  : > "$R/lib/modules/order"
  for m in kvm_amd 9p 9pnet_virtio virtio_pci; do modprobe -S "$KVER" --show-depends "$m" 2>/dev/null; done |
    awk '$1=="insmod" && !seen[$2]++ {print $2}' | while read -r ko; do
      b=$(basename "$ko"); b=${b%.ko*}
      case "$ko" in
        *.xz) xz -dc "$ko" > "$R/lib/modules/$b.ko" ;;
        *.zst) zstd -dcq "$ko" > "$R/lib/modules/$b.ko" ;;
        *) cp "$ko" "$R/lib/modules/$b.ko" ;;
      esac
      echo "$b" >> "$R/lib/modules/order"
    done
  cat > "$R/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
arg() { for t in $(cat /proc/cmdline); do case "$t" in "$1"=*) echo "${t#*=}";; esac; done; }
while read -r m; do insmod /lib/modules/$m.ko 2>/dev/null; done < /lib/modules/order
[ -c /dev/kvm ] || echo "KVMTESTS: no /dev/kvm in L1"
ifconfig lo 127.0.0.1 up || echo "KVMTESTS: no loopback in L1"
O="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o $O,cache=none lab /lab || echo "KVMTESTS: cannot mount the lab folder"
mount -t 9p -o $O,cache=loose,ro hostroot /host || echo "KVMTESTS: cannot mount the host root"
for d in proc sys dev; do mount --rbind /$d /host/$d; done
mount -t tmpfs tmpfs /host/tmp; mount -t tmpfs tmpfs /host/run
LABPATH=$(arg kt.lab)
mkdir -p "/host$LABPATH"; mount --bind /lab "/host$LABPATH"
# The checkout gets a share of its own: under the host's /tmp it would be hidden by the tmpfs.
REPOPATH=$(arg kt.repo)
mkdir -p "/host$REPOPATH"; mount -t 9p -o $O,cache=loose,ro repo "/host$REPOPATH" || echo "KVMTESTS: cannot mount the checkout"
# a heartbeat the host watches: an L1 whose userspace no longer runs at all is ended (see below)
(while :; do : > /lab/heartbeat; sleep 10; done) &
echo "KVMTESTS_BEGIN"
chroot /host /bin/sh "$LABPATH/run.sh"
rc=$?
echo "$rc" > /lab/rc; sync
echo "KVMTESTS_END rc=$rc"
poweroff -f
INIT
  chmod +x "$R/init"
  (cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp" && mv "$INITRD.tmp" "$INITRD"
  rm -rf "$R"
fi

# ---- the guest image for the tests (built on this host: the lab's CPU is slow) ----
# (the server's tests look for images in $CAPSULE_TEST_IMAGES/<name>; the VMM's use $CAPSULE_TEST_IMAGE)
if [ -z "${CAPSULE_TEST_IMAGE:-}" ]; then
  CAPSULE_TEST_IMAGES=$LAB/images
  CAPSULE_TEST_IMAGE=$CAPSULE_TEST_IMAGES/default
  bash "$ROOT/scripts/build-image.sh" "$CAPSULE_TEST_IMAGE" >&2 || { say "guest image build failed"; exit 2; }
  # The sandbox image (the guest agent's tests): the host's copy when npm test built one
  # (CAPSULE_HOST_TEST_IMAGES, from scripts/run-tests.mjs), else built here (cached).
  HOST_SANDBOX=${CAPSULE_HOST_TEST_IMAGES:-}/sandbox
  if [ -n "${CAPSULE_HOST_TEST_IMAGES:-}" ] && [ -f "$HOST_SANDBOX/image.json" ]; then
    if ! cmp -s "$HOST_SANDBOX/image.json" "$CAPSULE_TEST_IMAGES/sandbox/image.json" || [ "$HOST_SANDBOX/rootfs.ext4" -nt "$CAPSULE_TEST_IMAGES/sandbox/rootfs.ext4" ]; then
      rm -rf "$CAPSULE_TEST_IMAGES/sandbox.tmp" && cp -a --sparse=always "$HOST_SANDBOX" "$CAPSULE_TEST_IMAGES/sandbox.tmp" \
        && rm -rf "$CAPSULE_TEST_IMAGES/sandbox" && mv "$CAPSULE_TEST_IMAGES/sandbox.tmp" "$CAPSULE_TEST_IMAGES/sandbox" \
        || { say "copying the sandbox image failed"; exit 2; }
    fi
  else
    bash "$ROOT/scripts/build-sandbox-image.sh" "$CAPSULE_TEST_IMAGES/sandbox" >&2 || { say "sandbox image build failed"; exit 2; }
  fi
fi
export CAPSULE_TEST_IMAGE CAPSULE_TEST_IMAGES=${CAPSULE_TEST_IMAGES:-$(dirname "$CAPSULE_TEST_IMAGE")}

# ---- the command run inside L1 ----
# The limit on one test file (whole seconds): the slowest took 231 s in a busy lab.
FILE_S=${CAPSULE_LAB_FILE_S:-600}
case "$FILE_S" in ''|*[!0-9]*|0) echo "kvm-tests: CAPSULE_LAB_FILE_S must be whole seconds >= 1, got '$FILE_S'" >&2; exit 2;; esac
ENVFILE=$LAB/env.sh
: > "$ENVFILE"
for v in $(compgen -e | grep '^CAPSULE_') ${KVM_TESTS_ENV:-}; do
  [ -n "${!v+x}" ] && printf 'export %s=%q\n' "$v" "${!v}" >> "$ENVFILE"
done
{
  echo '#!/bin/sh'
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root'
  echo ". '$ENVFILE'"
  echo 'export CAPSULE_IN_LAB=1  # tests and benches: slower deadlines, and results say where they ran'
  echo "cd '$ROOT' || exit 2"
  if [ -n "$CMD" ]; then
    printf 'exec sh -c %q\n' "$CMD"
  else
    # One file at a time; a file that fails runs once more, said on the console (KVMTESTS:
    # lines reach the host's stderr): in the nested lab under TCG a guest now and then misses
    # a 60 s deadline or resets during boot with no code at fault. A real failure fails twice.
    # Each result goes to $LAB/done, so that a fresh L1 (after the first one's kernel died)
    # runs only the files the first did not finish.
    echo "DONE=$(printf %q "$LAB/done")"
    echo "REPO=$(printf %q "$ROOT")"
    echo "FILE_S=${FILE_S}"
    # node's runner takes --test-timeout from 20.11 on (package.json allows 20.10: `timeout` alone then)
    if node --test-timeout=1000 -e 0 2>/dev/null; then echo "TT=--test-timeout=${FILE_S}000"; else echo "TT="; fi
    cat <<'RUN'
# One file under a time limit: node's runner cancels a file that runs past it (--test-timeout
# bounds the whole file when given to the runner) and says so, its tests printed so far naming
# where it stood; `timeout` is the backstop for a runner that cannot act. (A CI run lost its last
# 36 minutes to one file that printed nothing while the L1's heartbeat went on.) Whatever a
# failed file left running (daemonized VMMs, QEMUs, test servers) is killed, so that its rerun and
# the next file have the L1's CPUs. The test servers' output is kept (L1's /tmp unless
# CAPSULE_TEST_SERVER_LOG_DIR says where) and its end printed when the limit was hit: a killed
# file's after() hooks never print it.
run_once() {
  logs=${CAPSULE_TEST_SERVER_LOG_DIR:-/tmp/kvm-tests-server-logs}
  [ -n "${CAPSULE_TEST_SERVER_LOG_DIR:-}" ] || { rm -rf "$logs"; mkdir -p "$logs"; }
  CAPSULE_TEST_SERVER_LOG_DIR=$logs \
    timeout -k 10 $((FILE_S + 60)) node --test --test-concurrency=1 $TT "$1"
  r=$?
  [ "$r" = 0 ] && return 0
  if [ $(( $(date +%s) - t )) -ge "$FILE_S" ]; then
    echo "KVMTESTS: $1 ran into the file limit of ${FILE_S} s (CAPSULE_LAB_FILE_S)"
    for f in "$logs"/*.log; do [ -f "$f" ] && { echo "KVMTESTS: the end of $f:"; tail -n 30 "$f"; }; done
  fi
  pkill -KILL -f "$REPO/(bin|dist)/"; pkill -KILL -f 'qemu-system-x86_64 -name capsule-'
  return "$r"
}
run() {
  if grep -qxF "PASS $1" "$DONE" 2>/dev/null; then echo "KVMTESTS: $1 passed in the earlier L1"; return 0; fi
  if grep -qxF "FAIL $1" "$DONE" 2>/dev/null; then echo "KVMTESTS: $1 failed in the earlier L1"; return 1; fi
  # a file that was running when three L1s died fails, rather than taking every fresh L1 down
  # (restore-heavy files meet the emulator's fault most: one full run lost two L1s in a row to
  # the same file, which had passed in the run before)
  starts=$(grep -cxF "START $1" "$DONE" 2>/dev/null)
  if [ "${starts:-0}" -ge 3 ]; then
    echo "KVMTESTS: $1 was running when three L1s died: failed"; echo "FAIL $1" >> "$DONE"; sync; return 1
  fi
  echo "START $1" >> "$DONE"; sync
  t=$(date +%s)
  if run_once "$1"; then echo "KVMTESTS: $1 passed in $(( $(date +%s) - t )) s"; echo "PASS $1" >> "$DONE"; sync; return 0; fi
  echo "KVMTESTS: $1 failed after $(( $(date +%s) - t )) s; running it once more"
  t=$(date +%s)
  if run_once "$1"; then echo "KVMTESTS: $1 passed in $(( $(date +%s) - t )) s"; echo "PASS $1" >> "$DONE"; sync; return 0; fi
  echo "KVMTESTS: $1 failed twice"; echo "FAIL $1" >> "$DONE"; sync; return 1
}
rc=0
RUN
    for t in "${TESTS[@]}"; do printf 'run %q || rc=1\n' "$t"; done
    echo 'exit $rc'
  fi
} > "$LAB/run.sh"
LOG=$LAB/console.log
# One time budget for the whole lab, all L1 boots together: a fresh L1 (after a lockup) gets
# what the ones before left, so a lab run never takes more than CI planned for it (it once took two
# full timeouts, one per L1, and CI's own limit ended the whole test run). 3300 s: CI allows 90 minutes
# for all of it, and its install, host and browser tests took ~21 of them in the run whose lab
# spent 3003 s.
TMO=${CAPSULE_LAB_TIMEOUT:-3300}
case "$TMO" in ''|*[!0-9]*) echo "kvm-tests: CAPSULE_LAB_TIMEOUT must be whole seconds, got '$TMO'" >&2; exit 2;; esac
LAB_T0=$(date +%s)
lab_left() { echo $(( TMO - ($(date +%s) - LAB_T0) )); }
# The L1 kernel under TCG now and then locks up a CPU for good (soft lockup of a kworker, seen
# once in ~10 runs, with no test at fault), or panics (a page-fault recursion that hit the stack
# guard page, the guest's tests passing on the rerun). Either is a lab failure, not a test result:
# the watchdog below ends a locked-up L1, and the harness boots a fresh one, which runs only the
# files the ones before did not finish ($LAB/done).
LOCKUP_S=${CAPSULE_LAB_LOCKUP_S:-120}
case "$LOCKUP_S" in ''|*[!0-9]*) echo "kvm-tests: CAPSULE_LAB_LOCKUP_S must be whole seconds, got '$LOCKUP_S'" >&2; exit 2;; esac
# An L1 can also stop running its userspace with no lockup reported: both CPUs busy in the kernel
# or in an L2, and nothing moves (seen for 15 minutes, until the budget ran out). Its init writes
# a heartbeat into the lab folder every 10 s; when neither the heartbeat, nor the list of finished
# files, nor the console has changed for CAPSULE_LAB_HANG_S (600 s; counted from the boot before
# the first of them), the L1 is ended like a locked-up one. (The heartbeat alone is not enough: in
# one run it stood still for minutes while tests went on finishing, and L1's serial output stalled
# with it.)
HANG_S=${CAPSULE_LAB_HANG_S:-600}
case "$HANG_S" in ''|*[!0-9]*) echo "kvm-tests: CAPSULE_LAB_HANG_S must be whole seconds, got '$HANG_S'" >&2; exit 2;; esac
lab_hung() {
  local last=$t0 f m
  for f in "$LAB/heartbeat" "$LAB/done" "$LOG"; do
    m=$(stat -c %Y "$f" 2>/dev/null) || continue
    [ "$m" -gt "$last" ] && last=$m
  done
  [ $(( $(date +%s) - last )) -ge "$HANG_S" ]
}
# Only the L1 kernel's own line (at the start of a console line, with a timestamp): a test's
# failure message may quote a guest's console, lockup included.
lab_locked_up() { grep -aEo '^\[ *[0-9.]+\] watchdog: BUG: soft lockup - CPU#[0-9]+ stuck for [0-9]+s' "$LOG" 2>/dev/null | awk -v lim="$LOCKUP_S" '{ s = $NF; sub(/s$/, "", s); if (s + 0 >= lim) found = 1 } END { exit !found }'; }
boot_l1() {
  rm -f "$LAB/rc" "$LAB/lockup" "$LAB/heartbeat"
  say "booting L1 ($QEMU, -cpu ${CAPSULE_LAB_CPU:-EPYC}, ${#TESTS[@]} test file(s))"
  t0=$(date +%s)
  timeout --foreground -k 10 "$(lab_left)" "$QEMU" -accel tcg,thread=multi -cpu "${CAPSULE_LAB_CPU:-EPYC}" \
    -m "${CAPSULE_LAB_MEM:-4G}" -smp "${CAPSULE_LAB_SMP:-2}" -M pc -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "/boot/vmlinuz-$KVER" -initrd "$INITRD" -append "console=ttyS0 panic=-1 loglevel=3 nokaslr kt.lab=$LAB kt.repo=$ROOT" \
    -fsdev "local,id=lab,path=$LAB,security_model=none" -device virtio-9p-pci,fsdev=lab,mount_tag=lab \
    -fsdev "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev "local,id=repo,path=$ROOT,security_model=none,readonly=on,multidevs=remap" \
    -device virtio-9p-pci,fsdev=repo,mount_tag=repo -monitor "unix:$LAB/monitor.sock,server=on,wait=off" \
    </dev/null 2>"$LAB/qemu.err" > "$LOG" &
  local qpid=$!
  while kill -0 "$qpid" 2>/dev/null; do
    sleep 5
    local why=""
    if lab_locked_up; then why="the L1 kernel locked up (soft lockup >= ${LOCKUP_S}s)"
    elif lab_hung; then why="the L1 stopped (no heartbeat, finished file or console output for ${HANG_S}s)"
    fi
    if [ -n "$why" ]; then
      : > "$LAB/lockup"
      say "$why: ending this L1"
      pkill -KILL -P "$qpid" 2>/dev/null; kill -KILL "$qpid" 2>/dev/null
      break
    fi
  done
  wait "$qpid"
  qrc=$?
}
rm -f "$LAB/done" "$LOG".lockup*.txt
# A dead L1 (lockup or panic, no result) is a lab failure, not a test result: boot a fresh one for
# the files left, up to CAPSULE_LAB_BOOTS L1s in all, while the budget leaves 5 minutes. (In one CI
# run both of two L1s hit the same TCG fault: an interrupt taken right after VMRUN, with the
# guest's GS base still loaded, recursing in the page-fault handler until the stack guard page.)
BOOTS=${CAPSULE_LAB_BOOTS:-6}
case "$BOOTS" in ''|*[!0-9]*|0) echo "kvm-tests: CAPSULE_LAB_BOOTS must be a whole number >= 1, got '$BOOTS'" >&2; exit 2;; esac
# no result and not the budget's timeout: a lockup, a panic, a triple fault (QEMU -no-reboot exits)
l1_died() { [ -f "$LAB/lockup" ] || [ ! -f "$LAB/rc" ]; }
boot=1
boot_l1
while l1_died && [ "$qrc" != 124 ]; do
  tr -d '\r' < "$LOG" > "$LOG.lockup$boot.txt"
  say "L1 number $boot died or stopped (its console: $LOG.lockup$boot.txt); what it ran:"
  awk '/KVMTESTS_BEGIN/{on=1;next} /KVMTESTS_END/{on=0} on' "$LOG.lockup$boot.txt" | grep -v '^\[ *[0-9.]*\]'
  if [ "$boot" -ge "$BOOTS" ]; then
    say "$boot L1s died; no more (CAPSULE_LAB_BOOTS=$BOOTS)"; grep '^KVMTESTS:' "$LOG.lockup$boot.txt" >&2; exit 125
  fi
  if [ "$(lab_left)" -lt 300 ]; then
    say "only $(lab_left) s of the lab's ${TMO} s left: no fresh L1"; grep '^KVMTESTS:' "$LOG.lockup$boot.txt" >&2; exit 125
  fi
  boot=$((boot + 1))
  say "booting a fresh L1 (number $boot of at most $BOOTS) for the files left"
  boot_l1
done
tr -d '\r' < "$LOG" > "$LOG.txt"
if [ "${CAPSULE_LAB_VERBOSE:-0}" = 1 ]; then cat "$LOG.txt" >&2; fi
awk '/KVMTESTS_BEGIN/{on=1;next} /KVMTESTS_END/{on=0} on' "$LOG.txt"
grep '^KVMTESTS:' "$LOG.txt" >&2
say "L1 finished in $(( $(date +%s) - t0 )) s (qemu status $qrc; the lab took $(( $(date +%s) - LAB_T0 )) s)"
if [ "$qrc" = 124 ]; then say "TIMEOUT: the lab's budget of ${TMO}s is spent"; exit 124; fi
if [ -f "$LAB/lockup" ]; then say "the L1 kernel locked up"; exit 125; fi
if [ ! -f "$LAB/rc" ]; then say "the lab did not report a result; last console lines:"; tail -20 "$LOG.txt" >&2; exit 125; fi
exit "$(cat "$LAB/rc")"
