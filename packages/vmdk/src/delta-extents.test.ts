/**
 * ESXi delta extents: vmfsSparse (COWD) and seSparse. qemu-img cannot
 * write them, so the images are built here, byte by byte from the format
 * notes (libvmdk's for COWD, the structures qemu's block/vmdk.c reads for
 * seSparse), without any of this package's code; qemu-img is the oracle
 * that reads them back.
 */
import { diskExtents, ImageError, MemoryStorage } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, normalizeExtents, normalizeQemuMap, qemuImg, qemuInfo, qemuMap, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openVmdk, type VmdkOpenOptions } from './open.js';
import { checkVmdk } from './check.js';
import { memoryResolver } from '../test/resolver.js';

const S = 512;
const hasVmdkinfo = spawnSync('sh', ['-c', 'command -v vmdkinfo'], { stdio: 'ignore' }).status === 0 || process.env.CI === 'true';

/** A grain's content, or for seSparse one of the two entry types that read as zeros. */
type GrainContent = Uint8Array | 'zero' | 'unmapped';

function u32(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset).setUint32(at, v, true);
}
function u64(b: Uint8Array, at: number, v: bigint): void {
  new DataView(b.buffer, b.byteOffset).setBigUint64(at, v, true);
}

/**
 * A COWD extent: 2048-byte header (magic "COWD", version 1, flags 3,
 * capacity, grain size, directory sector, directory entries, next free
 * sector), the directory at sector 4, then the tables that hold a grain
 * (4096 u32 entries each), then the grains in the order given.
 */
function buildCowd(capacity: number, grainSectors: number, grains: Array<[number, Uint8Array]>): Uint8Array {
  const gdEntries = Math.ceil(capacity / (grainSectors * 4096));
  const gdSectors = Math.ceil((gdEntries * 4) / S);
  const usedTables = [...new Set(grains.map(([g]) => Math.floor(g / 4096)))];
  const tableSector = new Map<number, number>();
  let next = 4 + gdSectors;
  for (const t of usedTables) {
    tableSector.set(t, next);
    next += 32;
  }
  const grainSector = new Map<number, number>();
  for (const [g] of grains) {
    grainSector.set(g, next);
    next += grainSectors;
  }
  const out = new Uint8Array(next * S);
  out.set([0x43, 0x4f, 0x57, 0x44], 0); // "COWD"
  u32(out, 4, 1);
  u32(out, 8, 3);
  u32(out, 12, capacity);
  u32(out, 16, grainSectors);
  u32(out, 20, 4);
  u32(out, 24, gdEntries);
  u32(out, 28, next);
  for (const [t, sector] of tableSector) u32(out, 4 * S + t * 4, sector);
  for (const [g, data] of grains) {
    const sector = grainSector.get(g)!;
    u32(out, tableSector.get(Math.floor(g / 4096))! * S + (g % 4096) * 4, sector);
    out.set(data.subarray(0, grainSectors * S), sector * S);
  }
  return out;
}

/** Where the seSparse builder put each area (sectors), for the negative tests to aim at. */
interface SeLayout {
  bytes: Uint8Array;
  gd: number;
  tables: number;
  grains: number;
  /** Byte offset of the GTE of each grain given. */
  gteAt: Map<number, number>;
}

/**
 * A seSparse extent: constant header (sector 0), volatile header (1),
 * journal header (2), journal (3..10), grain directory, grain table area,
 * free bitmap, backmap, then the grain area. Tables are numbered in the
 * order their first grain is given (not in guest order) and grains get the
 * cluster indexes in `clusters` (default 0, 1, 2, ...), so both indirections
 * are exercised.
 */
function buildSeSparse(capacity: number, grains: Array<[number, GrainContent]>, clusters?: number[]): SeLayout {
  const gtCover = 8 * 4096; // sectors one table covers
  const gdEntries = Math.ceil(capacity / gtCover);
  const gdSectors = Math.max(1, Math.ceil((gdEntries * 8) / S));
  const order: number[] = [];
  for (const [g] of grains) if (!order.includes(Math.floor(g / 4096))) order.push(Math.floor(g / 4096));
  const gd = 11;
  const tables = gd + gdSectors;
  const tablesSize = Math.max(1, order.length) * 64;
  const bitmap = tables + tablesSize;
  const backmap = bitmap + 1;
  const grainArea = backmap + 1;
  let maxCluster = -1;
  const cluster = new Map<number, number>();
  let k = 0;
  for (const [g, c] of grains) {
    if (!(c instanceof Uint8Array)) continue;
    const idx = clusters?.[k] ?? k;
    k++;
    cluster.set(g, idx);
    maxCluster = Math.max(maxCluster, idx);
  }
  const end = grainArea + (maxCluster + 1) * 8;
  const out = new Uint8Array(end * S);
  u64(out, 0, 0xcafebaben);
  u64(out, 8, 0x0000000200000001n);
  u64(out, 16, BigInt(capacity));
  u64(out, 24, 8n);
  u64(out, 32, 64n);
  const areas: Array<[number, number]> = [
    [1, 1], // volatile header
    [2, 1], // journal header
    [3, 8], // journal
    [gd, gdSectors],
    [tables, tablesSize],
    [bitmap, 1],
    [backmap, 1],
    [grainArea, end - grainArea],
  ];
  areas.forEach(([offset, size], i) => {
    u64(out, 80 + i * 16, BigInt(offset));
    u64(out, 88 + i * 16, BigInt(size));
  });
  u64(out, S, 0xcafecafen);
  order.forEach((t, i) => u64(out, gd * S + t * 8, 0x1000000000000000n | BigInt(i)));
  const gteAt = new Map<number, number>();
  for (const [g, c] of grains) {
    const at = (tables + order.indexOf(Math.floor(g / 4096)) * 64) * S + (g % 4096) * 8;
    gteAt.set(g, at);
    if (c === 'unmapped') u64(out, at, 0x1000000000000000n);
    else if (c === 'zero') u64(out, at, 0x2000000000000000n);
    else {
      const idx = BigInt(cluster.get(g)!);
      u64(out, at, (3n << 60n) | ((idx & 0xfffn) << 48n) | (idx >> 12n));
      out.set(c.subarray(0, 8 * S), (grainArea + Number(idx) * 8) * S);
    }
  }
  return { bytes: out, gd, tables, grains: grainArea, gteAt };
}

function descriptor(createType: string, type: string, sectors: number, file: string, parent?: { name: string; cid: string }): string {
  return [
    '# Disk DescriptorFile',
    'version=1',
    'CID=5c0ffee5',
    `parentCID=${parent ? parent.cid : 'ffffffff'}`,
    `createType="${createType}"`,
    ...(parent ? [`parentFileNameHint="${parent.name}"`] : []),
    '',
    '# Extent description',
    `RW ${sectors} ${type} "${file}"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.adapterType = "lsilogic"',
    '',
  ].join('\n');
}

const SIZE = 40 << 20;
const SECTORS = SIZE / S;
const grainOf = (seed: number, bytes: number) => seededBytes(bytes, seed);

/** The COWD child's grains (512-byte grains, as ESX redo logs): scattered, over several tables, not in guest order. */
function cowdGrains(): Array<[number, Uint8Array]> {
  return [
    [81919, grainOf(1, S)], // the last sector
    [0, grainOf(2, S)],
    [1, grainOf(3, S)],
    [4095, grainOf(4, S)],
    [4096, grainOf(5, S)],
    [30000, grainOf(6, S)],
  ];
}

/** The seSparse child's grains (4 KiB): data, zero and unmapped entries over three tables. */
function seGrains(): Array<[number, GrainContent]> {
  return [
    [5000, grainOf(11, 4096)], // second table first: table index 0 maps to guest table 1
    [0, grainOf(12, 4096)],
    [1, 'zero'],
    [2, 'unmapped'],
    [4095, grainOf(13, 4096)],
    [8192, grainOf(14, 4096)],
    [10239, grainOf(15, 4096)], // the last grain
    [9000, 'zero'],
  ];
}

function open(files: Map<string, Uint8Array>, top: string, options: VmdkOpenOptions = {}) {
  return openVmdk(MemoryStorage.from(files.get(top)!, { name: top, readOnly: true }), { resolver: memoryResolver(files), ...options });
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    const v = (await p) as { close?: () => Promise<void> };
    await v?.close?.();
    return 'ok';
  } catch (e) {
    if (ImageError.isInstance(e)) return e.code;
    throw e;
  }
}

/** Opens, walks the extents, reads everything: the error code wherever it surfaces. */
async function readAllCode(files: Map<string, Uint8Array>, top: string, options: VmdkOpenOptions = {}): Promise<string> {
  return codeOf(
    (async () => {
      const disk = await open(files, top, { noBacking: true, ...options });
      try {
        await diskExtents(disk);
        await disk.read(0, disk.size);
      } finally {
        await disk.close();
      }
    })(),
  );
}

const cowdFiles = (bytes: Uint8Array, sectors = SECTORS) =>
  new Map([
    ['c.vmdk', new TextEncoder().encode(descriptor('vmfsSparse', 'VMFSSPARSE', sectors, 'c-delta.vmdk'))],
    ['c-delta.vmdk', bytes],
  ]);
const seFiles = (bytes: Uint8Array, sectors = SECTORS) =>
  new Map([
    ['s.vmdk', new TextEncoder().encode(descriptor('seSparse', 'SESPARSE', sectors, 's-sesparse.vmdk'))],
    ['s-sesparse.vmdk', bytes],
  ]);

describe('vmfsSparse (COWD) and seSparse extents in memory', () => {
  it('COWD: grains read from their sectors, the rest is a hole; extents from the tables alone', async () => {
    const disk = await open(cowdFiles(buildCowd(SECTORS, 1, cowdGrains())), 'c.vmdk');
    try {
      expect(disk.size).toBe(SIZE);
      for (const [g, data] of cowdGrains()) expect(await disk.read(g * S, S)).toEqual(data);
      expect(await disk.read(2 * S, S)).toEqual(new Uint8Array(S));
      const ext = normalizeExtents(await diskExtents(disk));
      expect(ext.filter((e) => e.kind === 'data').map((e) => [e.offset / S, e.length / S])).toEqual([
        [0, 2],
        [4095, 2],
        [30000, 1],
        [81919, 1],
      ]);
      expect(disk.extentList[0]).toMatchObject({ type: 'VMFSSPARSE', grainSize: S });
    } finally {
      await disk.close();
    }
  });

  it('seSparse: allocated, zero and unmapped entries; cluster indexes above 4095 use the split bits', async () => {
    const grains = seGrains();
    // Cluster 4103 puts the index's high part (1) in bits 0..47 and its low 12 bits (7) in bits 48..59.
    const built = buildSeSparse(SECTORS, grains, [4103, 0, 2, 1, 4]);
    const disk = await open(seFiles(built.bytes), 's.vmdk');
    try {
      for (const [g, c] of grains) expect(await disk.read(g * 4096, 4096)).toEqual(c instanceof Uint8Array ? c : new Uint8Array(4096));
      const ext = normalizeExtents(await diskExtents(disk));
      const at = (g: number) => ext.find((e) => e.offset <= g * 4096 && g * 4096 < e.offset + e.length)?.kind;
      expect([at(0), at(1), at(2), at(3), at(5000), at(9000), at(10239)]).toEqual(['data', 'zero', 'zero', 'hole', 'data', 'zero', 'data']);
      const check = await checkVmdk(MemoryStorage.from(seFiles(built.bytes).get('s.vmdk')!, { name: 's.vmdk' }), { resolver: memoryResolver(seFiles(built.bytes)) });
      expect(check.problems).toEqual([]);
      expect(check.allocatedGrains).toBe(5);
    } finally {
      await disk.close();
    }
  });

  it('both are read-only, and an untrusted open refuses the extent file before asking the resolver', async () => {
    for (const [files, top] of [
      [cowdFiles(buildCowd(SECTORS, 1, cowdGrains())), 'c.vmdk'],
      [seFiles(buildSeSparse(SECTORS, seGrains()).bytes), 's.vmdk'],
    ] as const) {
      const opened: string[] = [];
      const storage = () => MemoryStorage.from(files.get(top)!, { name: top });
      expect(await codeOf(openVmdk(storage(), { resolver: memoryResolver(files, opened), readOnly: false }))).toBe('ERR_IMG_UNSUPPORTED');
      opened.length = 0;
      expect(await codeOf(openVmdk(storage(), { resolver: memoryResolver(files, opened), untrusted: true }))).toBe('ERR_IMG_UNSAFE');
      expect(opened).toEqual([]);
    }
  });
});

describe('bad COWD and seSparse extents: a clean ImageError, never a crash', () => {
  const se = () => buildSeSparse(SECTORS, seGrains());
  const setU64 = (b: Uint8Array, at: number, v: bigint) => {
    const c = b.slice();
    u64(c, at, v);
    return c;
  };
  const setU32 = (b: Uint8Array, at: number, v: number) => {
    const c = b.slice();
    u32(c, at, v);
    return c;
  };
  it('seSparse: bad magic, version, grain size, flags, volatile magic, dirty journal', async () => {
    const b = se().bytes;
    expect(await readAllCode(seFiles(setU64(b, 0, 0xcafebaddn)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(b, 8, 0x0000000300000001n)), 's.vmdk')).toBe('ERR_IMG_UNSUPPORTED');
    expect(await readAllCode(seFiles(setU64(b, 24, 16n)), 's.vmdk')).toBe('ERR_IMG_UNSUPPORTED');
    expect(await readAllCode(seFiles(setU64(b, 40, 1n)), 's.vmdk')).toBe('ERR_IMG_UNSUPPORTED');
    expect(await readAllCode(seFiles(setU64(b, S, 0xdeadn)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(b, S + 24, 1n)), 's.vmdk')).toBe('ERR_IMG_UNSUPPORTED');
    expect(await readAllCode(seFiles(setU64(b, 80, 1n << 40n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
  });
  it('seSparse: absurd capacity, directory too small or out of the file, bad directory entry', async () => {
    const l = se();
    expect(await readAllCode(seFiles(setU64(l.bytes, 16, 1n << 50n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(l.bytes, 16, 0xffffffffffffffffn)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(l.bytes, 128, 1n << 30n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(l.bytes, 136, 0n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(l.bytes, l.gd * S, 0x2000000000000000n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(l.bytes, l.gd * S, 0x10000000ffff0000n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
  });
  it('seSparse: grain entries of an unknown type, past the file, or into metadata', async () => {
    const l = se();
    const at = l.gteAt.get(0)!;
    expect(await readAllCode(seFiles(setU64(l.bytes, at, 0x5000000000000000n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(l.bytes, at, 0x0000000000000001n)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(seFiles(setU64(l.bytes, at, 0x3000ffffffffffffn)), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    // A cluster index of -(grain area - directory) / 8 is impossible; aim at the tables by growing the grain area's offset backwards instead.
    expect(await readAllCode(seFiles(setU64(l.bytes, 192, BigInt(l.tables))), 's.vmdk')).toBe('ERR_IMG_CORRUPT');
    const check = await checkVmdk(MemoryStorage.from(seFiles(l.bytes).get('s.vmdk')!, { name: 's.vmdk' }), { resolver: memoryResolver(seFiles(setU64(l.bytes, at, 0x5000000000000000n))) });
    // qemu-img's check cannot look the entry up: "ERROR: could not get cluster_offset for sector 0", "Check failed: Operation not permitted".
    expect(check.problems.map((p) => p.code)).toEqual(['check-failed', 'entry-invalid']);
    expect([check.checkErrors, check.messages[0], check.checkFailed]).toEqual([1, 'ERROR: could not get cluster_offset for sector 0', 'Operation not permitted']);
  });
  it('COWD: directory out of the file or too small, grain into the header or past the end, absurd grain size', async () => {
    const b = buildCowd(SECTORS, 1, cowdGrains());
    expect(await readAllCode(cowdFiles(setU32(b, 20, 0x7fffffff)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(cowdFiles(setU32(b, 20, 1)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(cowdFiles(setU32(b, 24, 2)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(cowdFiles(setU32(b, 16, 0)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(cowdFiles(setU32(b, 16, 1 << 30)), 'c.vmdk')).toBe('ERR_IMG_UNSUPPORTED');
    expect(await readAllCode(cowdFiles(setU32(b, 12, 0xffffffff)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    const table = new DataView(b.buffer).getUint32(4 * S, true) * S;
    expect(await readAllCode(cowdFiles(setU32(b, table, 2)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(cowdFiles(setU32(b, table, 0x7fffffff)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(cowdFiles(setU32(b, 4 * S, 1)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
    expect(await readAllCode(cowdFiles(b.subarray(0, 1000)), 'c.vmdk')).toBe('ERR_IMG_CORRUPT');
  });
});

describeQemu('vmfsSparse and seSparse children over a base: qemu-img reads them identically', () => {
  const dir = tempDir('vmdk-delta-');
  afterAll(() => dir.cleanup());
  const at = (name: string) => join(dir.path, name);

  function baseCid(path: string): string {
    return /^CID=([0-9a-f]+)/m.exec(readFileSync(path, 'latin1'))![1]!;
  }

  async function compare(top: string): Promise<void> {
    qemuImg(['convert', '-O', 'raw', at(top), at(`${top}.raw`)]);
    const expected = new Uint8Array(readFileSync(at(`${top}.raw`)));
    const disk = await openVmdk(await FileStorage.open(at(top)), { resolver: fileResolver });
    try {
      expect(disk.size).toBe(expected.length);
      const ours = await disk.read(0, disk.size);
      expect(Buffer.compare(Buffer.from(ours), Buffer.from(expected))).toBe(0);
      expect(normalizeExtents(await diskExtents(disk))).toEqual(normalizeQemuMap(qemuMap(at(top))));
      const top0 = normalizeExtents(await diskExtents(disk, { topOnly: true }));
      expect(top0.filter((e) => e.kind !== 'hole').length).toBeGreaterThan(0);
      // img info's format-specific part as qemu-img info prints it: create type, CIDs, the extent's type, size and grain.
      type Spec = { 'create-type': string; cid: number; 'parent-cid': number; extents: Array<{ format: string; 'virtual-size': number; 'cluster-size'?: number }> };
      const theirs = (qemuInfo(at(top)) as { 'format-specific': { data: Spec } })['format-specific'].data;
      const mine = (await disk.info()).formatSpecific as Spec;
      expect([mine['create-type'], mine.cid, mine['parent-cid']]).toEqual([theirs['create-type'], theirs.cid, theirs['parent-cid']]);
      expect(mine.extents.map((e) => [e.format, e['virtual-size'], e['cluster-size']])).toEqual(theirs.extents.map((e) => [e.format, e['virtual-size'], e['cluster-size']]));
    } finally {
      await disk.close();
    }
  }

  it('a COWD delta over a monolithicFlat base', async () => {
    qemuImg(['create', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', at('flat.vmdk'), String(SIZE)]);
    writeFileSync(at('flat-flat.vmdk'), seededBytes(SIZE, 99));
    writeFileSync(at('c-delta.vmdk'), buildCowd(SECTORS, 1, cowdGrains()));
    writeFileSync(at('c.vmdk'), descriptor('vmfsSparse', 'VMFSSPARSE', SECTORS, 'c-delta.vmdk', { name: 'flat.vmdk', cid: baseCid(at('flat.vmdk')) }));
    const info = qemuInfo(at('c.vmdk')) as { 'virtual-size': number; 'format-specific': { data: { extents: Array<{ format: string }> } } };
    expect(info['virtual-size']).toBe(SIZE);
    expect(info['format-specific'].data.extents[0]!.format).toBe('VMFSSPARSE');
    await compare('c.vmdk');
  }, 180_000);

  it('a COWD delta with 64 KiB grains, read alone (no base)', async () => {
    const grains: Array<[number, Uint8Array]> = [
      [3, grainOf(21, 65536)],
      [0, grainOf(22, 65536)],
      [639, grainOf(23, 65536)],
    ];
    writeFileSync(at('c2-delta.vmdk'), buildCowd(SECTORS, 128, grains));
    writeFileSync(at('c2.vmdk'), descriptor('vmfsSparse', 'VMFSSPARSE', SECTORS, 'c2-delta.vmdk'));
    await compare('c2.vmdk');
  }, 180_000);

  it('a seSparse delta over a monolithicSparse base with holes', async () => {
    qemuImg(['create', '-f', 'vmdk', at('sparse.vmdk'), String(SIZE)]);
    spawnSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0xa5 20M 64k', '-c', 'write -P 0x33 39M 1M', at('sparse.vmdk')]);
    writeFileSync(at('s-sesparse.vmdk'), buildSeSparse(SECTORS, seGrains(), [4103, 0, 2, 1, 4]).bytes);
    writeFileSync(at('s.vmdk'), descriptor('seSparse', 'SESPARSE', SECTORS, 's-sesparse.vmdk', { name: 'sparse.vmdk', cid: baseCid(at('sparse.vmdk')) }));
    await compare('s.vmdk');
  }, 180_000);

  it('img check stops where qemu-img check stops on a damaged COWD or seSparse delta (exit 1, the same line)', async () => {
    const cowd = buildCowd(SECTORS, 1, cowdGrains());
    const table = new DataView(cowd.buffer).getUint32(4 * S, true) * S;
    const l = buildSeSparse(SECTORS, seGrains());
    const with32 = (b: Uint8Array, at: number, v: number) => (u32((b = b.slice()), at, v), b);
    const with64 = (b: Uint8Array, at: number, v: bigint) => (u64((b = b.slice()), at, v), b);
    const cases: [string, string, string, Uint8Array][] = [
      ['COWD grain past the end', 'VMFSSPARSE', 'vmfsSparse', with32(cowd, table, 0x7fff_ffff)],
      ['seSparse grain of an unknown type', 'SESPARSE', 'seSparse', with64(l.bytes, l.gteAt.get(0)!, 0x5000000000000000n)],
      ['seSparse grain past the end', 'SESPARSE', 'seSparse', with64(l.bytes, l.gteAt.get(0)!, 0x3000000000100000n)],
    ];
    for (const [what, type, createType, bytes] of cases) {
      writeFileSync(at('d-delta.vmdk'), bytes);
      writeFileSync(at('d.vmdk'), descriptor(createType, type, SECTORS, 'd-delta.vmdk'));
      const qemu = spawnSync('qemu-img', ['check', at('d.vmdk')], { encoding: 'utf8' });
      const storage = await FileStorage.open(at('d.vmdk'), { readOnly: true });
      let ours;
      try {
        ours = await checkVmdk(storage, { resolver: fileResolver });
      } finally {
        await storage.close();
      }
      expect([what, ours.checkErrors ? 1 : ours.corruptions ? 2 : 0, ours.messages[0], ours.checkFailed]).toEqual([what, qemu.status, qemu.stderr.split('\n')[0], /Check failed: (.*)/.exec(qemu.stderr)?.[1]]);
      expect(qemu.status, what).toBe(1);
    }
  });

  // libvmdk reads COWD extents; it refuses SESPARSE extent lines ("unsupported extent type"), so qemu-img is seSparse's only oracle.
  it.runIf(hasVmdkinfo)('vmdkinfo (libvmdk) opens the COWD child as a second reader', () => {
    const r = spawnSync('vmdkinfo', [at('c2.vmdk')], { encoding: 'utf8' });
    expect(r.stdout, r.stderr).toMatch(/Disk type:\s+VMFS sparse/);
    expect(r.stdout).toMatch(/Media size:.*\(41943040 bytes\)/);
  });
});
