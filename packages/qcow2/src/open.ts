/**
 * openQcow2: validates the header, its extensions and every table bound
 * before anything is allocated, opens the backing image and the external
 * data file through the resolver, and returns a Qcow2Disk.
 */
import { ImageError, FormatRegistry, SIGNATURE_TAIL_BYTES, rawDriver, corrupt, hex, readOnlyStorageError, invalidArg, unsupported, utf8Decode } from '@img/block';
import type { OpenOptions, Storage } from '@img/block';
import { MAX_REFCOUNT_TABLE_BYTES, MAX_BACKING_FILE_NAME, INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, AUTOCLEAR_DATA_FILE_RAW, EXT_BACKING_FORMAT, EXT_DATA_FILE } from './constants.js';
import { headerClusterSize, validateHeaderCluster } from './header-check.js';
import { checkQcow2Identity, hasQcow2Magic, hasFeature } from './header.js';
import { extensionsLength, findExtension, extensionString } from './extensions.js';
import { readSnapshotTable } from './snapshot.js';
import { openBacking, openDataFile, type OpenedBacking } from './backing.js';
import { L2Cache, DEFAULT_L2_CACHE_BYTES } from './l2-cache.js';
import { readL1 } from './reader.js';
import { Qcow2Disk } from './image.js';
import { missingDataFile, Qcow2Image, type Qcow2ImageParts } from './core.js';
import { attachWriter } from './writable.js';
import { closeQcow2 } from './io.js';
import { snapshotView } from './snapshot-ops.js';
import { repairDirtyImage } from './dirty-repair.js';
import { gateWritableOpen } from './open-gate.js';
import { readEncryption, unlockEncryption } from './encryption.js';

const FORMAT = 'qcow2';

/** Options of {@link openQcow2}. */
export interface Qcow2OpenOptions extends OpenOptions {
  /** Bytes of L2 tables kept in memory (default 16 MiB: all tables of a 100 GiB image with 64 KiB clusters). */
  l2CacheSize?: number;
  /** Open this internal snapshot (id or name) read-only instead of the active layer. */
  snapshot?: string;
  /** Do not open the external data file (metadata-only uses such as check; data reads then fail). */
  noDataFile?: boolean;
  /** @internal Opened by checkQcow2: the corrupt and dirty bits do not stop a writable open. */
  checkOnly?: boolean;
  /** @internal Opened by checkQcow2: refcount table entries past the file naming a bad block read as none (counted, and cleared by repair all). */
  forCheck?: boolean;
}

function badField(file: string, field: string, offset: number, message: string, actual?: unknown): ImageError {
  return corrupt(FORMAT, file, message, { field, offset, actual });
}

let ownFormats: FormatRegistry | undefined;

/** Formats a backing file may have when the caller gives no registry: raw and qcow2. */
function defaultFormats(): FormatRegistry {
  ownFormats ??= new FormatRegistry([rawDriver, { name: FORMAT, probe: (head) => (hasQcow2Magic(head) ? 100 : 0), open: openQcow2, create: () => Promise.reject(new TypeError('qcow2: use createQcow2')) }]);
  return ownFormats;
}

/** How an image came to be opened, for opens inside the package (not an option callers can set). */
interface OpenOrigin {
  /**
   * The image is one this package has just written and committed in full
   * (the bulk writer's finish): the writable-open gate, which guards
   * against shared and overlapping clusters in images from elsewhere, has
   * nothing to find, and reading every L2 table again cost 50-80 ms of a
   * one-second conversion.
   */
  ownImage?: boolean;
}

/**
 * Opens the core of a qcow2 image (internal: check, amend and the public
 * {@link openQcow2} use it). Validates everything before allocating.
 */
export async function openQcow2Image(storage: Storage, options: Qcow2OpenOptions = {}, origin: OpenOrigin = {}): Promise<Qcow2Image> {
  const file = storage.name;
  const readOnly = options.readOnly ?? true;
  if (!readOnly && storage.readOnly) throw readOnlyStorageError(FORMAT, file);
  const fileSize = await storage.size();
  const head = await storage.read(0, Math.min(fileSize, 4096));
  if (!hasQcow2Magic(head)) {
    // Not a qcow2 image: the error names what it is instead, footers included (a VHD, a DMG).
    const tail = fileSize > head.length ? await storage.read(Math.max(head.length, fileSize - SIGNATURE_TAIL_BYTES), SIGNATURE_TAIL_BYTES) : undefined;
    checkQcow2Identity(head, file, fileSize, tail);
  }
  const cs = headerClusterSize(head, file);
  const cluster0 = cs <= head.length ? head.subarray(0, cs) : await storage.read(0, Math.min(fileSize, cs));
  const { header, extensions, featureTable, geom, entryGeom } = validateHeaderCluster(cluster0, file);
  const corruptBit = hasFeature(header.incompatibleFeatures, INCOMPAT_CORRUPT);
  if (corruptBit && !readOnly && !options.checkOnly) {
    throw corrupt(FORMAT, file, 'image is marked corrupt (incompatible bit 1): it can only be opened read-only', { field: 'incompatible_features', offset: 72 });
  }

  // A read-only check takes an L1 table past the end of the file as qemu reads it (zeros past the end), so that
  // check counts it as a corruption (and what it no longer references as leaks) instead of refusing the image.
  const l1PastEndCounted = options.checkOnly === true && readOnly;
  if (header.l1Size > 0 && (header.l1TableOffset % cs !== 0 || header.l1TableOffset < cs || (header.l1TableOffset + header.l1Size * 8 > fileSize && !l1PastEndCounted))) {
    throw badField(file, 'l1_table_offset', 40, `L1 table at ${hex(header.l1TableOffset)} (${header.l1Size} entries) is unaligned, overlaps the header or lies past the end of the file`, header.l1TableOffset);
  }
  // Refcount table: checked now although only writers read it.
  if (header.refcountTableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
    throw badField(file, 'refcount_table_clusters', 56, `refcount_table_clusters ${header.refcountTableClusters} at 0x38 exceeds qemu's 8 MiB bound`, header.refcountTableClusters);
  }
  if (header.refcountTableOffset % cs !== 0 || header.refcountTableOffset < cs || header.refcountTableOffset + header.refcountTableClusters * cs > fileSize) {
    throw badField(file, 'refcount_table_offset', 48, `refcount table at ${hex(header.refcountTableOffset)} (${header.refcountTableClusters} clusters) is unaligned, overlaps the header or lies past the end of the file`, header.refcountTableOffset);
  }
  // Backing file name: inside the first cluster (qemu's rule) and the file.
  let backingName: string | undefined;
  if (header.backingFileOffset !== 0) {
    if (header.backingFileSize > MAX_BACKING_FILE_NAME) {
      throw badField(file, 'backing_file_size', 16, `backing file name of ${header.backingFileSize} bytes at 0x10 is longer than ${MAX_BACKING_FILE_NAME}`, header.backingFileSize);
    }
    if (header.backingFileOffset + header.backingFileSize > Math.min(cs, cluster0.length)) {
      throw badField(file, 'backing_file_offset', 8, `backing file name at ${hex(header.backingFileOffset)} (${header.backingFileSize} bytes) lies outside the first cluster or the file`, header.backingFileOffset);
    }
    backingName = utf8Decode(cluster0.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize));
  }
  const dataFileBit = hasFeature(header.incompatibleFeatures, INCOMPAT_DATA_FILE);
  const dataFileName = extensionString(findExtension(extensions, EXT_DATA_FILE));
  const rawDataFileBit = hasFeature(header.autoclearFeatures, AUTOCLEAR_DATA_FILE_RAW);

  const encryption = header.cryptMethod !== 0 ? await readEncryption(storage, header.cryptMethod, extensions, header.headerLength, fileSize, cs, file) : undefined;
  // A check's repair and amend change metadata only, which is never encrypted: they need no key.
  if (encryption && !readOnly && !options.checkOnly) {
    // qemu's old AES method is read for data liberation only; a LUKS image is written with its key.
    if (encryption.method === 'aes')
      throw unsupported(FORMAT, file, `${file} is encrypted with qemu's old AES method, which img reads (with the passphrase) but does not write; convert it to a new image (encrypt.format=luks to keep it encrypted)`, {
        field: 'crypt_method',
        offset: 32,
        actual: header.cryptMethod,
      });
    if (options.passphrase === undefined)
      throw invalidArg(
        FORMAT,
        `${file} is encrypted (LUKS): writing into it needs its passphrase (img: --object secret,id=sec0,data=... with --image-opts driver=qcow2,file.filename=${file},encrypt.key-secret=sec0, or --target-image-opts for the output of convert -n; API: the passphrase open option)`,
        {
          file,
          field: 'passphrase',
        },
      );
  }
  if (encryption && options.passphrase !== undefined) await unlockEncryption(encryption, storage, options.passphrase, file);

  const snapshots = await readSnapshotTable(storage, header.snapshotsOffset, header.nbSnapshots, fileSize, cs, file);
  const l1 = await readL1(storage, header.l1TableOffset, header.l1Size);

  const cacheBytes = options.l2CacheSize ?? DEFAULT_L2_CACHE_BYTES;
  if (!(cacheBytes >= 0)) throw new RangeError(`l2CacheSize must be a non-negative number of bytes, got ${cacheBytes}`);
  if (!readOnly && dataFileBit && options.noDataFile && !options.checkOnly) throw invalidArg(FORMAT, 'an image with an external data file cannot be written without it', { field: 'noDataFile' });

  let dataFile: Storage | undefined;
  let backingInfo: OpenedBacking | undefined;
  try {
    if (dataFileBit && !options.noDataFile) dataFile = await openDataFile(storage, dataFileName, options, !readOnly);
    if (backingName !== undefined && !options.noBacking) {
      const formats = options.formats ?? defaultFormats();
      const backingFormat = extensionString(findExtension(extensions, EXT_BACKING_FORMAT));
      backingInfo = await openBacking(storage, backingName, backingFormat, options, formats);
    }
  } catch (e) {
    await dataFile?.close().catch(() => undefined);
    throw e;
  }

  const parts: Qcow2ImageParts = {
    storage,
    file,
    header,
    extensions,
    featureTable,
    geom,
    entryGeom,
    cache: new L2Cache(cacheBytes / cs),
    compressionType: header.compressionType,
    // A writable image's own data goes through the overlap guard (the core wraps it).
    dataStorage: dataFile ?? (dataFileBit ? missingDataFile(file, dataFileName) : storage),
    rawDataFile: dataFile !== undefined && rawDataFileBit,
    backing: backingInfo?.disk,
    fileSize,
    snapshots,
    encryption,
    backingName,
    backingInfo,
    dataFileName,
    dataFile,
    headerAreaEnd: Math.max(header.headerLength + (header.version >= 3 || extensions.length ? extensionsLength(extensions) : 0), header.backingFileOffset + header.backingFileSize),
  };
  const core = new Qcow2Image(parts, { l1, l1Offset: header.l1TableOffset, size: header.size }, readOnly);
  try {
    if (!readOnly) {
      if (options.snapshot !== undefined) throw invalidArg(FORMAT, 'snapshots open read-only', { field: 'snapshot' });
      await attachWriter(core, options.forCheck ?? false);
      // A dirty image (lazy refcounts, not closed cleanly) has refcounts to rebuild before anything is allocated.
      if (hasFeature(header.incompatibleFeatures, INCOMPAT_DIRTY) && !options.checkOnly) {
        await repairDirtyImage(core, core.active);
      }
      // Refused before anything is written (check -r all opens with checkOnly: it repairs what it can first).
      const refcounts = core.writer?.allocator.refcounts;
      if (!options.checkOnly && !origin.ownImage && refcounts) await gateWritableOpen(core, core.active, (c) => refcounts.get(c), new Map(refcounts.untrustedBlocks.map((b) => [b.index, b.reason])));
    }
  } catch (e) {
    await closeQcow2(core).catch(() => undefined);
    throw e;
  }
  return core;
}

/**
 * Opens a qcow2 image read-only (the default) over `storage`.
 *
 * Backing files and an external data file are opened through
 * `options.resolver`; `noBacking` reads unallocated ranges as zeros;
 * `untrusted` refuses every reference to another file.
 */
export async function openQcow2(storage: Storage, options: Qcow2OpenOptions = {}): Promise<Qcow2Disk> {
  const core = await openQcow2Image(storage, options);
  if (options.snapshot === undefined) return new Qcow2Disk(core, { owner: true });
  try {
    // The snapshot view takes over the image: closing it closes the image.
    return new Qcow2Disk(core, { owner: true, snapshot: await snapshotView(core, options.snapshot) });
  } catch (e) {
    await closeQcow2(core);
    throw e;
  }
}

/**
 * Opens for writing the image the bulk writer has just committed
 * (bulk-writer.ts), without the writable-open gate (see OpenOrigin). The
 * header, tables and refcounts are still parsed and validated as in any
 * open.
 */
export async function openWrittenQcow2(storage: Storage): Promise<Qcow2Disk> {
  return new Qcow2Disk(await openQcow2Image(storage, { readOnly: false }, { ownImage: true }), { owner: true });
}
