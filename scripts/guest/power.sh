# capsule guest: clean power-off and reboot, sourced by PID 1 of every image (busybox sh).
#
# busybox poweroff, reboot and halt (without -f) signal PID 1: USR2, TERM and USR1. The ACPI
# power button (QMP system_powerdown: the server's clean stop) is read from its evdev device
# and does what poweroff does. Before the VM goes:
#   CAPSULE_STOP_GRACE  tenths of a second other processes get between TERM and KILL (0: none)
#   CAPSULE_RO_MOUNTS   mount points remounted read-only after the final sync

# True while a process other than PID 1 is left (kernel threads and zombies have no exe).
capsule_others() {
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" != 1 ] && [ -e "$p/exe" ] && return 0
  done
  return 1
}

# capsule_down poweroff|reboot
capsule_down() {
  trap '' USR1 USR2 TERM
  if [ "${CAPSULE_STOP_GRACE:-0}" -gt 0 ]; then
    kill -TERM -1 2>/dev/null
    n=0
    while [ "$n" -lt "$CAPSULE_STOP_GRACE" ] && capsule_others; do sleep 0.1; n=$((n + 1)); done
    kill -KILL -1 2>/dev/null
  fi
  sync
  for m in ${CAPSULE_RO_MOUNTS:-}; do mount -o remount,ro "$m" 2>/dev/null; done
  sync
  "$1" -f
}

trap 'capsule_down poweroff' USR2 USR1
trap 'capsule_down reboot' TERM

# One watcher per power button: a key press signals PID 1.
capsule_watch_power_button() {
  for e in /sys/class/input/event*; do
    [ -e "$e/device/name" ] || continue
    if grep -q 'Power Button' "$e/device/name"; then
      (head -c 1 "/dev/input/${e##*/}" >/dev/null && echo 'capsule: power button' && kill -USR2 1) &
    fi
  done
}
