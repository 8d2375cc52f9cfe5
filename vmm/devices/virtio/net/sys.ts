// Numbers and struct layouts virtio-net needs from <linux/if_tun.h>, <linux/if.h>,
// <linux/virtio_net.h> and <linux/vhost.h> (x86_64). Every value here is printed by
// vmm/kvm/fixtures/layout.c and compared with the C headers in vmm/kvm/layout.test.ts.
import { _IO, _IOR, _IOW, _IOWR } from '../../../kvm/ioctls.js';

// ---- tun/tap ---------------------------------------------------------------------------------
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
/** IFNAMSIZ: interface names are at most 15 characters and a NUL */
export const IFNAMSIZ = 16;

// TUNSETOFFLOAD flags: what the reader of the tap (we, for the guest) can take
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_UFO = 0x10;

const TUNIO = 0x54; // 'T'
export const TUNSETIFF = _IOW(TUNIO, 202, 4);
export const TUNGETFEATURES = _IOR(TUNIO, 207, 4);
export const TUNSETOFFLOAD = _IOW(TUNIO, 208, 4);
export const TUNGETIFF = _IOR(TUNIO, 210, 4);
export const TUNGETVNETHDRSZ = _IOR(TUNIO, 215, 4);
export const TUNSETVNETHDRSZ = _IOW(TUNIO, 216, 4);

// ---- virtio-net (virtio 1.2, 5.1) -------------------------------------------------------------
/** Feature bit numbers (5.1.3). */
export const NET_F = {
  CSUM: 0, GUEST_CSUM: 1, CTRL_GUEST_OFFLOADS: 2, MTU: 3, MAC: 5, GUEST_TSO4: 7, GUEST_TSO6: 8, GUEST_ECN: 9,
  GUEST_UFO: 10, HOST_TSO4: 11, HOST_TSO6: 12, HOST_ECN: 13, HOST_UFO: 14, MRG_RXBUF: 15, STATUS: 16, CTRL_VQ: 17,
} as const;
export const VIRTIO_NET_F_CSUM = NET_F.CSUM;
export const VIRTIO_NET_F_GUEST_CSUM = NET_F.GUEST_CSUM;
export const VIRTIO_NET_F_MAC = NET_F.MAC;
export const VIRTIO_NET_F_GUEST_TSO4 = NET_F.GUEST_TSO4;
export const VIRTIO_NET_F_GUEST_TSO6 = NET_F.GUEST_TSO6;
export const VIRTIO_NET_F_GUEST_ECN = NET_F.GUEST_ECN;
export const VIRTIO_NET_F_GUEST_UFO = NET_F.GUEST_UFO;
export const VIRTIO_NET_F_HOST_TSO4 = NET_F.HOST_TSO4;
export const VIRTIO_NET_F_HOST_TSO6 = NET_F.HOST_TSO6;
export const VIRTIO_NET_F_HOST_ECN = NET_F.HOST_ECN;
export const VIRTIO_NET_F_MRG_RXBUF = NET_F.MRG_RXBUF;
export const VIRTIO_NET_F_STATUS = NET_F.STATUS;
/** virtio_net_config.status */
export const VIRTIO_NET_S_LINK_UP = 1;
/** virtio_net_hdr.flags / gso_type */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

// ---- vhost (<linux/vhost.h>, <linux/vhost_types.h>) -------------------------------------------
const VHOST_VIRTIO = 0xaf;
export const VHOST_GET_FEATURES = _IOR(VHOST_VIRTIO, 0x00, 8);
export const VHOST_SET_FEATURES = _IOW(VHOST_VIRTIO, 0x00, 8);
export const VHOST_SET_OWNER = _IO(VHOST_VIRTIO, 0x01);
export const VHOST_SET_MEM_TABLE = _IOW(VHOST_VIRTIO, 0x03, 8);
export const VHOST_SET_VRING_NUM = _IOW(VHOST_VIRTIO, 0x10, 8);
export const VHOST_SET_VRING_ADDR = _IOW(VHOST_VIRTIO, 0x11, 40);
export const VHOST_SET_VRING_BASE = _IOW(VHOST_VIRTIO, 0x12, 8);
export const VHOST_GET_VRING_BASE = _IOWR(VHOST_VIRTIO, 0x12, 8);
export const VHOST_SET_VRING_KICK = _IOW(VHOST_VIRTIO, 0x20, 8);
export const VHOST_SET_VRING_CALL = _IOW(VHOST_VIRTIO, 0x21, 8);
export const VHOST_NET_SET_BACKEND = _IOW(VHOST_VIRTIO, 0x30, 8);
export const VHOST_FILE_UNBIND = -1;

/** Every ioctl above by its C name, for the fixture test. */
export const NET_IOCTLS: Record<string, number> = {
  TUNSETIFF, TUNGETFEATURES, TUNSETOFFLOAD, TUNGETIFF, TUNGETVNETHDRSZ, TUNSETVNETHDRSZ,
  VHOST_GET_FEATURES, VHOST_SET_FEATURES, VHOST_SET_OWNER, VHOST_SET_MEM_TABLE, VHOST_SET_VRING_NUM,
  VHOST_SET_VRING_ADDR, VHOST_SET_VRING_BASE, VHOST_GET_VRING_BASE, VHOST_SET_VRING_KICK, VHOST_SET_VRING_CALL,
  VHOST_NET_SET_BACKEND,
};

export const NET_SIZEOF: Record<string, number> = {
  ifreq: 40,
  /** with VIRTIO_F_VERSION_1 the header always has num_buffers: 12 bytes, the tap's vnet header size */
  virtio_net_hdr_v1: 12,
  virtio_net_hdr: 10,
  vhost_vring_state: 8,
  vhost_vring_file: 8,
  vhost_vring_addr: 40,
  vhost_memory: 8,
  vhost_memory_region: 32,
};

export const NET_OFFSETOF: Record<string, number> = {
  'ifreq.ifr_name': 0, 'ifreq.ifr_flags': 16,
  'virtio_net_hdr_v1.flags': 0, 'virtio_net_hdr_v1.gso_type': 1, 'virtio_net_hdr_v1.hdr_len': 2,
  'virtio_net_hdr_v1.gso_size': 4, 'virtio_net_hdr_v1.csum_start': 6, 'virtio_net_hdr_v1.csum_offset': 8,
  'virtio_net_hdr_v1.num_buffers': 10,
  'virtio_net_config.mac': 0, 'virtio_net_config.status': 6, 'virtio_net_config.max_virtqueue_pairs': 8,
  'vhost_vring_state.index': 0, 'vhost_vring_state.num': 4,
  'vhost_vring_file.index': 0, 'vhost_vring_file.fd': 4,
  'vhost_vring_addr.index': 0, 'vhost_vring_addr.flags': 4, 'vhost_vring_addr.desc_user_addr': 8,
  'vhost_vring_addr.used_user_addr': 16, 'vhost_vring_addr.avail_user_addr': 24, 'vhost_vring_addr.log_guest_addr': 32,
  'vhost_memory.nregions': 0, 'vhost_memory.regions': 8,
  'vhost_memory_region.guest_phys_addr': 0, 'vhost_memory_region.memory_size': 8,
  'vhost_memory_region.userspace_addr': 16, 'vhost_memory_region.flags_padding': 24,
};

/** The virtio-net header size with VIRTIO_F_VERSION_1 (the tap's vnet header size). */
export const NET_HDR_SIZE = NET_SIZEOF.virtio_net_hdr_v1 as number;
