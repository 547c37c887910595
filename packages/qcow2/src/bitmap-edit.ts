/**
 * editQcow2Bitmaps: qemu-img bitmap for qcow2 (spec: "Bitmaps", "Bitmap
 * directory", "Bitmap table", "Dirty tracking bitmaps"). Adds, removes,
 * clears, enables, disables and merges persistent dirty bitmaps.
 *
 * The operations are applied in order to an in-memory copy of the
 * directory, and refused as a whole before anything is written if one of
 * them fails (qemu-img keeps the ones before the failing one). Then the new
 * state is written copy-on-write, so that a crash at any point leaves either
 * the old bitmaps, the new ones, or bitmaps the image itself calls
 * inconsistent (autoclear bit 0 clear: qemu ignores them and `qemu-img
 * check` counts their clusters as leaks), never a corrupt image:
 *
 * 1. changed bitmap tables, their data clusters and a new directory go to
 *    freshly allocated clusters; unchanged bitmaps keep their tables; flush;
 * 2. the header switch, through the core's one cluster-0 writer
 *    (writeHeaderCluster, first sector last): where header and extensions fit in the first
 *    sector, one sector write; otherwise the autoclear bit is cleared (one
 *    sector write, flush), the extension area past the first sector is
 *    written (flush), and the first sector with the new extension and the
 *    bit set again is written last (flush);
 * 3. the old directory and the tables and data clusters only the old state
 *    used are released (a crash before that leaks them).
 */
import { invalidArg, lentStorage, unsupported, utf8Encode } from '@img/block';
import type { Resolver, Storage } from '@img/block';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS, MAX_BITMAPS, MAX_BITMAP_DIRECTORY_SIZE } from './constants.js';
import { findExtension, parseBitmapsExtension, parseExtensions } from './extensions.js';
import { hasFeature } from './header.js';
import { readHeaderCluster } from './header-check.js';
import { openQcow2Image } from './open.js';
import { closeQcow2 } from './io.js';
import type { Qcow2Image } from './core.js';
import type { MappingView } from './mapping-view.js';
import { bitmapCoveredLength, readBitmapDirectory, type Qcow2BitmapInfo, type Qcow2DirtyBitmap } from './bitmaps.js';
import { BITMAP_FLAG_AUTO, BITMAP_FLAG_IN_USE, BITMAP_TYPE_DIRTY_TRACKING, MAX_BITMAP_NAME, bitmapEntrySize, checkBitmapsExtension, parseBitmapDirectory, type BitmapDirectoryEntry } from './bitmap-edit-directory.js';
import { MAX_BITMAP_PHYS_BYTES, MAX_BITMAP_TABLE_SIZE, bitmapBytes, knownBitmap, readBits, writeBitmapState, zeroBits, type Planned } from './bitmap-write.js';

const FORMAT = 'qcow2';

/** One operation of {@link editQcow2Bitmaps}, as qemu-img bitmap spells them. */
export type Qcow2BitmapOp =
  | {
      op: 'add';
      name: string;
      /** Bytes per bit: a power of two from 512 to 2 GiB (default: the cluster size, at least 4 KiB and at most 64 KiB, as qemu). */
      granularity?: number;
      /** Create it disabled (not recording writes). */
      disabled?: boolean;
    }
  | { op: 'remove' | 'clear' | 'enable' | 'disable'; name: string }
  | {
      op: 'merge';
      /** The bitmap that receives the bits. */
      name: string;
      /** A bitmap of this image (its state after the operations before this one), or one read from another image with readQcow2DirtyBitmap. */
      source: string | Qcow2DirtyBitmap;
    };

/** Options of {@link editQcow2Bitmaps}. */
export interface Qcow2BitmapEditOptions {
  /** Opens an external data file, if the image has one (the bitmaps do not need it, but a writable open does). */
  resolver?: Resolver;
  /** Called once the new state is on disk, before old clusters are released (tests use it to stop there). */
  afterSwitch?: () => Promise<void> | void;
}

/**
 * Applies qemu-img bitmap's operations, in order, to the qcow2 image in
 * `storage` (opened for writing, flushed and left open: the caller closes
 * it; backing and data files are not opened). Everything is checked before anything is written: one
 * refused operation leaves the image as it was. Errors carry qemu-img's
 * wording ("Bitmap already exists: b0", "Dirty bitmap 'b0' not found",
 * "Granularity must be power of 2 and at least 512", "Cannot store dirty
 * bitmaps in qcow2 v2 files", "Bitmap 'b0' is inconsistent and cannot be
 * used") after "Operation add on bitmap b0 failed: ".
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('vm.qcow2', { readOnly: false });
 * await editQcow2Bitmaps(storage, [
 *   { op: 'add', name: 'backup-1', granularity: 65536 },
 *   { op: 'merge', name: 'backup-1', source: 'backup-0' },
 * ]);
 * await storage.close();
 * ```
 */
export async function editQcow2Bitmaps(storage: Storage, ops: readonly Qcow2BitmapOp[], options: Qcow2BitmapEditOptions = {}): Promise<void> {
  if (!Array.isArray(ops) || ops.length === 0) throw invalidArg(FORMAT, 'Need at least one of --add, --remove, --clear, --enable, --disable, or --merge', { field: 'ops' });
  const core = await openQcow2Image(lentStorage(storage), { readOnly: false, noBacking: true, ...(options.resolver ? { resolver: options.resolver } : {}) });
  try {
    await editState(core, core.active, ops, options);
  } finally {
    await closeQcow2(core);
  }
}

/**
 * Adds persistent bitmap `name` (enabled unless `disabled`), as
 * `qemu-img bitmap --add [-g granularity]`. See {@link editQcow2Bitmaps}.
 */
export function addQcow2Bitmap(storage: Storage, name: string, options: { granularity?: number; disabled?: boolean } = {}): Promise<void> {
  return editQcow2Bitmaps(storage, [{ op: 'add', name, ...options }]);
}

/** Removes persistent bitmap `name`, as `qemu-img bitmap --remove`. See {@link editQcow2Bitmaps}. */
export function removeQcow2Bitmap(storage: Storage, name: string): Promise<void> {
  return editQcow2Bitmaps(storage, [{ op: 'remove', name }]);
}

/**
 * The persistent bitmaps of the qcow2 image in `storage` as qemu-img info
 * lists them (name, granularity, flags "in-use"/"auto"), read-only. An
 * image whose bitmaps are all inconsistent (autoclear bit 0 clear: a
 * program that did not know them wrote it) and a version 2 image have none.
 *
 * @example
 * ```ts
 * for (const b of await listQcow2Bitmaps(storage)) console.log(b.name, b.granularity, b.flags);
 * ```
 */
export async function listQcow2Bitmaps(storage: Storage, file: string = storage.name): Promise<Qcow2BitmapInfo[]> {
  const fileSize = await storage.size();
  const head = await storage.read(0, Math.min(fileSize, 2 * 1024 * 1024));
  const { header } = readHeaderCluster(head, file);
  const clusterSize = 2 ** header.clusterBits;
  if (header.version < 3 || !hasFeature(header.autoclearFeatures, AUTOCLEAR_BITMAPS)) return [];
  const ext = parseBitmapsExtension(findExtension(parseExtensions(head.subarray(0, clusterSize), header.headerLength, clusterSize, file), EXT_BITMAPS), file);
  return ext ? readBitmapDirectory(storage, ext, fileSize, clusterSize, file) : [];
}

/** The default granularity qemu gives a new bitmap: the cluster size, within 4 KiB..64 KiB. */
export function defaultQcow2BitmapGranularity(clusterSize: number): number {
  return Math.min(65536, Math.max(4096, clusterSize));
}

async function editState(s: Qcow2Image, view: MappingView, ops: readonly Qcow2BitmapOp[], options: Qcow2BitmapEditOptions): Promise<void> {
  const cs = s.geom.clusterSize;
  const size = bitmapCoveredLength(s.header.size);
  const consistent = hasFeature(s.header.autoclearFeatures, AUTOCLEAR_BITMAPS);
  const ext = parseBitmapsExtension(findExtension(s.extensions, EXT_BITMAPS), s.file);
  // Bitmaps the image calls inconsistent are dropped on the first write (beforeFirstWrite), as qemu drops them.
  let stored: BitmapDirectoryEntry[] = [];
  if (ext && consistent && s.header.version >= 3) {
    checkBitmapsExtension(ext, s.fileSize, cs, s.file);
    stored = parseBitmapDirectory(await s.storage.read(ext.bitmapDirectoryOffset, ext.bitmapDirectorySize), ext.nbBitmaps, ext.bitmapDirectoryOffset, s.file);
  }
  const plan: Planned[] = stored.map((e) => ({ entry: { ...e }, replaced: false, stored: e }));
  // A bitmap's bits are held in memory only to merge (a replaced bitmap without bits is all zeros).
  const loadBits = async (p: Planned): Promise<Uint8Array> => (p.bits ??= p.stored && !p.replaced ? await readBits(s, p.stored) : zeroBits(s, p.entry, size));
  const removed: BitmapDirectoryEntry[] = [];
  // A bitmap written anew gets the table size the disk size asks for (whatever the stored one said).
  const replace = (p: Planned) => {
    p.replaced = true;
    p.entry.tableSize = Math.ceil(bitmapBytes(size, 2 ** p.entry.granularityBits) / cs);
  };

  for (const o of ops) {
    const name = String(o?.name ?? '');
    const fail = (message: string, field = 'bitmap') => invalidArg(FORMAT, `${s.file}: Operation ${String(o?.op)} on bitmap ${name} failed: ${message}`, { field });
    const find = (n: string): Planned => {
      const p = plan.find((x) => x.entry.name === n);
      if (!p) throw fail(`Dirty bitmap '${n}' not found`);
      return p;
    };
    const usable = (p: Planned): Planned => {
      if (p.entry.flags & BITMAP_FLAG_IN_USE || !knownBitmap(p.entry)) {
        throw fail(`Bitmap '${p.entry.name}' is inconsistent and cannot be used (remove it with qemu-img bitmap --remove)`);
      }
      return p;
    };
    switch (o?.op) {
      case 'add': {
        if (name === '') throw fail('Bitmap name cannot be empty', 'name');
        if (plan.some((x) => x.entry.name === name)) throw fail(`Bitmap already exists: ${name}`, 'name');
        const g = o.granularity ?? defaultQcow2BitmapGranularity(cs);
        if (!Number.isInteger(g) || g < 512 || g > 2 ** 31 || (g & (g - 1)) !== 0) throw fail('Granularity must be power of 2 and at least 512', 'granularity');
        if (s.header.version < 3) throw unsupported(FORMAT, s.file, `Operation add on bitmap ${name} failed: Cannot store dirty bitmaps in qcow2 v2 files`, { field: 'version' });
        const persistent = (why: string, field: string) => fail(`Can't make bitmap '${name}' persistent: ${why}`, field);
        // qemu counts the disk in whole sectors and refuses a bitmap table at offset 0, so it can neither store nor read a
        // bitmap of a disk shorter than one sector (its own bitmap --add fails there too).
        if (size === 0) throw unsupported(FORMAT, s.file, `Operation add on bitmap ${name} failed: the disk size ${s.header.size} at 0x18 is less than one 512-byte sector, which a persistent bitmap cannot cover`, { field: 'size', offset: 24, actual: s.header.size });
        if (utf8Encode(name).length > MAX_BITMAP_NAME) throw persistent(`Name length exceeds maximum (${MAX_BITMAP_NAME} characters)`, 'name');
        const bytes = bitmapBytes(size, g);
        const tableSize = Math.ceil(bytes / cs);
        if (bytes > MAX_BITMAP_PHYS_BYTES || tableSize > MAX_BITMAP_TABLE_SIZE) throw persistent('Too much space will be occupied by the bitmap. Use larger granularity', 'granularity');
        if (plan.length >= MAX_BITMAPS) throw persistent('Maximum number of persistent bitmaps is already reached', 'bitmaps');
        const entry: BitmapDirectoryEntry = { tableOffset: 0, tableSize, flags: o.disabled ? 0 : BITMAP_FLAG_AUTO, type: BITMAP_TYPE_DIRTY_TRACKING, granularityBits: Math.log2(g), name, extra: new Uint8Array(0) };
        if (plan.reduce((n, x) => n + bitmapEntrySize(x.entry), bitmapEntrySize(entry)) > MAX_BITMAP_DIRECTORY_SIZE) throw persistent('Not enough space in the bitmap directory', 'bitmaps');
        plan.push({ entry, replaced: true });
        break;
      }
      case 'remove': {
        const p = find(name);
        plan.splice(plan.indexOf(p), 1);
        if (p.stored) removed.push(p.stored);
        break;
      }
      case 'clear': {
        const p = usable(find(name));
        delete p.bits;
        replace(p);
        break;
      }
      case 'enable':
      case 'disable': {
        const p = usable(find(name));
        p.entry.flags = o.op === 'enable' ? p.entry.flags | BITMAP_FLAG_AUTO : p.entry.flags & ~BITMAP_FLAG_AUTO;
        break;
      }
      case 'merge': {
        const dest = usable(find(name));
        const g = 2 ** dest.entry.granularityBits;
        if (typeof o.source === 'string') {
          const src = usable(find(o.source));
          const srcBits = await loadBits(src);
          const bits = await loadBits(dest);
          mergeBits(bits, g, srcBits, 2 ** src.entry.granularityBits, size);
        } else {
          const src = o.source;
          if (src.virtualSize !== size) throw fail(`Bitmaps are of different sizes (destination size is ${size}, source size is ${src.virtualSize}) and can't be merged`);
          const bits = await loadBits(dest);
          for (const run of src.runs(0, size)) if (run.dirty) setRange(bits, g, run.offset, run.offset + run.length);
        }
        replace(dest);
        break;
      }
      default:
        throw invalidArg(FORMAT, `unknown bitmap operation ${JSON.stringify((o as { op?: unknown } | undefined)?.op)} (add, remove, clear, enable, disable or merge)`, { field: 'op' });
    }
  }

  const changed = removed.length > 0 || plan.length !== stored.length || plan.some((p) => p.replaced || p.entry.flags !== p.stored?.flags);
  if (!changed) return;
  await writeBitmapState(s, view, { plan, removed, ext: ext && consistent ? ext : undefined, afterSwitch: options.afterSwitch });
}

/** Sets the bits (at `granularity`) of every granule that guest bytes [from, to) touch. */
function setRange(bits: Uint8Array, granularity: number, from: number, to: number): void {
  if (to <= from) return;
  let n = Math.floor(from / granularity);
  const last = Math.min(Math.floor((to - 1) / granularity), bits.length * 8 - 1);
  while (n <= last) {
    if ((n & 7) === 0 && n + 7 <= last) {
      const end = Math.floor((last + 1) / 8);
      bits.fill(0xff, n >> 3, end);
      n = end * 8;
    } else {
      bits[n >> 3] = bits[n >> 3]! | (1 << (n & 7));
      n++;
    }
  }
}

/** ORs source bits (granularity `sg`) into `dest` (granularity `dg`); a source granule marks every destination granule it touches. */
function mergeBits(dest: Uint8Array, dg: number, src: Uint8Array, sg: number, size: number): void {
  if (dg === sg) {
    for (let i = 0; i < dest.length; i++) dest[i] = dest[i]! | src[i]!;
    return;
  }
  for (let byte = 0; byte < src.length; byte++) {
    const v = src[byte]!;
    if (v === 0) continue;
    for (let b = 0; b < 8; b++) {
      if (!(v & (1 << b))) continue;
      const n = byte * 8 + b;
      setRange(dest, dg, n * sg, Math.min(size, (n + 1) * sg));
    }
  }
}
