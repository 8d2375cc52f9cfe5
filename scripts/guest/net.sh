# capsule guest: network set-up from the kernel command line, sourced by PID 1 of every image
# (busybox sh; ip and udhcpc are busybox applets).
#   capsule.ip=ADDR/PREFIX[,GATEWAY[,DNS]]   static address on eth0 (or capsule.if=NAME)
#   capsule.ip=dhcp                          udhcpc on eth0, in the background
# Without capsule.ip= only lo is up; `udhcpc -i eth0` by hand uses the same event script.

# capsule_net CMDLINE
capsule_net() {
  ip link set lo up
  cn_ip= cn_if=eth0
  for a in $1; do
    case "$a" in
      capsule.ip=*) cn_ip=${a#capsule.ip=} ;;
      capsule.if=*) cn_if=${a#capsule.if=} ;;
    esac
  done
  [ -n "$cn_ip" ] || return 0
  ip link set "$cn_if" up 2>/dev/null || { echo "capsule: no network interface $cn_if"; return 0; }
  if [ "$cn_ip" = dhcp ]; then
    udhcpc -i "$cn_if" -s /usr/share/udhcpc/default.script -b -q >/dev/null 2>&1
    return 0
  fi
  IFS=, read -r cn_addr cn_gw cn_dns <<CN
$cn_ip
CN
  ip addr add "$cn_addr" dev "$cn_if"
  [ -n "$cn_gw" ] && ip route add default via "$cn_gw" dev "$cn_if"
  [ -n "$cn_dns" ] && echo "nameserver $cn_dns" > /etc/resolv.conf
  return 0
}
