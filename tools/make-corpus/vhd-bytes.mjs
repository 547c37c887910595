// Byte writers and the spec's CHS algorithm shared by the VHD corpus scripts
// (written here by hand, independently of @img/vhd, so they can judge it).

export function u16(b, at, v) {
  b[at] = (v >> 8) & 0xff;
  b[at + 1] = v & 0xff;
}
export function u32(b, at, v) {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, v >>> 0, false);
}
export function u64(b, at, v) {
  const big = BigInt(v);
  u32(b, at, Number((big >> 32n) & 0xffffffffn));
  u32(b, at + 4, Number(big & 0xffffffffn));
}
export function ascii(b, at, s) {
  for (let i = 0; i < s.length; i++) b[at + i] = s.charCodeAt(i) & 0xff;
}

/** The spec's CHS algorithm (rounds down). */
export function chs(totalSectors) {
  const sectors = Math.min(totalSectors, 65535 * 16 * 255);
  let spt;
  let heads;
  let cth;
  if (sectors >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(sectors / spt);
  } else {
    spt = 17;
    cth = Math.floor(sectors / spt);
    heads = Math.max(Math.floor((cth + 1023) / 1024), 4);
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(sectors / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(sectors / spt);
    }
  }
  return { c: Math.floor(cth / heads), h: heads, s: spt };
}

export function utf16le(s) {
  const out = new Uint8Array(s.length * 2);
  for (let i = 0; i < s.length; i++) {
    out[i * 2] = s.charCodeAt(i) & 0xff;
    out[i * 2 + 1] = s.charCodeAt(i) >> 8;
  }
  return out;
}

/** The dynamic header's fixed fields at `h`: cookie, no next header, the BAT's offset and size, the block size. */
export function dynamicHeaderFields(b, h, { tableOffset, entries, blockSize }) {
  ascii(b, h, 'cxsparse');
  u64(b, h + 0x08, 0xffffffffffffffffn);
  u64(b, h + 0x10, tableOffset);
  u32(b, h + 0x18, 0x00010000);
  u32(b, h + 0x1c, entries);
  u32(b, h + 0x20, blockSize);
}
