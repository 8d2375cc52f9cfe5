// Numbers from the virtio 1.2 specification that the transport, the queues and the devices share.

/** Device IDs (spec 5). */
export const DEVICE_ID = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  RNG: 4,
  BALLOON: 5,
  VSOCK: 19,
  PMEM: 27,
} as const;

/** Device status bits (spec 2.1). */
export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Reserved feature bits (spec 6) as bigint masks. */
export const F_RING_INDIRECT_DESC = 1n << 28n;
export const F_RING_EVENT_IDX = 1n << 29n;
export const F_VERSION_1 = 1n << 32n;
/** Offered by every device: the transport handles these itself. */
export const TRANSPORT_FEATURES = F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX;

/** Split virtqueue descriptor flags (spec 2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags: the driver asks for no interrupts (without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device asks for no notifications (without EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** InterruptStatus bits (spec 4.2.2). */
export const INT_USED_RING = 1;
export const INT_CONFIG_CHANGE = 2;

/** The largest queue any of our devices offers (a power of two, as split rings need). */
export const MAX_QUEUE_SIZE = 1024;
