import { ImageError, MemoryStorage } from '@img/block';
import { describeQemu, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { openVmdk } from './open.js';
import { readVmdkStream } from './read-stream.js';
import { FLAG_COMPRESSED, FLAG_MARKERS, FLAG_VALID_NEWLINE, GD_AT_END, NEWLINE_CHARS, serializeSparseHeader } from './sparse-header.js';

const SECTOR = 512;
const GTES = 512;

/** Guest content of `grains` grains of `grainSectors`: data in grain 0 and in the last grain, grain 1 all zeros. */
function content(grainSectors: number, grains: number): Uint8Array {
  const g = grainSectors * SECTOR;
  const raw = new Uint8Array(g * grains);
  raw.set(seededBytes(Math.min(g, 8192), 1), 0);
  raw.set(seededBytes(Math.min(g, 8192), 2), raw.length - Math.min(g, 8192));
  return raw;
}

function padTo(b: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(b);
  return out;
}

/** Byte equality (toEqual walks megabytes slowly). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

function isZero(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}

/** Sectors of the embedded descriptor, at sector 1. */
const DESC = 2;

function descriptor(createType: string, sectors: number): Uint8Array {
  const text = `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="${createType}"\n\nRW ${sectors} SPARSE "g.vmdk"\n\nddb.adapterType = "ide"\n`;
  return new TextEncoder().encode(text);
}

/** A hosted sparse extent: header, embedded descriptor, GD, tables, grains. */
function hostedSparse(raw: Uint8Array, grainSectors: number): Uint8Array {
  const g = grainSectors * SECTOR;
  const grains = Math.ceil(raw.length / g);
  const tables = Math.ceil(grains / GTES);
  const gdSectors = Math.ceil((tables * 4) / SECTOR);
  const gtSectors = (GTES * 4) / SECTOR;
  const gd = 1 + DESC;
  const overHead = gd + gdSectors + tables * gtSectors;
  const data: Uint8Array[] = [];
  const gte = new Uint32Array(tables * GTES);
  let next = overHead;
  for (let i = 0; i < grains; i++) {
    const chunk = raw.subarray(i * g, (i + 1) * g);
    if (isZero(chunk)) continue;
    gte[i] = next;
    data.push(chunk);
    next += grainSectors;
  }
  const out = new Uint8Array(next * SECTOR);
  out.set(
    serializeSparseHeader({
      version: 1,
      flags: FLAG_VALID_NEWLINE,
      capacity: raw.length / SECTOR,
      grainSize: grainSectors,
      descriptorOffset: 1,
      descriptorSize: DESC,
      numGTEsPerGT: GTES,
      rgdOffset: 0,
      gdOffset: gd,
      overHead,
      uncleanShutdown: false,
      newlineChars: NEWLINE_CHARS,
      compressAlgorithm: 0,
    }),
  );
  out.set(descriptor('monolithicSparse', raw.length / SECTOR), SECTOR);
  const view = new DataView(out.buffer);
  for (let t = 0; t < tables; t++) view.setUint32(gd * SECTOR + t * 4, gd + gdSectors + t * gtSectors, true);
  gte.forEach((v, i) => view.setUint32((gd + gdSectors) * SECTOR + i * 4, v, true));
  let at = overHead * SECTOR;
  for (const d of data) {
    out.set(d, at);
    at += d.length;
  }
  return out;
}

/** A streamOptimized extent: header (GD at the end), grains with markers, GT, GD, footer, end-of-stream marker. */
function streamOptimized(raw: Uint8Array, grainSectors: number): Uint8Array {
  const g = grainSectors * SECTOR;
  const grains = Math.ceil(raw.length / g);
  const parts: Uint8Array[] = [];
  let sector = 1;
  const text = descriptor('streamOptimized', raw.length / SECTOR);
  const push = (b: Uint8Array): void => {
    const padded = new Uint8Array(Math.ceil(b.length / SECTOR) * SECTOR);
    padded.set(b);
    parts.push(padded);
    sector += padded.length / SECTOR;
  };
  const marker = (value: number, size: number, type: number): Uint8Array => {
    const m = new Uint8Array(SECTOR);
    const v = new DataView(m.buffer);
    v.setBigUint64(0, BigInt(value), true);
    v.setUint32(8, size, true);
    v.setUint32(12, type, true);
    return m;
  };
  push(padTo(text, DESC * SECTOR));
  const gte = new Uint32Array(GTES);
  for (let i = 0; i < grains; i++) {
    const chunk = raw.subarray(i * g, (i + 1) * g);
    if (isZero(chunk)) continue;
    const z = deflateSync(chunk);
    const m = new Uint8Array(12 + z.length);
    new DataView(m.buffer).setBigUint64(0, BigInt(i * grainSectors), true);
    new DataView(m.buffer).setUint32(8, z.length, true);
    m.set(z, 12);
    gte[i] = sector;
    push(m);
  }
  push(marker(4, 0, 1));
  const gtAt = sector;
  push(new Uint8Array(gte.buffer));
  push(marker(1, 0, 2));
  const gdAt = sector;
  push(new Uint8Array(new Uint32Array([gtAt]).buffer));
  const header = (gdOffset: number): Uint8Array =>
    serializeSparseHeader({
      version: 3,
      flags: FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS,
      capacity: raw.length / SECTOR,
      grainSize: grainSectors,
      descriptorOffset: 1,
      descriptorSize: DESC,
      numGTEsPerGT: GTES,
      rgdOffset: 0,
      gdOffset,
      overHead: 1 + DESC,
      uncleanShutdown: false,
      newlineChars: NEWLINE_CHARS,
      compressAlgorithm: 1,
    });
  push(marker(1, 0, 3));
  push(header(gdAt));
  push(new Uint8Array(SECTOR));
  const out = new Uint8Array(sector * SECTOR);
  out.set(header(GD_AT_END));
  let at = SECTOR;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

async function readWhole(bytes: Uint8Array): Promise<Uint8Array> {
  const disk = await openVmdk(MemoryStorage.from(bytes, { name: 'g.vmdk', readOnly: true }));
  try {
    return await disk.read(0, disk.size);
  } finally {
    await disk.close();
  }
}

async function readPipe(bytes: Uint8Array): Promise<Uint8Array> {
  const source = await readVmdkStream(
    (async function* () {
      for (let at = 0; at < bytes.length; at += 65536) yield bytes.subarray(at, at + 65536);
    })(),
  );
  const out = new Uint8Array(source.size);
  for await (const p of source.pieces) out.set(p.data, p.offset);
  return out;
}

async function errorOf(p: Promise<unknown>): Promise<ImageError> {
  try {
    await p;
  } catch (e) {
    if (ImageError.isInstance(e)) return e;
    throw e;
  }
  throw new Error('expected an ImageError');
}

describe('grain sizes qemu reads: any from 1 sector to 0x200000', () => {
  for (const grain of [4096, 3, 24]) {
    it(`a hosted sparse extent with ${grain}-sector grains reads back`, async () => {
      const raw = content(grain, 3);
      expect(same(await readWhole(hostedSparse(raw, grain)), raw)).toBe(true);
    });
  }

  it('a streamOptimized extent with 4096-sector grains reads back, as a file and from a pipe', async () => {
    const raw = content(4096, 3);
    const image = streamOptimized(raw, 4096);
    expect(same(await readWhole(image), raw)).toBe(true);
    expect(same(await readPipe(image), raw)).toBe(true);
  });

  it('a grain above qemu\'s 0x200000 sectors is refused as larger, not as "not a power of two"', async () => {
    const image = hostedSparse(content(8, 3), 8);
    new DataView(image.buffer).setBigUint64(20, 0x200001n, true);
    const e = await errorOf(readWhole(image));
    expect(e.code).toBe('ERR_IMG_UNSUPPORTED');
    expect(e.message).toMatch(/grain size 2097153 sectors is larger than 2097152 sectors/);
    expect(e.message).not.toMatch(/power of two/);
  });

  it('a compressed grain above 4 MiB is refused by name, as a file and from a pipe', async () => {
    const image = streamOptimized(content(8, 3), 8);
    new DataView(image.buffer).setBigUint64(20, 16384n, true); // the header (the pipe reads it)
    new DataView(image.buffer).setBigUint64(image.length - 1024 + 20, 16384n, true); // the footer (a file is read through it)
    for (const e of [await errorOf(readWhole(image)), await errorOf(readPipe(image))]) {
      expect(e.code).toBe('ERR_IMG_UNSUPPORTED');
      expect(e.message).toMatch(/compressed grain size 16384 sectors is larger than 8192 sectors \(4 MiB\)/);
    }
  });

  it('a grain size of 0 is corrupt', async () => {
    const image = hostedSparse(content(8, 3), 8);
    new DataView(image.buffer).setBigUint64(20, 0n, true);
    expect((await errorOf(readWhole(image))).code).toBe('ERR_IMG_CORRUPT');
  });
});

const dir = tempDir('vmdk-grain-');
afterAll(() => dir.cleanup());

describeQemu('grain sizes: qemu-img reads what img reads, and refuses what img refuses', () => {
  for (const [name, grain, build] of [
    ['sparse-4096', 4096, hostedSparse],
    ['sparse-3', 3, hostedSparse],
    ['stream-4096', 4096, streamOptimized],
  ] as const) {
    it(`${name}: qemu-img convert gives the bytes img reads`, async () => {
      const raw = content(grain, 3);
      const file = join(dir.path, `${name}.vmdk`);
      writeFileSync(file, build(raw, grain));
      qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', file, `${file}.raw`]);
      expect(same(readFileSync(`${file}.raw`), raw)).toBe(true);
      expect(same(await readWhole(new Uint8Array(readFileSync(file))), raw)).toBe(true);
    });
  }

  it('qemu-img refuses a grain of 0x200001 sectors too', () => {
    const image = hostedSparse(content(8, 3), 8);
    new DataView(image.buffer).setBigUint64(20, 0x200001n, true);
    const file = join(dir.path, 'too-big.vmdk');
    writeFileSync(file, image);
    const r = qemuImg(['info', '-f', 'vmdk', file], { allowFail: true });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/granularity/);
  });
});
