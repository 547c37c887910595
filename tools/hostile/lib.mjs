// Small helpers of the hostile-input campaign: a seeded generator, byte
// views, the VHD checksums and a ustar writer for hand-built OVAs.

/**
 * A campaign's command line: `--name value` for each key of `defaults`
 * (values come back as strings), `--keep` as a flag, `--help` prints
 * `usage` and exits 0; anything else is one line on stderr and exit 2.
 */
export function campaignArgs(defaults, usage, argv = process.argv.slice(2)) {
  const a = { ...defaults, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i].replace(/^--?/, '');
    if (k === 'help' || k === 'h') {
      process.stdout.write(usage);
      process.exit(0);
    }
    if (k === 'keep') a.keep = true;
    else if (!argv[i].startsWith('--') || !(k in a) || i + 1 >= argv.length) {
      process.stderr.write(`campaign: unknown option or missing value: ${argv[i]} (--help lists them)\n`);
      process.exit(2);
    } else a[k] = argv[++i];
  }
  return a;
}

/** mulberry32: a seeded generator in [0, 1); the same seed gives the same cases. */
export function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  next.int = (n) => Math.floor(next() * n);
  next.pick = (list) => list[Math.floor(next() * list.length)];
  next.chance = (p) => next() < p;
  return next;
}

/** The seed of case `i` of a campaign seeded `seed`: cases are reproducible one by one. */
export function caseSeed(seed, i) {
  return (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0;
}

export const dv = (b) => new DataView(b.buffer, b.byteOffset, b.byteLength);

/** Writes a u64 (number or bigint) big- or little-endian. */
const big = (v) => (typeof v === 'bigint' ? v : BigInt(Math.floor(Number(v) || 0)));
export function setU64(b, at, v, little) {
  if (!(at >= 0) || at + 8 > b.length) return;
  dv(b).setBigUint64(at, BigInt.asUintN(64, big(v)), little);
}
export function setU32(b, at, v, little) {
  if (!(at >= 0) || at + 4 > b.length) return;
  dv(b).setUint32(at, Number(BigInt.asUintN(32, big(v))), little);
}
export function getU32(b, at, little) {
  return at >= 0 && at + 4 <= b.length ? dv(b).getUint32(at, little) : 0;
}
export function getU64(b, at, little) {
  return at >= 0 && at + 8 <= b.length ? Number(dv(b).getBigUint64(at, little)) : 0;
}

/** Integers that break size and offset arithmetic. */
export const NASTY64 = [0n, 1n, 2n, 0x7fn, 0x200n, 0xffffffffn, 0x100000000n, 1n << 40n, (1n << 53n) - 1n, 1n << 53n, (1n << 53n) + 1n, 1n << 62n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 512n];
export const NASTY32 = [0, 1, 2, 3, 0x7f, 0x80, 0xff, 0x200, 0x1000, 0x10000, 0x200000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

/** A value near `v` or a nasty one. */
export function nastyNear(r, v, bits) {
  const k = r();
  if (k < 0.35) return bits === 64 ? r.pick(NASTY64) : r.pick(NASTY32);
  if (k < 0.5) return BigInt(Math.max(0, v + r.pick([-512, -1, 1, 512, 4096])));
  if (k < 0.6) return BigInt(v) * 2n;
  if (k < 0.7) return BigInt(Math.floor(v / 2));
  if (k < 0.85) return BigInt(r.int(0x100000000));
  return BigInt(r.int(0x10000));
}

/** VHD footer checksum: one's complement of the byte sum, the checksum field (64..67) left out. */
export function vhdFooterChecksum(b, at) {
  let s = 0;
  for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) s += b[at + i] ?? 0;
  return ~s >>> 0;
}
/** VHD dynamic header checksum (1024 bytes, field 36..39 left out). */
export function vhdHeaderChecksum(b, at) {
  let s = 0;
  for (let i = 0; i < 1024; i++) if (i < 36 || i >= 40) s += b[at + i] ?? 0;
  return ~s >>> 0;
}

const enc = new TextEncoder();

/** One ustar header block; `fields` may lie (size, type) on purpose. */
export function tarHeader({ name, size, type = '0', prefix = '', magic = 'ustar\u000000', mode = '0000644', badChecksum = false, base256Size }) {
  const h = new Uint8Array(512);
  const put = (at, len, s) => h.set(enc.encode(s).subarray(0, len), at);
  put(0, 100, name);
  put(100, 8, mode + '\0');
  put(108, 8, '0000000\0');
  put(116, 8, '0000000\0');
  if (base256Size !== undefined) {
    h[124] = 0x80;
    let v = BigInt(base256Size);
    for (let i = 135; i > 124; i--) {
      h[i] = Number(v & 0xffn);
      v >>= 8n;
    }
  } else put(124, 12, size.toString(8).padStart(11, '0') + '\0');
  put(136, 12, '00000000000\0');
  h.fill(0x20, 148, 156);
  h[156] = type.charCodeAt(0);
  put(257, 8, magic);
  put(345, 155, prefix);
  let sum = 0;
  for (const x of h) sum += x;
  if (badChecksum) sum += 1;
  put(148, 8, sum.toString(8).padStart(6, '0') + '\0 ');
  return h;
}

/** Recomputes the checksum of the tar header at `at` (after a mutation). */
export function fixTarChecksum(b, at) {
  if (at + 512 > b.length) return;
  b.fill(0x20, at + 148, at + 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += b[at + i];
  b.set(enc.encode(sum.toString(8).padStart(6, '0') + '\0 '), at + 148);
}

export function pad512(n) {
  return Math.ceil(n / 512) * 512;
}

/** A pax extended header member holding `records` ({ key: value }). */
export function paxMember(records, name = 'PaxHeader') {
  let body = '';
  for (const [k, v] of Object.entries(records)) {
    const rec = ` ${k}=${v}\n`;
    let len = rec.length + 1;
    while (String(len).length + rec.length !== len) len = String(len).length + rec.length;
    body += `${len}${rec}`;
  }
  const data = enc.encode(body);
  return [tarHeader({ name, size: data.length, type: 'x' }), padded(data)];
}

export function padded(data) {
  const out = new Uint8Array(pad512(data.length));
  out.set(data);
  return out;
}

/** A tar of `members` ([{ name, data, type?, sizeLie?, ... }]) with two zero blocks at the end unless `noEnd`. */
export function buildTar(members, { noEnd = false } = {}) {
  const parts = [];
  for (const m of members) {
    if (m.raw) {
      parts.push(m.raw);
      continue;
    }
    const data = m.data ?? new Uint8Array(0);
    if (m.pax) parts.push(...paxMember(m.pax));
    if (m.longName) {
      const ln = enc.encode(m.longName + '\0');
      parts.push(tarHeader({ name: '././@LongLink', size: ln.length, type: 'L' }), padded(ln));
    }
    parts.push(tarHeader({ name: m.name, size: m.sizeLie ?? data.length, type: m.type ?? '0', prefix: m.prefix ?? '', ...(m.base256Size !== undefined ? { base256Size: m.base256Size } : {}) }));
    parts.push(padded(data));
  }
  if (!noEnd) parts.push(new Uint8Array(1024));
  return concat(parts);
}

/** Joins byte arrays into a new Uint8Array of its own (not a view into Buffer's pool). */
export function concat(parts) {
  return new Uint8Array(Buffer.concat(parts));
}

/** Members of a well-formed tar: [{ name, headerAt, dataAt, size }]. */
export function listTar(b) {
  const out = [];
  let pos = 0;
  while (pos + 512 <= b.length) {
    const h = b.subarray(pos, pos + 512);
    if (h.every((x) => x === 0)) break;
    let end = 0;
    while (end < 100 && h[end] !== 0) end++;
    const name = new TextDecoder().decode(h.subarray(0, end));
    const size = parseInt(new TextDecoder().decode(h.subarray(124, 135)), 8) || 0;
    out.push({ name, type: String.fromCharCode(h[156]), headerAt: pos, dataAt: pos + 512, size, data: b.slice(pos + 512, pos + 512 + size) });
    pos += 512 + pad512(size);
  }
  return out;
}
