/**
 * amendQcow2: qemu-img amend for qcow2. Switches lazy refcounts on and off
 * and moves an image between version 2 (compat=0.10) and version 3
 * (compat=1.1) where the image allows it, as qemu does (block/qcow2.c:
 * qcow2_amend_options, qcow2_upgrade, qcow2_downgrade,
 * qcow2_expand_zero_clusters).
 */
import { corrupt, invalidArg, lentStorage, parseBool, suggestOptionKey, unsupported, utf8Decode } from '@img/block';
import type { OptionTable, Storage } from '@img/block';
import {
  QCOW2_V2_HEADER_LENGTH,
  QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION,
  INCOMPAT_DIRTY,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTENDED_L2,
  COMPAT_LAZY_REFCOUNTS,
  COMPRESSION_ZLIB,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO,
  EXT_DATA_FILE,
  EXT_FEATURE_TABLE,
} from './constants.js';
import { hasFeature, featureBits } from './header.js';
import { extensionsLength, findExtension, serializeFeatureTable, stringExtension, type HeaderExtension } from './extensions.js';
import { changeRefcountOrder } from './refcount-order.js';
import { writeEntryOffset } from './mapping.js';
import type { MappingView } from './mapping-view.js';
import { openQcow2Image } from './open.js';
import { closeQcow2 } from './io.js';
import { repairDirtyImage } from './dirty-repair.js';
import { QCOW2_CREATE_OPTIONS } from './create.js';
import { writeHeader, type Qcow2Image } from './core.js';
import { writeHeaderCluster } from './header-cluster-write.js';
import { distinctL2Tables, forEachL2Entry, imageL1Tables } from './l2-walk.js';
import { OVERLAP } from './overlap.js';
import { gateWritableOpen } from './open-gate.js';

const FORMAT = 'qcow2';
const bit = (b: number) => 1n << BigInt(b);

/**
 * Options of {@link amendQcow2}, camelCase keys (`qemu-img amend -o` names
 * map to them through {@link QCOW2_AMEND_OPTIONS}); values typed or as the
 * `-o` strings.
 */
export interface Qcow2AmendOptions {
  /** true/'on' or false/'off'. On needs version 3. */
  lazyRefcounts?: boolean | string;
  /** '1.1'/'v3'/3 or '0.10'/'v2'/2. */
  compat?: '0.10' | '1.1' | 'v2' | 'v3' | '2' | '3' | 2 | 3;
  /** Refcount width: 1, 2, 4, 8, 16, 32 or 64 (other than 16 needs version 3); the refcount structures are rewritten. */
  refcountBits?: number | string;
  /** The external data file's name (an image that has one; the file itself is not touched). */
  dataFile?: string;
  /** Accepted only as the image's own backing file name (anything else: use rebase, as qemu says). */
  backingFile?: string;
  /** Accepted only as the image's own backing format. */
  backingFormat?: string;
}

/** What `qemu-img amend -o` can change here: typed key, `-o` name, help. */
export const QCOW2_AMEND_OPTIONS: OptionTable = [
  { key: 'compat', name: 'compat', kind: 'str', help: 'Compatibility level (v2 [0.10] or v3 [1.1])' },
  { key: 'lazyRefcounts', name: 'lazy_refcounts', kind: 'bool', help: 'Postpone refcount updates' },
  { key: 'refcountBits', name: 'refcount_bits', kind: 'num', help: 'Width of a reference count entry in bits' },
  { key: 'dataFile', name: 'data_file', kind: 'str', help: 'File name of an external data file' },
];

/**
 * `-o` names qemu-img amend takes for qcow2 but this library does not
 * change (ERR_IMG_UNSUPPORTED); every other create option is one qemu
 * accepts only when creating an image.
 */
export const QCOW2_AMEND_UNSUPPORTED: readonly string[] = ['size', 'backing_file', 'backing_fmt', 'data_file_raw'];

/** What an amend asks for, once the options are read. */
export interface Qcow2AmendRequest {
  version: 2 | 3 | undefined;
  lazyRefcounts: boolean | undefined;
  /** refcount_order wanted (log2 of the width). */
  refcountOrder: number | undefined;
  dataFile: string | undefined;
  /** Backing file and format given (they must be the image's own). */
  backingFile: string | undefined;
  backingFormat: string | undefined;
}

/**
 * Reads amend options. The typed key of another create option
 * (clusterSize, refcountBits, backingFile, ...) is ERR_IMG_UNSUPPORTED
 * naming it; a key that is no option at all, or spelt as `-o` spells it,
 * is ERR_IMG_INVALID_ARG with the right spelling where one is close.
 */
export function parseAmendOptions(options: Qcow2AmendOptions): Qcow2AmendRequest {
  if (options === null || typeof options !== 'object') throw invalidArg(FORMAT, 'amend options must be an object, e.g. { compat: "1.1" }', { field: 'options' });
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined || QCOW2_AMEND_OPTIONS.some((o) => o.key === key) || key === 'backingFile' || key === 'backingFormat') continue;
    const create = QCOW2_CREATE_OPTIONS.find((o) => o.key === key);
    if (create) {
      // Named as -o names it: the user typed that.
      throw unsupported(FORMAT, undefined, `amend cannot change ${create.name}: img amend changes compat, lazy_refcounts, refcount_bits, data_file and size`, { field: create.name });
    }
    const hint = suggestOptionKey([...QCOW2_AMEND_OPTIONS, ...QCOW2_CREATE_OPTIONS], key);
    throw invalidArg(FORMAT, `unknown amend option "${key}" (${hint ? `did you mean ${hint}?` : 'amend takes compat and lazyRefcounts'})`, { field: key, ...(hint ? { expected: hint } : {}) });
  }
  const lazyRaw = options.lazyRefcounts;
  const lazyRefcounts = lazyRaw === undefined ? undefined : parseBool(lazyRaw, 'lazy_refcounts');
  let version: 2 | 3 | undefined;
  if (options.compat !== undefined) {
    const c = String(options.compat);
    if (['1.1', 'v3', '3'].includes(c)) version = 3;
    else if (['0.10', 'v2', '2'].includes(c)) version = 2;
    else throw invalidArg(FORMAT, `invalid compat "${c}" (0.10/v2 or 1.1/v3)`, { field: 'compat', actual: c });
  }
  let refcountOrder: number | undefined;
  if (options.refcountBits !== undefined) {
    const bits = Number(options.refcountBits);
    refcountOrder = Math.log2(bits);
    if (String(options.refcountBits).trim() === '' || !Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
      throw invalidArg(FORMAT, 'Refcount width must be a power of two and may not exceed 64 bits', { field: 'refcount_bits', actual: String(options.refcountBits) });
    }
  }
  const dataFile = options.dataFile === undefined ? undefined : String(options.dataFile);
  const backingFile = options.backingFile === undefined ? undefined : String(options.backingFile);
  const backingFormat = options.backingFormat === undefined ? undefined : String(options.backingFormat);
  if (version === undefined && lazyRefcounts === undefined && refcountOrder === undefined && dataFile === undefined && backingFile === undefined && backingFormat === undefined) {
    throw invalidArg(FORMAT, 'nothing to amend: give compat, lazy_refcounts, refcount_bits or data_file', { field: 'options' });
  }
  return { version, lazyRefcounts, refcountOrder, dataFile, backingFile, backingFormat };
}

/**
 * qemu-img amend for qcow2: `lazy_refcounts=on|off` and `compat=0.10|1.1`.
 * Opens `storage` for writing (the backing and data files are not needed
 * and not opened) and closes it when done, like {@link checkQcow2}.
 *
 * - A dirty image (lazy refcounts, not closed cleanly) has its refcounts
 *   rebuilt first, as qemu does when it opens one for writing.
 * - `lazy_refcounts=on` needs version 3; `off` clears the bit once the
 *   refcounts are exact.
 * - `compat=1.1` rewrites the header as version 3 (header_length 112, as
 *   qemu writes it, with qemu's feature name table for clusters over 4 KiB
 *   when it fits), keeping
 *   extensions and the backing file name.
 * - `compat=0.10` is refused (ERR_IMG_UNSUPPORTED, saying why) with extended
 *   L2 entries, an external data file, compressed clusters of a zstd image,
 *   a refcount width other than 16 bits, bitmaps, or snapshots qemu refuses
 *   (disk size other than the image's, VM state over 4 GiB). Zero clusters
 *   of the active layer and of every snapshot are expanded as qemu expands
 *   them; the version 2 header is written last.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('vm.qcow2', { readOnly: false });
 * await amendQcow2(storage, { compat: '0.10' }); // flushed, left open
 * await storage.close();
 * ```
 */
export async function amendQcow2(storage: Storage, options: Qcow2AmendOptions): Promise<void> {
  const want = parseAmendOptions(options);
  const core = await openQcow2Image(lentStorage(storage), { readOnly: false, noBacking: true, noDataFile: true, checkOnly: true });
  try {
    await amendState(core, core.active, want);
  } finally {
    await closeQcow2(core);
  }
}

async function amendState(s: Qcow2Image, view: MappingView, want: Qcow2AmendRequest): Promise<void> {
  const h = s.header;
  if (hasFeature(h.incompatibleFeatures, INCOMPAT_CORRUPT)) {
    throw corrupt(FORMAT, s.file, 'image is marked corrupt (incompatible bit 1): repair it (check -r all) before amending', { field: 'incompatible_features', offset: 72 });
  }
  // The writable-open gate, as for any write (amend opens for checking, which skips it): an image whose tables
  // share clusters or lie on metadata is refused before anything changes. A dirty image is repaired first below,
  // as every writable open repairs it, and its refcounts are not yet worth judging.
  const rc = s.writer?.allocator.refcounts;
  if (rc && !hasFeature(h.incompatibleFeatures, INCOMPAT_DIRTY)) await gateWritableOpen(s, view, (c) => rc.get(c), new Map(rc.untrustedBlocks.map((b) => [b.index, b.reason])));
  const from = h.version;
  const to = want.version ?? from;
  if (want.lazyRefcounts === true && to < 3) {
    throw unsupported(FORMAT, s.file, 'lazy refcounts need compat=1.1 (version 3); this image is or would become version 2', { field: 'lazy_refcounts' });
  }
  // Everything that can refuse is checked before anything changes.
  checkBacking(s, want);
  const order = want.refcountOrder ?? h.refcountOrder;
  // qemu's order: the upgrade, then the refcount width, then the rest; a downgrade last (it needs 16 bits).
  if (want.refcountOrder !== undefined && want.refcountOrder !== 4 && to < 3) {
    throw unsupported(FORMAT, s.file, 'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)', { field: 'refcount_bits' });
  }
  const dataFileExtensions = want.dataFile === undefined ? undefined : planDataFile(s, want.dataFile);
  let upgradeExtensions: HeaderExtension[] | undefined;
  if (to > from) upgradeExtensions = planUpgrade(s);
  if (to < from) await checkDowngrade(s, view, order);

  if (hasFeature(h.incompatibleFeatures, INCOMPAT_DIRTY)) await repairDirtyImage(s, view);
  if (upgradeExtensions) await upgrade(s, upgradeExtensions);
  if (order !== h.refcountOrder) await changeRefcountOrder(s, order);
  if (dataFileExtensions) await setDataFileName(s, dataFileExtensions);
  const lazyNow = hasFeature(h.compatibleFeatures, COMPAT_LAZY_REFCOUNTS);
  const lazy = to < 3 ? false : (want.lazyRefcounts ?? lazyNow);
  if (lazy !== lazyNow && to >= 3) {
    s.setHeader({ compatibleFeatures: lazy ? h.compatibleFeatures | bit(COMPAT_LAZY_REFCOUNTS) : h.compatibleFeatures & ~bit(COMPAT_LAZY_REFCOUNTS) });
    await writeHeader(s);
    await s.storage.flush();
  }
  if (to < from) await downgrade(s, view);
}

// ---- backing_file, data_file -----------------------------------------------

/** backing_file and backing_fmt may only repeat what the image says, both of them (qemu: use rebase to change them). */
function checkBacking(s: Qcow2Image, want: Qcow2AmendRequest): void {
  const format = findExtension(s.extensions, EXT_BACKING_FORMAT);
  const currentFormat = format ? utf8Decode(format.data) : undefined;
  // As qemu compares them: both, the one not given counting as none.
  const given = want.backingFile !== undefined || want.backingFormat !== undefined;
  if (given && (want.backingFile !== s.backingName || want.backingFormat !== currentFormat)) {
    // Two lines, as qemu-img prints it.
    throw unsupported(FORMAT, s.file, ['Cannot amend the backing file', "You can use 'img rebase' instead."], { field: want.backingFile !== undefined ? 'backing_file' : 'backing_fmt' });
  }
}

/** The extensions with the data file's name replaced (qemu: only an image that has a data file takes a new name). */
function planDataFile(s: Qcow2Image, name: string): HeaderExtension[] {
  if (!hasFeature(s.header.incompatibleFeatures, INCOMPAT_DATA_FILE)) {
    throw unsupported(FORMAT, s.file, 'data_file can only be set for images that use an external data file', { field: 'data_file' });
  }
  if (name === '') throw unsupported(FORMAT, s.file, 'data_file cannot be set to an empty name (img keeps the name in the image)', { field: 'data_file' });
  const ext = stringExtension(EXT_DATA_FILE, name);
  const i = s.extensions.findIndex((e) => e.type === EXT_DATA_FILE);
  const extensions = i >= 0 ? s.extensions.map((e, j) => (j === i ? ext : e)) : [...s.extensions, ext];
  const need = s.header.headerLength + extensionsLength(extensions) + s.header.backingFileSize;
  if (need > s.geom.clusterSize) throw unsupported(FORMAT, s.file, `data_file: the header, its extensions and the backing file name would need ${need} bytes, more than one ${s.geom.clusterSize}-byte cluster`, { field: 'data_file' });
  return extensions;
}

/** Writes cluster 0 with the new data file name (as qemu's header update: one write where the layouts allow). */
async function setDataFileName(s: Qcow2Image, extensions: HeaderExtension[]): Promise<void> {
  s.setExtensions(extensions);
  await writeHeaderCluster(s, (need, cs) => unsupported(FORMAT, s.file, `the header, its extensions and the backing file name need ${need} bytes, more than one ${cs}-byte cluster`, { field: 'data_file' }));
}

// ---- compat=1.1 ------------------------------------------------------------

/** qemu leaves the feature name table out of images with clusters this small or smaller. */
const FEATURE_TABLE_MIN_CLUSTER = 4096;

const KNOWN_EXTENSIONS = new Set([EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_CRYPTO, EXT_BITMAPS, EXT_FEATURE_TABLE]);

/** The version 3 extensions (qemu's order: known ones, the feature name table, unknown ones), or a refusal if they cannot fit. */
function planUpgrade(s: Qcow2Image): HeaderExtension[] {
  const cs = s.geom.clusterSize;
  const nameBytes = s.header.backingFileSize;
  const known = s.extensions.filter((e) => KNOWN_EXTENSIONS.has(e.type));
  const unknown = s.extensions.filter((e) => !KNOWN_EXTENSIONS.has(e.type));
  // qemu writes the feature name table only with clusters larger than 4 KiB.
  const withTable = findExtension(known, EXT_FEATURE_TABLE) || cs <= FEATURE_TABLE_MIN_CLUSTER ? [...known, ...unknown] : [...known, serializeFeatureTable(), ...unknown];
  const fits = (list: HeaderExtension[]) => QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION + extensionsLength(list) + nameBytes <= cs;
  // The feature name table is optional: an image whose first cluster is too full goes without it.
  if (fits(withTable)) return withTable;
  const without = s.extensions.filter((e) => e.type !== EXT_FEATURE_TABLE);
  if (fits(without)) return without;
  const need = QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION + extensionsLength(without) + nameBytes;
  throw unsupported(FORMAT, s.file, `compat=1.1 needs ${need} bytes for the version 3 header, its extensions and the backing file name, more than one ${cs}-byte cluster`, { field: 'compat', expected: cs, actual: need });
}

/** Rewrites cluster 0 as version 3 (one write, flushed): no feature bits, refcount_order 4, zlib. */
async function upgrade(s: Qcow2Image, extensions: HeaderExtension[]): Promise<void> {
  s.setHeader({
    version: 3,
    headerLength: QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    compressionType: COMPRESSION_ZLIB,
    extraFields: new Uint8Array(QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION - 105),
  });
  s.setExtensions(extensions);
  await s.storage.flush();
  await writeHeaderCluster(s, (need, cs) => unsupported(FORMAT, s.file, `the header, its extensions and the backing file name need ${need} bytes, more than one ${cs}-byte cluster`, { field: 'compat' }));
}

// ---- compat=0.10 -----------------------------------------------------------

function refuse(s: Qcow2Image, why: string, field: string): never {
  throw unsupported(FORMAT, s.file, `cannot amend to compat=0.10: ${why}`, { field });
}

/** The refusals of qemu's qcow2_downgrade, plus bitmaps and zstd-compressed clusters of snapshots; `order` is the refcount order the image will have by then. */
async function checkDowngrade(s: Qcow2Image, view: MappingView, order: number): Promise<void> {
  const h = s.header;
  if (order !== 4) refuse(s, `version 2 has 16-bit refcounts only (this image has refcount_bits=${2 ** order})`, 'refcount_bits');
  if (hasFeature(h.incompatibleFeatures, INCOMPAT_DATA_FILE) || findExtension(s.extensions, EXT_DATA_FILE)) refuse(s, 'version 2 has no external data files', 'data_file');
  if (hasFeature(h.incompatibleFeatures, INCOMPAT_EXTENDED_L2)) refuse(s, 'version 2 has no extended L2 entries (subclusters)', 'extended_l2');
  if (s.encryption?.method === 'luks') refuse(s, 'version 2 has no LUKS encryption (its header pointer is a version 3 extension)', 'encrypt');
  if (findExtension(s.extensions, EXT_BITMAPS)) {
    // qemu downgrades them anyway and leaves a v2 image whose bitmap clusters its own check counts as leaked.
    refuse(s, 'version 2 has no persistent bitmaps (remove them first: qemu-img bitmap --remove)', 'bitmaps');
  }
  const left = h.incompatibleFeatures & ~(bit(INCOMPAT_DIRTY) | bit(INCOMPAT_COMPRESSION));
  if (left !== 0n) refuse(s, `incompatible features ${featureBits(left).join(', ')} are set`, 'incompatible_features');
  for (const sn of s.snapshots) {
    if (sn.vmStateSize > 0xffffffff || (sn.diskSize !== undefined && sn.diskSize !== h.size)) {
      refuse(s, `internal snapshot "${sn.name}" has a disk size other than the image's or more than 4 GiB of VM state, which version 2 readers would not know`, 'snapshots');
    }
  }
  if (h.compressionType !== COMPRESSION_ZLIB) {
    // qemu looks at the active layer only; the clusters of snapshots would be just as unreadable.
    let compressed = 0;
    for await (const { offset, table } of distinctL2Tables(s, await imageL1Tables(s, view, h.l1Size))) {
      forEachL2Entry(
        s,
        table,
        offset,
        (e) => {
          if (e.type === 'compressed') compressed++;
        },
        rethrow,
      );
    }
    if (compressed) refuse(s, `the image uses zstd compression and has ${compressed} compressed clusters (version 2 knows zlib only)`, 'compression_type');
  }
}

/** An entry that does not decode stops the operation with the codec's error. */
function rethrow(error: Error): never {
  throw error;
}

function putEntry(table: Uint8Array, index: number, host: number, copied: boolean): void {
  writeEntryOffset(table, index * 8, host, copied && host !== 0);
}

/**
 * qcow2_expand_zero_clusters: version 2 has no zero flag. A zero cluster
 * without a host cluster becomes unallocated when there is no backing file
 * (reads as zeros anyway), else it gets a new cluster of zeros; a
 * preallocated zero cluster has zeros written into its host cluster. Each
 * L2 table is done once, however many L1 tables share it: new clusters
 * take the table's refcount. A preallocated zero cluster whose host cluster
 * is also referenced from elsewhere (a snapshot reading data there) gets a
 * new cluster rather than zeros written over the shared one.
 *
 * Order: new clusters are counted, then zeroed and flushed, then the L2
 * table is written and flushed, and only then are old references dropped.
 */
async function expandZeroClusters(s: Qcow2Image, view: MappingView): Promise<number> {
  const cs = s.geom.clusterSize;
  const w = s.writer!;
  const rc = w.allocator.refcounts;
  const backed = s.backingName !== undefined;
  const zeros = new Uint8Array(cs);
  let expanded = 0;
  for await (const { offset: l2Offset, table: cached } of distinctL2Tables(s, await imageL1Tables(s, view, s.header.l1Size))) {
    const tableRefs = await rc.get(l2Offset / cs);
    let table: Uint8Array | undefined;
    const toZero: number[] = [];
    const toRelease: number[] = [];
    // Entries are decoded before any changes: each entry is changed only after it was decoded.
    const zeroEntries: Array<{ j: number; host: number | undefined }> = [];
    forEachL2Entry(
      s,
      cached,
      l2Offset,
      (e, j) => {
        if (e.type === 'zero') zeroEntries.push({ j, host: e.host });
      },
      rethrow,
    );
    for (const e of zeroEntries) {
      const j = e.j;
      table ??= cached.slice();
      expanded++;
      if (e.host === undefined && !backed) {
        putEntry(table, j, 0, false);
        continue;
      }
      let host = e.host;
      if (host !== undefined && (await rc.get(host / cs)) !== tableRefs) {
        toRelease.push(host);
        host = undefined;
      }
      if (host === undefined) {
        host = await w.allocator.allocate(1);
        if (tableRefs > 1) await rc.add(host / cs, 1, tableRefs - 1);
      }
      toZero.push(host);
      putEntry(table, j, host, tableRefs === 1);
    }
    if (!table) continue;
    // Checked before any of them is written: zeros over metadata would destroy it.
    for (const at of toZero) s.overlap?.check(s.file, at, cs);
    s.overlap?.check(s.file, l2Offset, cs, OVERLAP.L2);
    for (const at of toZero) await s.storage.write(at, zeros);
    await s.storage.flush();
    await s.storage.write(l2Offset, table);
    await s.storage.flush();
    s.cache.delete(l2Offset);
    for (const at of toRelease) await rc.add(at / cs, 1, -tableRefs);
  }
  return expanded;
}

/** Expands zero clusters, then rewrites cluster 0 as version 2 (last, flushed). */
async function downgrade(s: Qcow2Image, view: MappingView): Promise<void> {
  await expandZeroClusters(s, view);
  await s.storage.flush();
  s.setHeader({
    version: 2,
    headerLength: QCOW2_V2_HEADER_LENGTH,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    compressionType: COMPRESSION_ZLIB,
    extraFields: new Uint8Array(0),
  });
  // The feature name table describes version 3 bits; qemu writes it for version 3 only.
  s.setExtensions(s.extensions.filter((e) => e.type !== EXT_FEATURE_TABLE));
  await writeHeaderCluster(s, (need, cs) => unsupported(FORMAT, s.file, `the header, its extensions and the backing file name need ${need} bytes, more than one ${cs}-byte cluster`, { field: 'compat' }));
}
