// A tiny AML (ACPI Machine Language) encoder: just what capsule's DSDT needs.

/** PkgLength encoding of a payload of `len` bytes (the encoding's own bytes included in the value). */
export function pkgLength(len: number): number[] {
  if (len + 1 < 64) return [len + 1];
  if (len + 2 < 1 << 12) {
    const v = len + 2;
    return [0x40 | (v & 0xf), (v >> 4) & 0xff];
  }
  if (len + 3 < 1 << 20) {
    const v = len + 3;
    return [0x80 | (v & 0xf), (v >> 4) & 0xff, (v >> 12) & 0xff];
  }
  const v = len + 4;
  return [0xc0 | (v & 0xf), (v >> 4) & 0xff, (v >> 12) & 0xff, (v >> 20) & 0xff];
}

const seg = (s: string): number[] => {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(s)) throw new Error(`bad AML name segment ${s}`);
  return [...s.padEnd(4, '_')].map((c) => c.charCodeAt(0));
};

/** NameString: "NAME", "\\NAME", "\\_SB_.PWRB" (two segments). */
export function nameString(n: string): number[] {
  const out: number[] = [];
  let s = n;
  if (s.startsWith('\\')) {
    out.push(0x5c);
    s = s.slice(1);
  }
  const parts = s.split('.');
  if (parts.length === 1) return [...out, ...seg(parts[0] as string)];
  if (parts.length === 2) return [...out, 0x2e, ...seg(parts[0] as string), ...seg(parts[1] as string)];
  return [...out, 0x2f, parts.length, ...parts.flatMap(seg)];
}

export function integer(v: number): number[] {
  if (v === 0) return [0x00];
  if (v === 1) return [0x01];
  if (v <= 0xff) return [0x0a, v];
  if (v <= 0xffff) return [0x0b, v & 0xff, v >> 8];
  return [0x0c, v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
}

export const name = (n: string, value: number[]): number[] => [0x08, ...nameString(n), ...value];
export const string = (s: string): number[] => [0x0d, ...[...s].map((c) => c.charCodeAt(0)), 0];
export const pkg = (elems: number[][]): number[] => {
  const body = [elems.length, ...elems.flat()];
  return [0x12, ...pkgLength(body.length), ...body];
};
export const scope = (n: string, body: number[][]): number[] => {
  const b = [...nameString(n), ...body.flat()];
  return [0x10, ...pkgLength(b.length), ...b];
};
export const device = (n: string, body: number[][]): number[] => {
  const b = [...nameString(n), ...body.flat()];
  return [0x5b, 0x82, ...pkgLength(b.length), ...b];
};
export const method = (n: string, args: number, serialized: boolean, body: number[][]): number[] => {
  const b = [...nameString(n), (args & 7) | (serialized ? 8 : 0), ...body.flat()];
  return [0x14, ...pkgLength(b.length), ...b];
};
export const buffer = (bytes: number[]): number[] => {
  const b = [...integer(bytes.length), ...bytes];
  return [0x11, ...pkgLength(b.length), ...b];
};
/** OperationRegion(name, space, offset, length); space 0 SystemMemory, 1 SystemIO. */
export const opRegion = (n: string, space: number, offset: number, len: number): number[] => [
  0x5b, 0x80, ...nameString(n), space, ...integer(offset), ...integer(len),
];
/** Field(region, ByteAcc, NoLock, Preserve) { name, bits, ... } */
export const field = (region: string, fields: Array<[string, number]>): number[] => {
  const b = [...nameString(region), 0x01, ...fields.flatMap(([n, bits]) => [...seg(n), ...pkgLength(bits - 1)])];
  return [0x5b, 0x81, ...pkgLength(b.length), ...b];
};
export const ifOp = (predicate: number[], body: number[][]): number[] => {
  const b = [...predicate, ...body.flat()];
  return [0xa0, ...pkgLength(b.length), ...b];
};
export const and = (a: number[], b: number[]): number[] => [0x7b, ...a, ...b, 0x00];
/** Store(source, destination) */
export const store = (src: number[], dst: number[]): number[] => [0x70, ...src, ...dst];
/** Local0 */
export const local0 = [0x60];
export const notify = (target: string, value: number): number[] => [0x86, ...nameString(target), ...integer(value)];
/** EISA id ("PNP0C0C") as the 32-bit integer the _HID encoding uses. */
export function eisaId(id: string): number {
  const c = (i: number): number => (id.charCodeAt(i) - 0x40) & 0x1f;
  const v = (c(0) << 26) | (c(1) << 21) | (c(2) << 16) | parseInt(id.slice(3), 16);
  // stored big-endian
  return (((v >>> 24) & 0xff) | (((v >>> 16) & 0xff) << 8) | (((v >>> 8) & 0xff) << 16) | ((v & 0xff) << 24)) >>> 0;
}
/** Extended interrupt descriptor (consumer, level or edge, active high, exclusive), no end tag. */
export function extendedInterrupt(gsi: number, edge = false): number[] {
  return [0x89, 6, 0, 0x01 | (edge ? 0x02 : 0), 1, gsi & 0xff, (gsi >> 8) & 0xff, (gsi >> 16) & 0xff, (gsi >>> 24) & 0xff];
}

/** Memory32Fixed descriptor (read-write), no end tag. */
export function memory32Fixed(base: number, len: number): number[] {
  const u32 = (v: number): number[] => [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
  return [0x86, 0x09, 0x00, 0x01, ...u32(base), ...u32(len)];
}

/** A resource template: the descriptors followed by the end tag (checksum 0: "treat as valid"). */
export function resourceTemplate(descriptors: number[][]): number[] {
  return [...descriptors.flat(), 0x79, 0x00];
}

/** Extended interrupt descriptor (consumer, level, active high, exclusive) + end tag. */
export function interruptResource(gsi: number): number[] {
  return resourceTemplate([extendedInterrupt(gsi)]);
}

/** I/O port range descriptor (16-bit decode) + IRQ descriptor (ISA style) + end tag. */
export function ioIrqResource(base: number, len: number, irq: number): number[] {
  return [
    0x47, 0x01, base & 0xff, base >> 8, base & 0xff, base >> 8, 0x00, len,
    0x22, (1 << irq) & 0xff, ((1 << irq) >> 8) & 0xff,
    0x79, 0x00,
  ];
}
