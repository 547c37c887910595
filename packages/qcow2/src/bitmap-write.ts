/**
 * Writing a planned persistent bitmap directory (spec: "Bitmaps", "Bitmap
 * directory", "Bitmap table"), shared by the bitmap edits (bitmap-edit.ts)
 * and resize (bitmap-resize.ts): changed tables and their data go to new
 * clusters with a new directory, cluster 0 is switched to it, and what only
 * the old directory used is released last (the order bitmap-edit.ts
 * describes). Also the bounded reads of a stored bitmap's bits.
 */
import { FreshClusters } from './allocator.js';
import { corrupt, hex, readU32Be, unsupported, writeU64Be } from '@img/block';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS } from './constants.js';
import { type HeaderExtension } from './extensions.js';
import { hasFeature } from './header.js';
import { entryOffset } from './mapping.js';
import type { Qcow2Image } from './core.js';
import { refreshOverlapMap } from './image-overlap.js';
import { writeHeaderCluster } from './header-cluster-write.js';
import type { MappingView } from './mapping-view.js';
import { bitmapCoveredLength } from './bitmaps.js';
import { BITMAP_FLAG_EXTRA_COMPATIBLE, BITMAP_TYPE_DIRTY_TRACKING, serializeBitmapDirectory, serializeBitmapsExtension, type BitmapDirectoryEntry } from './bitmap-edit-directory.js';

const FORMAT = 'qcow2';
/** Most bitmap bytes one bitmap may hold in memory while it is merged (one bit per granule). */
const MAX_BITMAP_BYTES = 64 * 1024 * 1024;
/** qemu's bound on a bitmap's size (its BME_MAX_PHYS_SIZE). */
export const MAX_BITMAP_PHYS_BYTES = 0x2000_0000;
/** qemu's bound on a bitmap table's entries (its BME_MAX_TABLE_SIZE). */
export const MAX_BITMAP_TABLE_SIZE = 0x800_0000;

/** A bitmap of the planned directory. */
export interface Planned {
  entry: BitmapDirectoryEntry;
  /** Bits changed in memory: the table and data are written anew. */
  bits?: Uint8Array;
  /** The stored table (and its data) is no longer used once the switch is done. */
  replaced: boolean;
  /** The entry as stored (undefined: added by this call). */
  stored?: BitmapDirectoryEntry;
}

/** What {@link writeBitmapState} writes: the planned directory and what leaves it. */
interface BitmapState {
  plan: Planned[];
  removed: BitmapDirectoryEntry[];
  /** The stored directory, released once the new one is in place. */
  ext: { bitmapDirectoryOffset: number; bitmapDirectorySize: number } | undefined;
  afterSwitch?: () => Promise<void> | void;
}

/** Writes a planned bitmap directory copy-on-write, switches cluster 0 to it and releases what only the old one used (steps 1-3 of the module comment). */
export async function writeBitmapState(s: Qcow2Image, view: MappingView, state: BitmapState): Promise<void> {
  const cs = s.geom.clusterSize;
  const { plan, removed, ext } = state;
  // What the old state alone uses, read (and checked) before anything is written.
  const release: Array<{ offset: number; bytes: number }> = [];
  for (const e of [...removed, ...plan.filter((p) => p.stored && p.replaced).map((p) => p.stored!)]) release.push(...(await tableClusters(s, e)));
  if (ext) release.push({ offset: ext.bitmapDirectoryOffset, bytes: ext.bitmapDirectorySize });

  await s.beforeFirstWrite(); // dirty bit with lazy refcounts; drops bitmaps the image calls inconsistent
  s.setBitmapTracker(undefined); // the writer's tracker would keep the old directory
  const w = s.writer!;
  // What step 1 allocates: until the switch nothing reaches it, so a failure before then (a full file system)
  // gives it back, as qemu does, instead of leaving leaks.
  const taken = new FreshClusters((offset, bytes) => w.allocator.release(offset, bytes));
  const allocate = async (bytes: number): Promise<number> => {
    const at = await w.allocator.allocate(Math.ceil(bytes / cs));
    taken.add(at, Math.ceil(bytes / cs) * cs);
    s.overlap?.check(s.file, at, bytes);
    return at;
  };
  let newExt: HeaderExtension | undefined;
  try {
    // 1. new tables and data, new directory
    for (const p of plan) {
      if (!p.replaced) continue;
      const bits = p.bits;
      const table = new Uint8Array(p.entry.tableSize * 8);
      for (let e = 0; bits && e < p.entry.tableSize; e++) {
        const chunk = bits.subarray(e * cs, Math.min(bits.length, (e + 1) * cs));
        if (chunk.every((b) => b === 0)) continue;
        const at = await allocate(cs);
        const data = new Uint8Array(cs);
        data.set(chunk);
        await s.storage.write(at, data);
        writeU64Be(table, e * 8, at);
      }
      p.entry.tableOffset = table.length ? await allocate(table.length) : 0; // a disk of 0 bytes has an empty table
      if (table.length) await s.storage.write(p.entry.tableOffset, table);
    }
    if (plan.length) {
      const dir = serializeBitmapDirectory(plan.map((p) => p.entry));
      const dirOffset = await allocate(dir.length);
      await s.storage.write(dirOffset, dir);
      newExt = { type: EXT_BITMAPS, data: serializeBitmapsExtension({ nbBitmaps: plan.length, bitmapDirectorySize: dir.length, bitmapDirectoryOffset: dirOffset }) };
    }
    await s.storage.flush();
  } catch (error) {
    await taken.giveBack();
    throw error;
  }
  // 2. the switch
  await switchBitmaps(s, newExt);
  await state.afterSwitch?.();
  // 3. what only the old state used
  for (const r of release) await w.allocator.release(r.offset, r.bytes);
  await refreshOverlapMap(s, view);
}

/** Whether this code (and qemu) may use the bitmap: a dirty tracking bitmap whose extra data may be ignored. */
export function knownBitmap(e: BitmapDirectoryEntry): boolean {
  return e.type === BITMAP_TYPE_DIRTY_TRACKING && e.granularityBits >= 9 && e.granularityBits <= 31 && (e.extra.length === 0 || (e.flags & BITMAP_FLAG_EXTRA_COMPATIBLE) !== 0);
}

/** Bytes of a bitmap of a disk of `size` bytes at `granularity` bytes per bit. */
export function bitmapBytes(size: number, granularity: number): number {
  return Math.ceil(Math.ceil(size / granularity) / 8);
}

/** The table and data clusters of a stored bitmap (checked against the file). */
async function tableClusters(s: Qcow2Image, e: BitmapDirectoryEntry): Promise<Array<{ offset: number; bytes: number }>> {
  const cs = s.geom.clusterSize;
  const table = await readTable(s, e);
  const out = [{ offset: e.tableOffset, bytes: e.tableSize * 8 }];
  for (let i = 0; i < e.tableSize; i++) {
    const host = entryOffset(readU32Be(table, i * 8), readU32Be(table, i * 8 + 4));
    if (host) out.push({ offset: host, bytes: cs });
  }
  return out;
}

async function readTable(s: Qcow2Image, e: BitmapDirectoryEntry): Promise<Uint8Array> {
  const cs = s.geom.clusterSize;
  if (e.tableSize > MAX_BITMAP_TABLE_SIZE || e.tableOffset % cs !== 0 || e.tableOffset + e.tableSize * 8 > s.fileSize || (e.tableSize > 0 && e.tableOffset === 0)) {
    throw corrupt(FORMAT, s.file, `bitmap "${e.name}" has a table of ${e.tableSize} entries at ${hex(e.tableOffset)}, unaligned or outside the file`, { field: 'bitmap_table_offset', offset: e.tableOffset });
  }
  const table = await s.storage.read(e.tableOffset, e.tableSize * 8);
  for (let i = 0; i < e.tableSize; i++) {
    const host = entryOffset(readU32Be(table, i * 8), readU32Be(table, i * 8 + 4));
    if (host && (host % cs !== 0 || host + cs > s.fileSize)) {
      throw corrupt(FORMAT, s.file, `bitmap "${e.name}" table entry ${i} points to ${hex(host)}, unaligned or outside the file`, { field: 'bitmap table', offset: e.tableOffset + i * 8 });
    }
  }
  return table;
}

/** All-zero bits for a bitmap about to be merged into (bounded as {@link readBits}). */
export function zeroBits(s: Qcow2Image, e: BitmapDirectoryEntry, size: number): Uint8Array {
  const bytes = bitmapBytes(size, 2 ** e.granularityBits);
  if (bytes > MAX_BITMAP_BYTES) throw unsupported(FORMAT, s.file, `bitmap "${e.name}" needs ${bytes} bytes in memory (over ${MAX_BITMAP_BYTES}) to be merged`, { field: 'granularity_bits' });
  return new Uint8Array(bytes);
}

/** The bits of a stored bitmap (bounded: at most {@link MAX_BITMAP_BYTES}). */
export async function readBits(s: Qcow2Image, e: BitmapDirectoryEntry): Promise<Uint8Array> {
  const cs = s.geom.clusterSize;
  const bytes = bitmapBytes(bitmapCoveredLength(s.header.size), 2 ** e.granularityBits);
  if (bytes > MAX_BITMAP_BYTES) throw unsupported(FORMAT, s.file, `bitmap "${e.name}" needs ${bytes} bytes in memory (over ${MAX_BITMAP_BYTES}) to be merged`, { field: 'granularity_bits' });
  if (e.tableSize !== Math.ceil(bytes / cs)) throw corrupt(FORMAT, s.file, `bitmap "${e.name}" has ${e.tableSize} table entries (expected ${Math.ceil(bytes / cs)})`, { field: 'bitmap_table_size' });
  const table = await readTable(s, e);
  const bits = new Uint8Array(bytes);
  for (let i = 0; i < e.tableSize; i++) {
    const lo = readU32Be(table, i * 8 + 4);
    const host = entryOffset(readU32Be(table, i * 8), lo);
    const start = i * cs;
    const end = Math.min(bytes, start + cs);
    if (host) bits.set(await s.storage.read(host, end - start), start);
    else if (lo & 1) bits.fill(0xff, start, end); // bit 0 with no offset: every bit of the cluster set
  }
  return bits;
}

/**
 * Puts the new bitmaps extension (or none) in cluster 0 as the module
 * comment says: atomically where everything fits in the first sector,
 * otherwise with the autoclear bit clear while the rest is written.
 */
async function switchBitmaps(s: Qcow2Image, ext: HeaderExtension | undefined): Promise<void> {
  const h = s.header;
  const bit = 1n << BigInt(AUTOCLEAR_BITMAPS);
  const wasSet = hasFeature(h.autoclearFeatures, AUTOCLEAR_BITMAPS);
  // The bitmaps extension goes where it was, or last (as qemu writes it): the others do not move.
  const extensions = [...s.extensions];
  const i = extensions.findIndex((e) => e.type === EXT_BITMAPS);
  if (ext && i >= 0) extensions[i] = ext;
  else if (ext) extensions.push(ext);
  else if (i >= 0) extensions.splice(i, 1);
  s.setExtensions(extensions);
  s.setHeader({ autoclearFeatures: ext ? h.autoclearFeatures | bit : h.autoclearFeatures & ~bit });
  // The bit is cleared on disk first only where the switch takes more than one sector write.
  const interim = wasSet ? { autoclearFeatures: h.autoclearFeatures & ~bit } : undefined;
  await writeHeaderCluster(s, (need, cs) => unsupported(FORMAT, s.file, `the header, its extensions and the backing file name would need ${need} bytes, more than one ${cs}-byte cluster`, { field: 'bitmaps extension' }), { sectorZeroLast: true, interim });
}
