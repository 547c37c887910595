/**
 * Deterministic benchmark inputs. Each input is a raw image written from a
 * layout (a list of data runs; the rest are holes), then turned into qcow2
 * and VHD by qemu-img, so both tools read inputs that neither wrote.
 * Random bytes come from AES-128-CTR over zeros with a fixed key: the same
 * bytes on every machine, at memory speed.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './proc.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** A reproducible hash of `i` (for scattering runs). */
function mix(i, salt) {
  const h = createHash('sha256').update(`${salt}:${i}`).digest();
  return h.readUInt32BE(0);
}

/**
 * The inputs of the issue. `scale` (0 < scale <= 1) shrinks data and
 * virtual sizes for smoke runs, keeping the shapes.
 *
 * - A: 1 GiB virtual, 64 MiB of random data in 8 places
 * - B: 16 GiB virtual, 1 GiB of data scattered in 1 MiB runs
 * - C: 1 TiB virtual (qcow2, raw) / 2040 GiB (VHD), 64 MiB of data
 * - D: 2 GiB fully allocated
 * - E: 1 GiB of text-like data (compressible), for -c
 */
export function layouts(scale = 1) {
  const s = (n) => Math.max(64 * KiB, Math.round((n * scale) / (64 * KiB)) * 64 * KiB);
  const spread = (virtual, runs, runLength, salt) => {
    const slot = Math.floor(virtual / runs / MiB) * MiB;
    const out = [];
    for (let i = 0; i < runs; i++) {
      const room = Math.max(0, Math.floor((slot - runLength) / MiB));
      const at = i * slot + (room > 0 ? (mix(i, salt) % room) * MiB : 0);
      out.push({ offset: at, length: runLength, kind: 'random' });
    }
    return out;
  };
  const a = s(1 * GiB);
  const b = s(16 * GiB);
  const bRuns = Math.max(4, Math.round(1024 * scale));
  return {
    A: { virtual: a, runs: spread(a, 8, s(8 * MiB), 'A'), note: '1 GiB virtual, 64 MiB random data in 8 runs' },
    B: { virtual: b, runs: spread(b, bRuns, MiB, 'B'), note: `16 GiB virtual, 1 GiB data in 1 MiB runs` },
    C: {
      // Virtual size is not scaled: C is about metadata proportional to virtual size.
      virtual: 1024 * GiB,
      vhdVirtual: 2040 * GiB,
      runs: spread(1024 * GiB, 8, s(8 * MiB), 'C'),
      note: '1 TiB virtual (qcow2, raw) / 2040 GiB (VHD), 64 MiB data',
    },
    D: { virtual: s(2 * GiB), runs: [{ offset: 0, length: s(2 * GiB), kind: 'random' }], note: '2 GiB fully allocated (random)' },
    E: { virtual: s(1 * GiB), runs: [{ offset: 0, length: s(1 * GiB), kind: 'text' }], note: '1 GiB text-like data (compressible), for -c' },
  };
}

function randomStream(salt) {
  const key = createHash('sha256').update(`img-bench:${salt}`).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
}

const WORDS = (
  'the of and to in is that for it as was with be by on not he this are or his from at which but have an they ' +
  'disk image cluster sector block table offset length header footer snapshot backing refcount allocation ' +
  'virtual physical compress stream writer reader extent metadata kernel driver device buffer page cache ' +
  'error warning info debug request response server client connect timeout retry value number string'
).split(' ');

/** Text-like bytes: words, spaces, punctuation and line breaks from a seeded generator. */
function textChunk(length, seed) {
  const out = Buffer.allocUnsafe(length);
  let x = seed | 1;
  let pos = 0;
  let col = 0;
  while (pos < length) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const w = WORDS[(x >>> 0) % WORDS.length];
    for (let i = 0; i < w.length && pos < length; i++) out[pos++] = w.charCodeAt(i);
    col += w.length + 1;
    if (pos < length) out[pos++] = col > 72 ? 10 : (x & 31) === 0 ? 44 : 32;
    if (col > 72) col = 0;
    // A number now and then, as logs have.
    if ((x & 63) === 1 && pos + 8 < length) {
      const n = String((x >>> 8) % 100000).padStart(6, '0');
      for (let i = 0; i < n.length; i++) out[pos++] = n.charCodeAt(i);
      out[pos++] = 32;
    }
  }
  return out;
}

/** Writes the raw image of a layout, sparse (holes never written). */
export async function writeRaw(path, virtual, runs, salt) {
  await rm(path, { force: true });
  const fh = await open(path, 'w');
  try {
    await fh.truncate(virtual);
    const chunk = 4 * MiB;
    const cipher = randomStream(salt);
    const zeros = Buffer.alloc(chunk);
    let seed = 0x9e3779b9;
    for (const r of runs) {
      for (let p = r.offset; p < r.offset + r.length; p += chunk) {
        const n = Math.min(chunk, r.offset + r.length - p);
        const buf = r.kind === 'text' ? textChunk(n, seed++) : cipher.update(zeros.subarray(0, n));
        await fh.write(buf, 0, n, p);
      }
    }
  } finally {
    await fh.close();
  }
}

/**
 * Makes (or reuses) the raw, qcow2 and VHD files of input `name` under
 * `dir`. Returns their paths. A stamp file records the layout so a change
 * of scale rebuilds.
 */
export async function ensureInput(dir, name, layout, formats = ['raw', 'qcow2', 'vpc']) {
  const stampPath = join(dir, `${name}.stamp`);
  const stamp = JSON.stringify({ v: 2, layout, formats });
  const files = { raw: join(dir, `${name}.raw`), qcow2: join(dir, `${name}.qcow2`), vpc: join(dir, `${name}.vhd`) };
  if (existsSync(stampPath) && readFileSync(stampPath, 'utf8') === stamp && formats.every((f) => existsSync(files[f]))) return files;
  await rm(stampPath, { force: true });
  await writeRaw(files.raw, layout.virtual, layout.runs, name);
  if (formats.includes('qcow2')) await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', files.raw, files.qcow2]);
  if (formats.includes('vpc')) {
    let src = files.raw;
    if (layout.vhdVirtual && layout.vhdVirtual !== layout.virtual) {
      // The VHD of C is larger than the raw and qcow2 (VHD's limit is 2040 GiB).
      src = join(dir, `${name}.vhdsrc.raw`);
      await writeRaw(src, layout.vhdVirtual, layout.runs, name);
    }
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic', src, files.vpc]);
    if (src !== files.raw) await rm(src, { force: true });
  }
  writeFileSync(stampPath, stamp);
  return files;
}

export async function fileSize(path) {
  return (await stat(path)).size;
}

export { KiB, MiB, GiB };
