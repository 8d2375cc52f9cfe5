// struct boot_params ("zero page") construction.
import type { BzImageHeader } from './bzimage.js';
import { CAN_USE_HEAP, HDR } from './bzimage.js';
import type { E820Entry } from './e820.js';

export const BOOT_PARAMS_SIZE = 4096;
export const BP = {
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  e820Table: 0x2d0,
  e820Max: 128,
} as const;

export interface BootParamsInput {
  image: BzImageHeader;
  cmdlineAddr: number;
  initrd?: { addr: number; size: number } | undefined;
  e820: E820Entry[];
  rsdpAddr?: number | undefined;
}

export function buildBootParams(inp: BootParamsInput): Uint8Array {
  const bp = new Uint8Array(BOOT_PARAMS_SIZE);
  const dv = new DataView(bp.buffer);
  bp.set(inp.image.header, HDR.setupSects);
  dv.setUint8(HDR.typeOfLoader, 0xff); // "undefined" boot loader id
  dv.setUint8(HDR.loadflags, inp.image.loadflags | CAN_USE_HEAP);
  dv.setUint16(HDR.heapEndPtr, 0xfe00 - 0x200, true);
  dv.setUint32(HDR.cmdLinePtr, inp.cmdlineAddr, true);
  dv.setUint32(BP.extCmdLinePtr, 0, true);
  if (inp.initrd) {
    dv.setUint32(HDR.ramdiskImage, inp.initrd.addr, true);
    dv.setUint32(HDR.ramdiskSize, inp.initrd.size, true);
  } else {
    dv.setUint32(HDR.ramdiskImage, 0, true);
    dv.setUint32(HDR.ramdiskSize, 0, true);
  }
  if (inp.rsdpAddr !== undefined) dv.setBigUint64(BP.acpiRsdpAddr, BigInt(inp.rsdpAddr), true);
  if (inp.e820.length > BP.e820Max) throw new RangeError('too many e820 entries');
  dv.setUint8(BP.e820Entries, inp.e820.length);
  inp.e820.forEach((e, i) => {
    const o = BP.e820Table + i * 20;
    dv.setBigUint64(o, BigInt(e.addr), true);
    dv.setBigUint64(o + 8, BigInt(e.size), true);
    dv.setUint32(o + 16, e.type, true);
  });
  return bp;
}
