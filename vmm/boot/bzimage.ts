// bzImage (Linux x86 boot protocol) header parsing and validation.
// See Documentation/arch/x86/boot.rst: the setup header lives at 0x1f1 in the file.

export class KernelImageError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'KernelImageError';
  }
}

export const HDR = {
  setupSects: 0x1f1,
  syssize: 0x1f4,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  code32Start: 0x214,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;

export const LOADED_HIGH = 0x01;
export const CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;
const HDRS_MAGIC = 0x53726448; // "HdrS"
const MIN_VERSION = 0x020c; // 2.12: xloadflags (64-bit entry)

export interface BzImageHeader {
  version: number;
  /** where the protected-mode kernel (what goes at 1 MiB) starts in the file: it runs to the end */
  setupSize: number;
  /** its length */
  payloadSize: number;
  /** setup header bytes as they appear from 0x1f1 up to the end the header says it has */
  header: Uint8Array;
  loadflags: number;
  xloadflags: number;
  relocatable: boolean;
  initrdAddrMax: number;
  cmdlineSize: number;
  initSize: number;
  prefAddress: bigint;
  kernelAlignment: number;
}

export interface BzImage extends BzImageHeader {
  /** protected-mode kernel (what goes at 1 MiB) */
  payload: Uint8Array;
}

/** The bytes the header needs to be read from: the boot sector and the setup header. */
export const BZIMAGE_HEAD_BYTES = 0x280;

export function parseBzImage(file: Uint8Array): BzImage {
  const h = parseBzImageHeader(file.subarray(0, BZIMAGE_HEAD_BYTES), file.length);
  return { ...h, payload: file.subarray(h.setupSize) };
}

/**
 * The header of a bzImage of `fileSize` bytes from its first bytes (`head`, up to
 * BZIMAGE_HEAD_BYTES): what loading needs without the whole file in memory.
 */
export function parseBzImageHeader(head: Uint8Array, fileSize: number): BzImageHeader {
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (fileSize < 0x270 || head.length < 0x270) throw new KernelImageError(`kernel image truncated (${fileSize} bytes, not a bzImage)`);
  if (dv.getUint16(HDR.bootFlag, true) !== 0xaa55) throw new KernelImageError('not a bzImage: boot flag 0xaa55 missing');
  if (dv.getUint32(HDR.header, true) !== HDRS_MAGIC) throw new KernelImageError('not a bzImage: "HdrS" magic missing');
  const version = dv.getUint16(HDR.version, true);
  if (version < MIN_VERSION) {
    throw new KernelImageError(`boot protocol ${version >> 8}.${version & 0xff} too old (need 2.12 for the 64-bit entry)`);
  }
  const loadflags = dv.getUint8(HDR.loadflags);
  if (!(loadflags & LOADED_HIGH)) throw new KernelImageError('kernel is not loaded high (zImage): unsupported');
  const xloadflags = dv.getUint16(HDR.xloadflags, true);
  if (!(xloadflags & XLF_KERNEL_64)) throw new KernelImageError('kernel has no 64-bit entry point (XLF_KERNEL_64)');
  let setupSects = dv.getUint8(HDR.setupSects);
  if (setupSects === 0) setupSects = 4;
  const setupSize = (setupSects + 1) * 512;
  const syssize = dv.getUint32(HDR.syssize, true) * 16;
  if (setupSize >= fileSize) throw new KernelImageError('kernel image truncated: no protected-mode kernel after the setup code');
  if (syssize === 0 || setupSize + syssize > fileSize) {
    throw new KernelImageError(`kernel image truncated: header says ${setupSize + syssize} bytes, file has ${fileSize}`);
  }
  // header length: 0x202 + the jump's 8-bit displacement (byte at 0x201)
  const hdrEnd = Math.min(0x202 + dv.getUint8(0x201), 0x280);
  return {
    version,
    setupSize,
    payloadSize: fileSize - setupSize,
    header: head.slice(HDR.setupSects, hdrEnd),
    loadflags,
    xloadflags,
    relocatable: dv.getUint8(HDR.relocatableKernel) !== 0,
    initrdAddrMax: dv.getUint32(HDR.initrdAddrMax, true),
    cmdlineSize: dv.getUint32(HDR.cmdlineSize, true),
    initSize: dv.getUint32(HDR.initSize, true),
    prefAddress: dv.getBigUint64(HDR.prefAddress, true),
    kernelAlignment: dv.getUint32(HDR.kernelAlignment, true),
  };
}
