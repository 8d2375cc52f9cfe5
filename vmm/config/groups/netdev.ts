// -netdev id=ID,netdev=TAPNAME|fd=NAME[,mac=MAC][,iothread=ID][,vhost=on|off]  (virtio-net, repeatable)
// JSON "net": [{"iface_id", "host_dev_name" | "fd", "mac", "iothread", "vhost_type": "vhost-kernel"}]
import * as z from 'zod';
import { ConfigError, id, KeyTable, mac, onOff, text, type Source, type Values } from '../options.js';
import { defineGroup } from '../group.js';
import { append } from '../settings.js';
import type { NetConfig } from '../types.js';

/** IFNAMSIZ (16) less the NUL */
const IFNAME_MAX = 15;

const vhost = onOff({ cli: 'vhost', json: 'vhost_type' });

export const NETDEV_KEYS = new KeyTable({
  id: id({ cli: 'id', json: 'iface_id', required: true }),
  ifname: text({
    cli: 'netdev', json: 'host_dev_name', metavar: 'TAPNAME',
    expect: `a tap interface name of 1-${IFNAME_MAX} characters without '/', ':' or spaces`, valid: (s) => new RegExp(`^[^/:\\s]{1,${IFNAME_MAX}}$`).test(s),
  }),
  fd: text({ cli: 'fd', metavar: 'NAME' }),
  mac: mac({ cli: 'mac' }),
  iothread: id({ cli: 'iothread' }),
  // the guidebook's JSON says which vhost: only the kernel's exists here
  vhost: { ...vhost, jsonType: z.literal('vhost-kernel').transform(() => true) },
});

type NetValues = Values<typeof NETDEV_KEYS.keys>;

function toNet(v: NetValues, src: Source<typeof NETDEV_KEYS.keys>): NetConfig {
  if ((v.ifname === undefined) === (v.fd === undefined)) {
    throw new ConfigError(`${src.where}: needs exactly one of ${src.key('ifname')} and ${src.key('fd')}`);
  }
  return { id: v.id, ifname: v.ifname, fd: v.fd, mac: v.mac, iothread: v.iothread, vhost: v.vhost ?? false };
}

export const netdevGroup = defineGroup({
  options: [{ name: '-netdev', syntax: NETDEV_KEYS.syntax(), help: 'virtio-net on a host tap (repeatable; exactly one of netdev= and fd=)', takes: 'value' }],
  json: { net: z.array(NETDEV_KEYS.jsonObject()) },
  fromCli(option, value, s) {
    s.nets = append(s.nets, toNet(NETDEV_KEYS.parseKv(option.name, value ?? ''), NETDEV_KEYS.cliSource(option.name)));
  },
  fromJson(j, s, at) {
    if (j.net) s.nets = j.net.map((n, i) => toNet(NETDEV_KEYS.fromJson(n), NETDEV_KEYS.jsonSource(at(`net.${i}`))));
  },
});
