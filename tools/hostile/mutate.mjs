// Structure-aware mutations of VHD, VMDK (sparse extents and descriptors)
// and OVA bytes. Each mutator returns the damaged bytes and a short note of
// what it did, so a failing case says what was broken.
import { deflateSync } from 'node:zlib';
import { buildTar, concat, fixTarChecksum, getU32, getU64, listTar, nastyNear, NASTY32, NASTY64, setU32, setU64, vhdFooterChecksum, vhdHeaderChecksum } from './lib.mjs';

/** Where an untrusted open must never look: the campaign watches this file. */
export const TRAP = '/tmp/fuzzv/trap.vmdk';

/** Random byte edits, biased to the first 64 KiB and the last 1.5 KiB (where VHD and VMDK keep metadata). */
export function randomBytes(b, r) {
  const out = b.slice();
  const n = 1 + r.int(8);
  for (let i = 0; i < n; i++) {
    const k = r();
    const at = k < 0.5 ? r.int(Math.min(out.length, 65536)) : k < 0.75 ? Math.max(0, out.length - 1536 + r.int(1536)) : r.int(out.length);
    const m = r();
    if (m < 0.4) out[at] ^= 1 << r.int(8);
    else if (m < 0.7) out[at] = r.pick([0, 0xff, 0x7f, 0x80]);
    else if (m < 0.85) setU32(out, at & ~3, r.pick(NASTY32), r.chance(0.5));
    else setU64(out, at & ~7, r.pick(NASTY64), r.chance(0.5));
  }
  return { bytes: out, note: `${n} random byte edits` };
}

/** Cuts the file short or grows it. */
export function resize(b, r) {
  const k = r();
  if (k < 0.6) {
    const n = r.chance(0.5) ? r.int(b.length) : Math.max(0, b.length - r.pick([1, 511, 512, 513, 1024, 1536, 65536]));
    return { bytes: b.slice(0, n), note: `truncated to ${n}` };
  }
  const extra = r.pick([1, 511, 512, 4096]);
  return { bytes: concat([b, new Uint8Array(extra).fill(r.chance(0.5) ? 0 : 0xa5)]), note: `grown by ${extra}` };
}

// ---------------------------------------------------------------- VHD

const FOOTER_FIELDS = [
  ['cookie', 0, 8],
  ['features', 8, 4],
  ['version', 12, 4],
  ['dataOffset', 16, 8],
  ['timestamp', 24, 4],
  ['creatorApp', 28, 4],
  ['originalSize', 40, 8],
  ['currentSize', 48, 8],
  ['geometry', 56, 4],
  ['diskType', 60, 4],
  ['checksum', 64, 4],
  ['savedState', 84, 1],
];
const HEADER_FIELDS = [
  ['cookie', 0, 8],
  ['dataOffset', 8, 8],
  ['tableOffset', 16, 8],
  ['headerVersion', 24, 4],
  ['maxTableEntries', 28, 4],
  ['blockSize', 32, 4],
  ['checksum', 36, 4],
  ['parentTimestamp', 56, 4],
  ['parentUnicodeName', 64, 8],
];

function setField(b, at, size, v, little) {
  if (size === 8) setU64(b, at, v, little);
  else if (size === 4) setU32(b, at, v, little);
  else if (at < b.length) b[at] = Number(BigInt.asUintN(8, BigInt(v)));
}
function getField(b, at, size, little) {
  return size === 8 ? getU64(b, at, little) : size === 4 ? getU32(b, at, little) : (b[at] ?? 0);
}

/** Parses what the mutator needs of a VHD: footer, dynamic header, BAT. */
function vhdLayout(b) {
  const footerAt = b.length - 512;
  const type = getU32(b, footerAt + 60, false);
  const dataOffset = getU64(b, footerAt + 16, false);
  const L = { footerAt, type, headerAt: -1, batAt: -1, entries: 0, blockSize: 0 };
  if ((type === 3 || type === 4) && dataOffset + 1024 <= b.length) {
    L.headerAt = dataOffset;
    L.batAt = getU64(b, dataOffset + 16, false);
    L.entries = getU32(b, dataOffset + 28, false);
    L.blockSize = getU32(b, dataOffset + 32, false);
    if (L.batAt + L.entries * 4 > b.length) L.entries = Math.max(0, Math.floor((b.length - L.batAt) / 4));
  }
  return L;
}

export function mutateVhd(input, r) {
  const b = input.slice();
  const L = vhdLayout(b);
  const notes = [];
  const fixFooters = r.chance(0.85);
  const n = 1 + r.int(3);
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.25 || L.headerAt < 0) {
      const [name, off, size] = r.pick(FOOTER_FIELDS);
      const v = name === 'diskType' ? BigInt(r.pick([0, 1, 2, 3, 4, 5, 6, 0xffffffff])) : nastyNear(r, getField(b, L.footerAt + off, size, false), size * 8);
      const which = L.headerAt >= 0 ? r.pick(['both', 'tail', 'head']) : 'tail';
      if (which !== 'head') setField(b, L.footerAt + off, size, v, false);
      if (which !== 'tail') setField(b, off, size, v, false);
      notes.push(`footer ${name}=${v} (${which})`);
    } else if (k < 0.45) {
      const [name, off, size] = r.pick(HEADER_FIELDS);
      const v = name === 'blockSize' ? BigInt(r.pick([0, 512, 4096, 0x200000, 0x200001, 0x80000000, 0xffffffff, 1 << 28])) : nastyNear(r, getField(b, L.headerAt + off, size, false), size * 8);
      setField(b, L.headerAt + off, size, v, false);
      notes.push(`header ${name}=${v}`);
    } else if (k < 0.7 && L.entries > 0) {
      const e = r.int(L.entries);
      const fileSectors = Math.floor(b.length / 512);
      const other = getU32(b, L.batAt + 4 * r.int(L.entries), false);
      const choices = [fileSectors, fileSectors + 1, fileSectors - 1, 0, 1, L.headerAt / 512, Math.floor(L.batAt / 512), other, other + 1, 0xffffffff, 0xfffffffe, r.int(fileSectors + 8)];
      const v = r.pick(choices);
      setU32(b, L.batAt + 4 * e, v, false);
      notes.push(`BAT[${e}]=${v}`);
    } else if (k < 0.8 && L.entries > 0) {
      const allocated = [];
      for (let e = 0; e < L.entries && allocated.length < 64; e++) if (getU32(b, L.batAt + 4 * e, false) !== 0xffffffff) allocated.push(e);
      if (allocated.length) {
        const e = r.pick(allocated);
        const at = getU32(b, L.batAt + 4 * e, false) * 512;
        const fill = r.pick([0, 0xff, 0x5a]);
        const len = Math.min(512, Math.max(0, b.length - at));
        if (len > 0) b.fill(fill, at, at + 1 + r.int(len));
        notes.push(`bitmap of block ${e} filled ${fill}`);
      }
    } else if (k < 0.93 && L.headerAt >= 0) {
      const j = r.int(8);
      const at = L.headerAt + 576 + 24 * j;
      const code = r.pick([0x57326b75 /* W2ku */, 0x5732726b /* W2rk? */, 0x57327275 /* W2ru */, 0x4d616320 /* Mac */, 0x4d616358 /* MacX */, 0, 0x12345678]);
      setU32(b, at, code, false);
      setU32(b, at + 4, r.pick([1, 512, 0x10000, 0xffffffff]), false);
      setU32(b, at + 8, r.pick([0, 1, 6, 511, 512, 513, 0x100000, 0xffffffff]), false);
      const dataAt = r.pick([L.headerAt + 1024, 0, b.length - 512, b.length, b.length + 512, 2 ** 40, Math.max(0, b.length - 2048)]);
      setU64(b, at + 16, dataAt, false);
      if (dataAt + 512 <= b.length && r.chance(0.6)) {
        const path = r.pick([TRAP, '../../etc/passwd', 'file:///etc/passwd', '.\\..\\x.vhd', 'a'.repeat(300), 'p.vhd', '\ud800x']);
        const data = code === 0x57326b75 || code === 0x57327275 ? Buffer.from(path, 'utf16le') : Buffer.from(path, 'utf8');
        b.set(data.subarray(0, 512), dataAt);
      }
      notes.push(`parent locator ${j} code ${code.toString(16)} data at ${dataAt}`);
    } else {
      const m = randomBytes(b, r);
      b.set(m.bytes);
      notes.push(m.note);
    }
  }
  if (fixFooters) {
    setU32(b, L.footerAt + 64, vhdFooterChecksum(b, L.footerAt), false);
    if (L.headerAt >= 0) setU32(b, 64, vhdFooterChecksum(b, 0), false);
    if (L.headerAt >= 0 && L.headerAt + 1024 <= b.length) setU32(b, L.headerAt + 36, vhdHeaderChecksum(b, L.headerAt), false);
    notes.push('checksums recomputed');
  }
  return { bytes: b, note: notes.join('; ') };
}

// ---------------------------------------------------------------- VMDK sparse extents

const KDMV_FIELDS = [
  ['version', 4, 4],
  ['flags', 8, 4],
  ['capacity', 12, 8],
  ['grainSize', 20, 8],
  ['descriptorOffset', 28, 8],
  ['descriptorSize', 36, 8],
  ['numGTEsPerGT', 44, 4],
  ['rgdOffset', 48, 8],
  ['gdOffset', 56, 8],
  ['overHead', 64, 8],
  ['uncleanShutdown', 72, 1],
  ['newline', 73, 1],
  ['compressAlgorithm', 77, 1],
];

function isKdmv(b, at = 0) {
  return getU32(b, at, true) === 0x564d444b;
}

/** The layout of a hosted sparse extent: header (or footer for GD_AT_END), directory, tables. */
function kdmvLayout(b) {
  let hAt = 0;
  if (getU64(b, 56, true) >= 2 ** 53 && b.length >= 1536 && isKdmv(b, b.length - 1024)) hAt = b.length - 1024;
  const L = {
    hAt,
    grainSize: getU64(b, hAt + 20, true),
    numGTEs: getU32(b, hAt + 44, true),
    gdAt: getU64(b, hAt + 56, true) * 512,
    rgdAt: getU64(b, hAt + 48, true) * 512,
    capacity: getU64(b, hAt + 12, true),
    compressed: (getU32(b, hAt + 8, true) & 0x10000) !== 0,
  };
  const span = L.grainSize * L.numGTEs;
  L.gdEntries = span > 0 ? Math.min(65536, Math.ceil(L.capacity / span)) : 0;
  if (L.gdAt + L.gdEntries * 4 > b.length) L.gdEntries = 0;
  L.tables = [];
  for (let i = 0; i < L.gdEntries; i++) {
    const s = getU32(b, L.gdAt + 4 * i, true);
    if (s !== 0 && s * 512 + L.numGTEs * 4 <= b.length) L.tables.push({ i, at: s * 512 });
  }
  L.grains = [];
  for (const t of L.tables.slice(0, 16)) {
    for (let j = 0; j < L.numGTEs && L.grains.length < 2048; j++) {
      const g = getU32(b, t.at + 4 * j, true);
      if (g > 1) L.grains.push({ gte: t.at + 4 * j, at: g * 512 });
    }
  }
  return L;
}

const KDMV_VALUES = {
  version: [0, 1, 2, 3, 4, 0xffffffff],
  flags: [0, 1, 3, 7, 0x10000, 0x20000, 0x30001, 0x30003, 0xffffffff, 0x10001],
  grainSize: [0, 1, 8, 3, 128, 2048, 4096, 1 << 20, 2 ** 32],
  numGTEsPerGT: [0, 1, 511, 512, 513, 4096, 0xffffffff],
  compressAlgorithm: [0, 1, 2, 0xff],
};

export function mutateKdmv(input, r) {
  const b = input.slice();
  if (!isKdmv(b)) return randomBytes(b, r);
  const L = kdmvLayout(b);
  const notes = [];
  const n = 1 + r.int(3);
  for (let i = 0; i < n; i++) {
    const k = r();
    if (k < 0.3) {
      const [name, off, size] = r.pick(KDMV_FIELDS);
      const v = KDMV_VALUES[name] && r.chance(0.7) ? BigInt(r.pick(KDMV_VALUES[name])) : name === 'gdOffset' && r.chance(0.3) ? (1n << 64n) - 1n : nastyNear(r, getField(b, off, size, true), size * 8);
      const at = L.hAt > 0 && r.chance(0.6) ? L.hAt : 0;
      setField(b, at + off, size, v, true);
      notes.push(`${at ? 'footer' : 'header'} ${name}=${v}`);
    } else if (k < 0.5 && L.gdEntries > 0) {
      const e = r.int(L.gdEntries);
      const fileSectors = Math.floor(b.length / 512);
      const other = L.tables.length ? r.pick(L.tables).at / 512 : 0;
      const v = r.pick([0, 1, 2, 21, L.gdAt / 512, L.rgdAt / 512, fileSectors, fileSectors - 1, fileSectors + 1000, other, other + 1, 0xffffffff, r.int(fileSectors)]);
      const into = L.rgdAt > 0 && r.chance(0.3) ? L.rgdAt : L.gdAt;
      setU32(b, into + 4 * e, v, true);
      notes.push(`${into === L.gdAt ? 'GD' : 'RGD'}[${e}]=${v}`);
    } else if (k < 0.72 && L.tables.length > 0) {
      const t = r.pick(L.tables);
      const j = r.int(Math.max(1, L.numGTEs));
      const fileSectors = Math.floor(b.length / 512);
      const other = L.grains.length ? r.pick(L.grains).at / 512 : 0;
      const v = r.pick([0, 1, 2, 21, t.at / 512, L.gdAt / 512, fileSectors, fileSectors - 1, fileSectors + 5, other, other + 1, other - 1, 0xffffffff, r.int(fileSectors)]);
      setU32(b, t.at + 4 * j, v, true);
      notes.push(`GT(${t.i})[${j}]=${v}`);
    } else if (k < 0.9 && L.grains.length > 0 && L.compressed) {
      const g = r.pick(L.grains);
      const m = r();
      if (m < 0.3) {
        const v = r.pick([0, 1, 0x7fffffff, 0xffffffff, 0x10000, 0x20200, 0x20201, 3, 12]);
        setU32(b, g.at + 8, v, true);
        notes.push(`grain marker at ${g.at} size=${v}`);
      } else if (m < 0.5) {
        const v = r.pick(NASTY64);
        setU64(b, g.at, v, true);
        notes.push(`grain marker at ${g.at} lba=${v}`);
      } else if (m < 0.75) {
        // A decompression bomb: a small zlib stream that inflates far past a grain.
        const bomb = deflateSync(new Uint8Array(r.pick([1 << 20, 16 << 20])), { level: 9 });
        if (g.at + 12 + bomb.length <= b.length) {
          b.set(bomb, g.at + 12);
          setU32(b, g.at + 8, bomb.length, true);
          notes.push(`decompression bomb (${bomb.length} bytes) at ${g.at}`);
        }
      } else {
        const at = g.at + 12 + r.int(64);
        if (at < b.length) b[at] ^= 0xff;
        notes.push(`compressed grain byte at ${at} flipped`);
      }
    } else if (k < 0.95 && L.compressed) {
      // Metadata markers: a sector with a zero size field and type 0..3; give it an absurd sector count.
      const cands = [];
      for (let at = 512; at + 512 <= b.length && cands.length < 64; at += 512) {
        if (getU32(b, at + 8, true) === 0 && getU32(b, at + 12, true) <= 3 && getU64(b, at, true) < 1 << 20) cands.push(at);
      }
      if (cands.length) {
        const at = r.pick(cands);
        const v = r.pick(NASTY64);
        setU64(b, at, v, true);
        if (r.chance(0.3)) setU32(b, at + 12, r.pick([0, 1, 2, 3, 4, 0xffffffff]), true);
        notes.push(`metadata marker at ${at} numSectors=${v}`);
      }
    } else {
      const m = randomBytes(b, r);
      b.set(m.bytes);
      notes.push(m.note);
    }
  }
  return { bytes: b, note: notes.join('; ') };
}

// ---------------------------------------------------------------- descriptors

const CREATE_TYPES = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized', 'vmfs', 'vmfsSparse', 'seSparse', 'custom', 'fullDevice', 'vmfsRaw', 'bogus', ''];

/** Damages descriptor text; `siblings` are file names that exist beside it. */
export function mutateDescriptorText(text, r, siblings = []) {
  const lines = text.split('\n');
  const notes = [];
  const n = 1 + r.int(3);
  for (let i = 0; i < n; i++) {
    const extentIdx = lines.map((l, i) => (/^(RW|RDONLY|NOACCESS)\s/.test(l.trim()) ? i : -1)).filter((i) => i >= 0);
    const k = r();
    if (k < 0.3 && extentIdx.length) {
      const at = r.pick(extentIdx);
      const m = /^(\S+)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?/.exec(lines[at].trim());
      if (!m) continue;
      let [, access, sectors, type, name = 'x.vmdk', offset] = m;
      const w = r();
      if (w < 0.35) name = r.pick([TRAP, `../${name}`, '../../../../etc/passwd', `sub/../${name}`, 'C:\\x.vmdk', 'a'.repeat(5000), `${name}\u0000x`, '', 'nonexistent.vmdk', ...siblings]);
      else if (w < 0.6) sectors = String(r.pick([0, 1, 2 ** 44, 2 ** 53, '99999999999999999999', '18014398509481984', Number(sectors) + 1, Number(sectors) * 2]));
      else if (w < 0.8) type = r.pick(['FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE', 'VMFSRDM', 'VMFSRAW', 'BOGUS']);
      else if (w < 0.9) access = r.pick(['RW', 'RDONLY', 'NOACCESS']);
      else offset = String(r.pick([0, 1, 2 ** 40, 2 ** 53, '99999999999999999999']));
      lines[at] = `${access} ${sectors} ${type}${type === 'ZERO' && r.chance(0.5) ? '' : ` "${name}"`}${offset !== undefined || type === 'FLAT' ? ` ${offset ?? 0}` : ''}`;
      notes.push(`extent line -> ${lines[at].slice(0, 120)}`);
    } else if (k < 0.4 && extentIdx.length) {
      const copies = r.pick([2, 100, 32000, 40000]);
      const at = r.pick(extentIdx);
      const line = r.chance(0.5) ? lines[at] : `RW ${r.pick([1, 2 ** 40, 2 ** 52])} ZERO`;
      lines.splice(at, 0, ...Array(copies).fill(line));
      notes.push(`extent line repeated ${copies}x`);
    } else if (k < 0.55) {
      const key = r.pick(['createType', 'CID', 'parentCID', 'version', 'encoding', 'parentFileNameHint']);
      const value =
        key === 'createType'
          ? `"${r.pick(CREATE_TYPES)}"`
          : key === 'encoding'
            ? `"${r.pick(['UTF-8', 'UTF-16LE', 'utf-16be', 'Shift_JIS', 'GBK', 'windows-1252', 'bogus-enc', ''])}"`
            : key === 'parentFileNameHint'
              ? `"${r.pick([TRAP, '../../etc/passwd', 'main.vmdk', ...siblings, 'a'.repeat(3000)])}"`
              : r.pick(['ffffffff', 'fffffffe', '0', 'zz', '123456789', '-1', '00000001']);
      const line = `${key}=${value}`;
      if (r.chance(0.5)) lines.splice(1 + r.int(Math.max(1, lines.length - 1)), 0, line);
      else {
        const i2 = lines.findIndex((l) => l.startsWith(key + '='));
        if (i2 >= 0) lines[i2] = line;
        else lines.splice(1, 0, line);
      }
      notes.push(`field ${line.slice(0, 80)}`);
    } else if (k < 0.65) {
      const w = r.pick(['bom', 'crlf', 'nul', 'latin1', 'longline', 'empty', 'binary', 'noheader']);
      if (w === 'bom') lines[0] = '\ufeff' + lines[0];
      else if (w === 'crlf') for (let j = 0; j < lines.length; j++) lines[j] += '\r';
      else if (w === 'nul') lines.splice(r.int(lines.length), 0, '\u0000junk');
      else if (w === 'latin1') lines.splice(1, 0, 'ddb.comment = "\u00ff\u00fe\u00e9"');
      else if (w === 'longline') lines.splice(1, 0, 'x'.repeat(200_000) + '=' + 'y'.repeat(100));
      else if (w === 'empty') lines.splice(1);
      else if (w === 'binary') lines.splice(r.int(lines.length), 0, String.fromCharCode(...Array.from({ length: 64 }, () => r.int(256))));
      else lines.shift();
      notes.push(`text ${w}`);
    } else if (k < 0.75) {
      lines.splice(r.int(lines.length), 1);
      notes.push('a line removed');
    } else {
      const j = r.int(lines.length);
      const s = lines[j] ?? '';
      const at = r.int(s.length + 1);
      lines[j] = s.slice(0, at) + r.pick(['"', ' ', '=', '#', '9', '\t', '\\', '\u00e9']) + s.slice(at);
      notes.push(`char inserted in line ${j}`);
    }
  }
  return { text: lines.join('\n'), note: notes.join('; ') };
}

/** Damages the descriptor embedded in a sparse extent, inside its area. */
export function mutateEmbeddedDescriptor(input, r, siblings) {
  const b = input.slice();
  const off = getU64(b, 28, true) * 512;
  const size = getU64(b, 36, true) * 512;
  if (!isKdmv(b) || off === 0 || size === 0 || off + size > b.length) return mutateKdmv(b, r);
  const area = b.subarray(off, off + size);
  const nul = area.indexOf(0);
  const text = new TextDecoder().decode(area.subarray(0, nul >= 0 ? nul : area.length));
  const m = mutateDescriptorText(text, r, siblings);
  const enc = new TextEncoder().encode(m.text);
  area.fill(0);
  area.set(enc.subarray(0, area.length));
  return { bytes: b, note: `embedded descriptor: ${m.note}` };
}

// ---------------------------------------------------------------- OVA

const OVF_EDITS = [
  ['doctype', (x) => x.replace('?>', '?>\n<!DOCTYPE Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>').replace(/ovf:id="([^"]*)"/, 'ovf:id="&d;"')],
  ['external entity', (x) => x.replace('?>', '?>\n<!DOCTYPE Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>').replace(/ovf:href="([^"]*)"/, 'ovf:href="&x;"')],
  ['capacity huge', (x) => x.replace(/ovf:capacity="[^"]*"/, 'ovf:capacity="99999999999999999999999"')],
  ['capacity negative', (x) => x.replace(/ovf:capacity="[^"]*"/, 'ovf:capacity="-1"')],
  ['capacity float', (x) => x.replace(/ovf:capacity="[^"]*"/, 'ovf:capacity="1e400"')],
  ['units', (x) => x.replace(/ovf:capacityAllocationUnits="[^"]*"/, 'ovf:capacityAllocationUnits="byte * 2^70"')],
  ['units junk', (x) => x.replace(/ovf:capacityAllocationUnits="[^"]*"/, 'ovf:capacityAllocationUnits="byte * 2^^^"')],
  ['href ..', (x) => x.replace(/ovf:href="[^"]*"/, 'ovf:href="../../etc/passwd"')],
  ['href absolute', (x) => x.replace(/ovf:href="[^"]*"/, `ovf:href="${TRAP}"`)],
  ['href missing', (x) => x.replace(/ovf:href="[^"]*"/, 'ovf:href="nope.vmdk"')],
  ['fileRef', (x) => x.replace(/ovf:fileRef="[^"]*"/, 'ovf:fileRef="nope"')],
  ['file size lies', (x) => x.replace(/(<File[^>]*ovf:size=")\d+/, '$1' + '12345')],
  ['many disks', (x) => x.replace(/(<Disk [^>]*\/>)/, (d) => d.repeat(20000))],
  ['deep nesting', (x) => x.replace('</DiskSection>', '<a>'.repeat(100000) + '</a>'.repeat(100000) + '</DiskSection>')],
  ['unterminated', (x) => x.slice(0, Math.floor(x.length / 2))],
  ['cdata', (x) => x.replace('<DiskSection>', '<DiskSection><![CDATA[<Disk ovf:diskId="x"/>]]>')],
  ['comment bomb', (x) => x.replace('<DiskSection>', '<DiskSection><!--' + '-'.repeat(10) + 'x'.repeat(2 << 20) + '-->')],
  ['invalid utf8', (x) => x.replace('Envelope', 'Envel\udfffope')],
  ['no namespace', (x) => x.replaceAll('ovf:', '')],
  ['attr quotes', (x) => x.replace(/ovf:capacity="([^"]*)"/, "ovf:capacity='$1'")],
];

/** Damages an OVA (a tar of .ovf, .mf, disks): tar headers, member order, the OVF XML, the manifest, the disk's bytes. */
export function mutateOva(input, r) {
  const members = listTar(input);
  if (members.length === 0) return randomBytes(input, r);
  const k = r();
  const asMembers = () => members.map((m) => ({ name: m.name, data: m.data, type: m.type }));
  if (k < 0.2) {
    const b = input.slice();
    const m = r.pick(members);
    const w = r.pick(['size', 'type', 'name', 'magic', 'prefix', 'base256']);
    const enc = new TextEncoder();
    if (w === 'size')
      b.set(
        enc.encode(
          r
            .pick([0, 1, m.size + 1, m.size - 1, m.size * 4, 0o77777777777])
            .toString(8)
            .padStart(11, '0') + '\0',
        ),
        m.headerAt + 124,
      );
    else if (w === 'type') b[m.headerAt + 156] = r.pick(['1', '2', '3', '5', '6', 'x', 'g', 'L', 'K', 'S', 'V', '\0', 'Z']).charCodeAt(0);
    else if (w === 'name') {
      b.fill(0, m.headerAt, m.headerAt + 100);
      b.set(enc.encode(r.pick(['../evil.ovf', '/abs.ovf', `..\\x.vmdk`, 'a/../../b.vmdk', './' + m.name, 'C:x.ovf', '', m.name.toUpperCase()])).subarray(0, 100), m.headerAt);
    } else if (w === 'magic') b.set(enc.encode(r.pick(['ustar\u000000', 'ustar  \0', 'xxxxx\0', '\0\0\0\0\0\0'])), m.headerAt + 257);
    else if (w === 'prefix') b.set(enc.encode(r.pick(['..', '/etc', 'x'.repeat(155)])).subarray(0, 155), m.headerAt + 345);
    else {
      b[m.headerAt + 124] = 0x80 | r.pick([0, 0x40, 0x3f]);
      b.fill(0xff, m.headerAt + 125, m.headerAt + 136);
    }
    if (r.chance(0.9)) fixTarChecksum(b, m.headerAt);
    return { bytes: b, note: `tar header of "${m.name}": ${w}` };
  }
  if (k < 0.35) {
    const ms = asMembers();
    const w = r.pick(['reverse', 'drop', 'duplicate', 'symlink', 'hardlink', 'longname', 'pax path', 'pax size', 'dir', 'noend', 'sizelie', 'junk after']);
    let note = w;
    let noEnd = false;
    if (w === 'reverse') ms.reverse();
    else if (w === 'drop') ms.splice(r.int(ms.length), 1);
    else if (w === 'duplicate') ms.push({ ...r.pick(ms) });
    else if (w === 'symlink' || w === 'hardlink') ms.splice(r.int(ms.length + 1), 0, { raw: linkHeader(w === 'symlink' ? '2' : '1', r.pick(ms).name) });
    else if (w === 'longname') {
      const m = r.pick(ms);
      m.longName = r.pick(['d/'.repeat(1000) + m.name, '../' + m.name, m.name]);
    } else if (w === 'pax path') r.pick(ms).pax = { path: r.pick(['../x.vmdk', '/etc/passwd', 'ok/' + 'a'.repeat(200)]) };
    else if (w === 'pax size') r.pick(ms).pax = { size: r.pick(['99999999999999999999', '-1', '0', '12x', String(2 ** 40)]) };
    else if (w === 'dir') ms.unshift({ name: 'dir/', type: '5', data: new Uint8Array(0) });
    else if (w === 'noend') noEnd = true;
    else if (w === 'sizelie') {
      const m = r.pick(ms);
      m.sizeLie = r.pick([0, m.data.length + 4096, m.data.length * 10, 2 ** 40]);
      note += ` ${m.name}`;
    }
    let bytes = buildTar(ms, { noEnd });
    if (w === 'junk after') bytes = concat([bytes, new Uint8Array(1536).fill(0x41)]);
    return { bytes, note: `tar: ${note}` };
  }
  if (k < 0.6) {
    const ms = asMembers();
    const ovf = ms.find((m) => m.name.endsWith('.ovf'));
    if (!ovf) return randomBytes(input, r);
    const [name, edit] = r.pick(OVF_EDITS);
    ovf.data = new TextEncoder().encode(edit(new TextDecoder().decode(ovf.data)));
    if (name === 'invalid utf8') ovf.data = concat([ovf.data, new Uint8Array([0xff, 0xfe, 0xc3])]);
    const mf = ms.find((m) => m.name.endsWith('.mf'));
    if (mf && r.chance(0.7)) ms.splice(ms.indexOf(mf), 1); // a stale manifest would stop most cases early
    return { bytes: buildTar(ms), note: `OVF: ${name}` };
  }
  if (k < 0.7) {
    const ms = asMembers();
    const mf = ms.find((m) => m.name.endsWith('.mf'));
    if (!mf) return randomBytes(input, r);
    const text = new TextDecoder().decode(mf.data);
    const w = r.pick(['bad hash', 'md5', 'sha512 short', 'path', 'long', 'missing disk', 'junk']);
    const out =
      w === 'bad hash'
        ? text.replace(/[0-9a-f]{8}/, '00000000')
        : w === 'md5'
          ? text.replace(/^SHA\d+/gm, 'MD5')
          : w === 'sha512 short'
            ? text.replace(/^SHA\d+/gm, 'SHA512')
            : w === 'path'
              ? text.replace(/\(([^)]*)\)/, '(../$1)')
              : w === 'long'
                ? text + `SHA256(${'x'.repeat(100000)})= 00\n`
                : w === 'missing disk'
                  ? text
                      .split('\n')
                      .filter((l) => !l.includes('.vmdk'))
                      .join('\n')
                  : text + '\u0000\u00ff garbage\n';
    mf.data = new TextEncoder().encode(out);
    return { bytes: buildTar(ms), note: `manifest: ${w}` };
  }
  if (k < 0.9) {
    const ms = asMembers();
    const disk = ms.find((m) => /\.vmdk$/i.test(m.name));
    if (!disk) return randomBytes(input, r);
    const m = r.chance(0.3) ? mutateEmbeddedDescriptor(disk.data, r, []) : mutateKdmv(disk.data, r);
    disk.data = m.bytes;
    const mf = ms.find((x) => x.name.endsWith('.mf'));
    if (mf && r.chance(0.7)) ms.splice(ms.indexOf(mf), 1);
    return { bytes: buildTar(ms), note: `disk member: ${m.note}` };
  }
  return r.chance(0.5) ? randomBytes(input, r) : resize(input, r);
}

function linkHeader(type, target) {
  const h = new Uint8Array(512);
  const enc = new TextEncoder();
  h.set(enc.encode(type === '2' ? 'link.vmdk' : 'hard.vmdk'), 0);
  h.set(enc.encode('0000644\0'), 100);
  h.set(enc.encode('00000000000\0'), 124);
  h[156] = type.charCodeAt(0);
  h.set(enc.encode(type === '2' ? '/etc/passwd' : target).subarray(0, 100), 157);
  h.set(enc.encode('ustar\u000000'), 257);
  fixTarChecksum(h, 0);
  return h;
}

// ---------------------------------------------------------------- chains (parent and child)

/** Rewrites the embedded descriptor text of a hosted sparse extent in place (NUL padded); false when it has none or the text does not fit. */
function editEmbedded(b, edit) {
  const off = getU64(b, 28, true) * 512;
  const size = getU64(b, 36, true) * 512;
  if (!isKdmv(b) || off === 0 || size === 0 || off + size > b.length) return false;
  const area = b.subarray(off, off + size);
  const nul = area.indexOf(0);
  const text = edit(new TextDecoder().decode(area.subarray(0, nul >= 0 ? nul : area.length)));
  const enc = new TextEncoder().encode(text);
  if (enc.length > area.length) return false;
  area.fill(0);
  area.set(enc);
  return true;
}

/** Recomputes both VHD footer checksums and the dynamic header's (what a careful attacker does). */
function fixVhdChecksums(b) {
  const L = vhdLayout(b);
  setU32(b, L.footerAt + 64, vhdFooterChecksum(b, L.footerAt), false);
  if (L.headerAt >= 0) {
    setU32(b, 64, vhdFooterChecksum(b, 0), false);
    if (L.headerAt + 1024 <= b.length) setU32(b, L.headerAt + 36, vhdHeaderChecksum(b, L.headerAt), false);
  }
}

/**
 * Turns the VHD parent into a differencing disk whose parent is `name`
 * (the child: a cycle; or itself): footer type 4 in both copies, the
 * header's parent id and name, and a W2ku locator whose data sits in a
 * sector inserted before the footer.
 */
function vhdNamingParent(parent, name, parentId) {
  const L = vhdLayout(parent);
  if (L.headerAt < 0) return undefined;
  const at = L.footerAt;
  const locator = new Uint8Array(512);
  const path = Buffer.from(name, 'utf16le');
  locator.set(path);
  const b = concat([parent.subarray(0, at), locator, parent.subarray(at)]);
  const footerAt = at + 512;
  for (const f of [0, footerAt]) setU32(b, f + 60, 4, false);
  b.set(parentId, L.headerAt + 40); // parent unique id
  const unicode = b.subarray(L.headerAt + 64, L.headerAt + 576);
  unicode.fill(0);
  for (let i = 0; i < name.length && i < 256; i++) {
    unicode[2 * i] = name.charCodeAt(i) >> 8;
    unicode[2 * i + 1] = name.charCodeAt(i) & 0xff;
  }
  const entry = L.headerAt + 576;
  setU32(b, entry, 0x57326b75, false); // W2ku
  setU32(b, entry + 4, 1, false); // data space: one sector
  setU32(b, entry + 8, path.length, false);
  setU64(b, entry + 16, at, false);
  fixVhdChecksums(b);
  return b;
}

/**
 * Damages a chain: the parent's bytes (structure-aware), or the links
 * between child and parent (ids, timestamps, CIDs, sizes, a parent that
 * names the child or itself as its own parent). `names` holds the two
 * file names; the answer's `files` maps each file it changed to its bytes.
 */
export function mutateChain(kind, child, parent, names, r) {
  const c = child.slice();
  let p = parent.slice();
  const changed = (note, which = 'parent') => ({ files: which === 'both' ? { [names.child]: c, [names.parent]: p } : which === 'child' ? { [names.child]: c } : { [names.parent]: p }, note: `chain: ${note}` });
  const k = r();
  if (kind === 'vhd') {
    if (k < 0.4) {
      const m = r.chance(0.8) ? mutateVhd(p, r) : r.chance(0.5) ? randomBytes(p, r) : resize(p, r);
      p = m.bytes;
      return changed(`parent ${names.parent}: ${m.note}`);
    }
    const cl = vhdLayout(c);
    const pl = vhdLayout(p);
    const w = r.pick(['child parent id', 'child parent timestamp', 'parent unique id', 'parent size', 'parent names child', 'parent names itself', 'parent is fixed', 'parent footer only']);
    if (w === 'child parent id' && cl.headerAt >= 0) {
      c[cl.headerAt + 40 + r.int(16)] ^= 1 << r.int(8);
      fixVhdChecksums(c);
      return changed(w, 'child');
    }
    if (w === 'child parent timestamp' && cl.headerAt >= 0) {
      setU32(c, cl.headerAt + 56, r.pick([0, 1, 0xffffffff, getU32(c, cl.headerAt + 56, false) + 1]), false);
      fixVhdChecksums(c);
      return changed(w, 'child');
    }
    if (w === 'parent unique id') {
      const bit = r.int(16);
      for (const f of [0, pl.footerAt]) p[f + 68 + bit] ^= 0x40;
      fixVhdChecksums(p);
      return changed(w);
    }
    if (w === 'parent size') {
      const size = getU64(p, pl.footerAt + 48, false);
      const v = r.pick([0, 512, size / 2, size - 512, size + 512, size * 4, 2 ** 40, 2 ** 53 - 512]);
      for (const f of [0, pl.footerAt]) setU64(p, f + 48, v, false);
      fixVhdChecksums(p);
      return changed(`${w} ${v}`);
    }
    if ((w === 'parent names child' || w === 'parent names itself') && cl.headerAt >= 0) {
      // The child's id (a cycle through it) or the parent's own.
      const id = w === 'parent names child' ? c.slice(cl.footerAt + 68, cl.footerAt + 84) : p.slice(pl.footerAt + 68, pl.footerAt + 84);
      const named = vhdNamingParent(p, w === 'parent names child' ? names.child : names.parent, id);
      if (named) {
        p = named;
        return changed(w);
      }
    }
    if (w === 'parent is fixed') {
      // Footer type 2 over a dynamic layout: the BAT and blocks read as raw data.
      for (const f of [0, pl.footerAt]) setU32(p, f + 60, 2, false);
      fixVhdChecksums(p);
      return changed(w);
    }
    // The two footer copies disagree (the tail one is what a reader trusts).
    p[pl.footerAt + 48 + r.int(8)] ^= 1 << r.int(8);
    fixVhdChecksums(p);
    setU32(p, 64, getU32(p, 64, false) ^ 1, false);
    return changed('parent footer copies disagree');
  }
  // VMDK: a hosted sparse child whose descriptor names the parent.
  if (k < 0.4) {
    const m = r.chance(0.7) ? mutateKdmv(p, r) : r.chance(0.5) ? mutateEmbeddedDescriptor(p, r, [names.child]) : randomBytes(p, r);
    p = m.bytes;
    return changed(`parent ${names.parent}: ${m.note}`);
  }
  const w = r.pick(['parentCID', 'parent CID', 'parent names child', 'parent names itself', 'parent capacity', 'child capacity', 'parent grain size', 'parent createType']);
  const cid = () => r.pick(['ffffffff', 'fffffffe', '00000000', '99999998', 'zz', '-1', '123456789']);
  let ok = false;
  if (w === 'parentCID') ok = editEmbedded(c, (t) => t.replace(/parentCID=\S+/, `parentCID=${cid()}`));
  else if (w === 'parent CID') ok = editEmbedded(p, (t) => t.replace(/\nCID=\S+/, `\nCID=${cid()}`));
  else if (w === 'parent names child' || w === 'parent names itself') {
    const target = w === 'parent names child' ? names.child : names.parent;
    ok = editEmbedded(p, (t) =>
      t
        .replace(/parentCID=\S+/, 'parentCID=aaaaaaaa')
        .replace(/\n(createType=[^\n]*)/, `\n$1\nparentFileNameHint="${target}"`)
        .replace(/createType="[^"]*"/, 'createType="monolithicSparse"'),
    );
    if (ok && r.chance(0.5)) ok = editEmbedded(c, (t) => t.replace(/\nCID=\S+/, '\nCID=ffffffff'));
  } else if (w === 'parent capacity' || w === 'child capacity') {
    const b = w === 'parent capacity' ? p : c;
    const cap = getU64(b, 12, true);
    setU64(b, 12, r.pick([0, 1, cap / 2, cap - 1, cap + 128, cap * 2, 2 ** 40, 2 ** 53]), true);
    return changed(`${w} ${getU64(b, 12, true)}`, w === 'parent capacity' ? 'parent' : 'child');
  } else if (w === 'parent grain size') {
    setU64(p, 20, r.pick([1, 8, 16, 64, 256, 0, 2 ** 32]), true);
    ok = true;
  } else {
    ok = editEmbedded(p, (t) => t.replace(/createType="[^"]*"/, `createType="${r.pick(['streamOptimized', 'vmfsSparse', 'twoGbMaxExtentSparse', 'monolithicFlat', 'bogus'])}"`));
  }
  if (!ok) {
    const m = mutateKdmv(p, r);
    p = m.bytes;
    return changed(`parent ${names.parent}: ${m.note} (${w} did not apply)`);
  }
  return changed(w, w === 'parentCID' ? 'child' : 'both');
}
