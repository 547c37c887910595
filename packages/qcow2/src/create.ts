/**
 * createQcow2: lays out a new image (header, refcount table and blocks,
 * L1 table, and with preallocation the L2 tables and data clusters) and
 * opens it for writing. Options come typed or as the strings of
 * `qemu-img create -o key=value`.
 */
import { writeEntryOffset } from './mapping.js';
import { ImageError, checkOptionKeys, invalidArg, parseBool, parseSize, preallocateRange, unsupported, utf8Encode, writeU32Be, writeU64Be } from '@img/block';
import type { CreateOptions, FormatRegistryLike, OptionTable, Resolver, Storage } from '@img/block';
import {
  QCOW2_V2_HEADER_LENGTH,
  QCOW2_V3_HEADER_LENGTH,
  QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION,
  MIN_CLUSTER_BITS,
  MAX_CLUSTER_BITS,
  MIN_EXTENDED_L2_CLUSTER_BITS,
  MAX_L1_TABLE_BYTES,
  MAX_REFCOUNT_TABLE_BYTES,
  MAX_BACKING_FILE_NAME,
  INCOMPAT_DATA_FILE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_EXTENDED_L2,
  COMPAT_LAZY_REFCOUNTS,
  AUTOCLEAR_DATA_FILE_RAW,
  COMPRESSION_ZLIB,
  COMPRESSION_ZSTD,
  EXT_BACKING_FORMAT,
  EXT_DATA_FILE,
} from './constants.js';
import { type Qcow2Header } from './header.js';
import { packedCreatePlan, truncatedCreatePlan, type CreatePlan } from './create-layout.js';
import { headerClusterBytes, layoutHeaderCluster } from './header-cluster.js';
import { serializeFeatureTable, stringExtension, type HeaderExtension } from './extensions.js';
import { writeRefcount } from './refcount-entry.js';
import { openQcow2 } from './open.js';
import { type Qcow2Disk } from './image.js';
import { encryptNewImage } from './create-encrypted.js';
import { luksCreateSpecOf, type LuksCreateSpec } from './luks.js';

const FORMAT = 'qcow2';

/**
 * Options of {@link createQcow2}, under camelCase keys only (`qemu-img
 * create -o` names map to them through {@link QCOW2_CREATE_OPTIONS};
 * a snake_case or unknown key is ERR_IMG_INVALID_ARG).
 */
export interface Qcow2CreateOptions extends CreateOptions {
  /** Virtual size in bytes (rounded up to 512 as qemu does). */
  size: number;
  /** "v3"/"1.1"/3 (default) or "v2"/"0.10"/2. */
  compat?: 'v3' | '1.1' | '3' | 3 | 'v2' | '0.10' | '2' | 2;
  /** Cluster size, 512 B to 2 MiB, power of two (default 64 KiB). */
  clusterSize?: number | string;
  /** Refcount width in bits: 1, 2, 4, 8, 16 (default), 32, 64. */
  refcountBits?: number | string;
  lazyRefcounts?: boolean | string;
  /** Extended L2 entries with 32 subclusters (clusters of at least 16 KiB). */
  extendedL2?: boolean | string;
  /** How compressed clusters are stored: zlib (default, deflate) or zstd (v3, header length 112). */
  compressionType?: 'zlib' | 'zstd';
  /** off (default), metadata, falloc or full (falloc reserves the data clusters as full does, laid out as qemu's). */
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
  /** Backing file name, stored as given. */
  backingFile?: string;
  backingFormat?: string;
  /** External data file name, stored as given. */
  dataFile?: string;
  dataFileRaw?: boolean | string;
  /** The data file's storage (else it is opened through the resolver; it must exist). */
  dataFileStorage?: Storage;
  /** 104 or 112 (default; zstd needs 112). */
  headerLength?: number | string;
  /** Opens the backing file (needed when there is one, unless `noBacking`). */
  resolver?: Resolver;
  formats?: FormatRegistryLike;
  /** Open the new image without its backing file (writes then copy zeros instead of backing data). */
  noBacking?: boolean;
  /** Encrypt the image: 'luks' (qemu's old 'aes' method is read, not written). Needs `encryptPassphrase` and compat v3. */
  encryptFormat?: 'luks';
  /** The passphrase of key slot 0 (a string is taken as UTF-8). */
  encryptPassphrase?: string | Uint8Array;
  /** qemu-img's `encrypt.key-secret`: the id of a `--object secret` (the command line resolves it to `encryptPassphrase`). */
  encryptKeySecret?: string;
  /** aes-256 (default), aes-128, aes-192, serpent-128/192/256, twofish-128/192/256 or cast5-128 (192-bit keys in xts mode only). */
  encryptCipherAlg?: 'aes-128' | 'aes-192' | 'aes-256' | 'serpent-128' | 'serpent-192' | 'serpent-256' | 'twofish-128' | 'twofish-192' | 'twofish-256' | 'cast5-128';
  /** xts (default), cbc, ecb or ctr (cast5: not xts). */
  encryptCipherMode?: 'xts' | 'cbc' | 'ecb' | 'ctr';
  /** plain64 (default), plain or essiv. */
  encryptIvgenAlg?: 'plain' | 'plain64' | 'essiv';
  /** The hash essiv keys its IV cipher with (default sha256). */
  encryptIvgenHashAlg?: string;
  /** The hash of PBKDF2 and the key splitter (default sha256). */
  encryptHashAlg?: string;
  /** Milliseconds of PBKDF2 that opening the image costs (default 2000, as qemu). */
  encryptIterTime?: number | string;
}

/** The create options: typed key, `qemu-img create -o` name, help, kind of value. */
export const QCOW2_CREATE_OPTIONS: OptionTable = [
  { key: 'size', name: 'size', kind: 'size', help: 'Virtual disk size' },
  { key: 'compat', name: 'compat', kind: 'str', help: 'v3 (1.1, default) or v2 (0.10)' },
  { key: 'clusterSize', name: 'cluster_size', kind: 'size', help: 'cluster size, 512 to 2M (default 64k)' },
  { key: 'refcountBits', name: 'refcount_bits', kind: 'num', help: 'refcount width: 1, 2, 4, 8, 16 (default), 32 or 64' },
  { key: 'lazyRefcounts', name: 'lazy_refcounts', kind: 'bool', help: 'postpone refcount updates (v3)' },
  { key: 'extendedL2', name: 'extended_l2', kind: 'bool', help: '32 subclusters per cluster (v3, clusters >= 16k)' },
  { key: 'compressionType', name: 'compression_type', kind: 'str', help: 'zlib (default) or zstd (v3)' },
  { key: 'preallocation', name: 'preallocation', kind: 'str', help: 'off (default), metadata, falloc or full' },
  { key: 'backingFile', name: 'backing_file', kind: 'str', help: 'backing file name, stored as given' },
  { key: 'backingFormat', name: 'backing_fmt', kind: 'str', help: 'backing file format' },
  { key: 'dataFile', name: 'data_file', kind: 'str', help: 'external data file name (v3)' },
  { key: 'dataFileRaw', name: 'data_file_raw', kind: 'bool', help: 'the data file is a raw image of the disk' },
  { key: 'headerLength', name: 'header_length', kind: 'num', help: '104 or 112 (default)' },
  { key: 'encryptFormat', name: 'encrypt.format', kind: 'str', help: "Encrypt the image: 'luks' (img reads 'aes' images, and does not write them)" },
  { key: 'encryptKeySecret', name: 'encrypt.key-secret', kind: 'str', help: 'ID of the secret (--object secret) holding the LUKS passphrase' },
  { key: 'encryptCipherAlg', name: 'encrypt.cipher-alg', kind: 'str', help: 'aes-256 (default), aes-128, aes-192, serpent-128/192/256, twofish-128/192/256 or cast5-128' },
  { key: 'encryptCipherMode', name: 'encrypt.cipher-mode', kind: 'str', help: 'xts (default), cbc, ecb or ctr' },
  { key: 'encryptIvgenAlg', name: 'encrypt.ivgen-alg', kind: 'str', help: 'plain64 (default), plain or essiv' },
  { key: 'encryptIvgenHashAlg', name: 'encrypt.ivgen-hash-alg', kind: 'str', help: 'the hash essiv uses (default sha256)' },
  { key: 'encryptHashAlg', name: 'encrypt.hash-alg', kind: 'str', help: 'the hash of PBKDF2 and the key splitter (default sha256)' },
  { key: 'encryptIterTime', name: 'encrypt.iter-time', kind: 'num', help: 'milliseconds of PBKDF2 to open the image (default 2000)' },
];

/** Typed keys of Qcow2CreateOptions that have no `-o` name. */
export const QCOW2_TYPED_CREATE_KEYS: readonly string[] = ['dataFileStorage', 'encryptPassphrase'];

/** Normalised create options. */
export interface Qcow2Layout {
  size: number;
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: number;
  preallocation: 'off' | 'metadata' | 'falloc' | 'full';
  backingFile: string | undefined;
  backingFormat: string | undefined;
  dataFile: string | undefined;
  dataFileRaw: boolean;
  headerLength: number;
  /** LUKS encryption: the cipher, hash and PBKDF2 time, and the passphrase. */
  encrypt: { luks: LuksCreateSpec; passphrase: Uint8Array } | undefined;
}

function pick(o: Record<string, unknown>, key: string): unknown {
  return o[key];
}

/**
 * Reads typed options (values may be strings, as `-o` gives them: '64k',
 * 'on') and checks every combination qemu refuses. Keys are camelCase;
 * any other key is ERR_IMG_INVALID_ARG. `extra` names keys a caller (the
 * streaming writer) handles itself.
 */
export function parseCreateOptions(options: Qcow2CreateOptions, extra: readonly string[] = []): Qcow2Layout {
  if (options === null || typeof options !== 'object') throw invalidArg(FORMAT, 'size is required', { field: 'size' });
  checkOptionKeys(FORMAT, QCOW2_CREATE_OPTIONS, options, [...QCOW2_TYPED_CREATE_KEYS, ...extra]);
  const o = options as unknown as Record<string, unknown>;
  const rawSize = pick(o, 'size');
  if (rawSize === undefined) throw invalidArg(FORMAT, 'size is required', { field: 'size' });
  const size = Math.ceil(parseSize(rawSize as string | number, 'size') / 512) * 512;
  const compat = String(pick(o, 'compat') ?? 'v3');
  let version: 2 | 3;
  if (['v3', '1.1', '3'].includes(compat)) version = 3;
  else if (['v2', '0.10', '2'].includes(compat)) version = 2;
  else throw invalidArg(FORMAT, `invalid compat "${compat}" (v2/0.10 or v3/1.1)`, { field: 'compat' });
  const clusterSize = parseSize((pick(o, 'clusterSize') ?? 65536) as string | number, 'cluster_size');
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalidArg(FORMAT, `invalid cluster_size ${clusterSize} (a power of two from 512 to 2M)`, { field: 'cluster_size' });
  }
  const refcountBits = Number(pick(o, 'refcountBits') ?? 16);
  const refcountOrder = Math.log2(refcountBits);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
    throw invalidArg(FORMAT, `invalid refcount_bits ${String(pick(o, 'refcountBits'))} (1, 2, 4, 8, 16, 32 or 64)`, { field: 'refcount_bits' });
  }
  const flag = (v: unknown, what: string) => (v === undefined ? false : parseBool(v, what));
  const lazyRefcounts = flag(pick(o, 'lazyRefcounts'), 'lazy_refcounts');
  const extendedL2 = flag(pick(o, 'extendedL2'), 'extended_l2');
  const ctype = String(pick(o, 'compressionType') ?? 'zlib');
  if (ctype !== 'zlib' && ctype !== 'zstd') throw invalidArg(FORMAT, `invalid compression_type "${ctype}" (zlib or zstd)`, { field: 'compression_type' });
  const prealloc = String(pick(o, 'preallocation') ?? 'off');
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) {
    throw invalidArg(FORMAT, `invalid preallocation "${prealloc}" (off, metadata, falloc or full)`, { field: 'preallocation' });
  }
  const backingFile = pick(o, 'backingFile') as string | undefined;
  const backingFormat = pick(o, 'backingFormat') as string | undefined;
  const dataFile = pick(o, 'dataFile') as string | undefined;
  const dataFileRaw = flag(pick(o, 'dataFileRaw'), 'data_file_raw');
  const headerLength = Number(pick(o, 'headerLength') ?? QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION);
  const need = (ok: boolean, message: string, field: string) => {
    if (!ok) throw invalidArg(FORMAT, message, { field });
  };
  need(headerLength === QCOW2_V3_HEADER_LENGTH || headerLength === QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION, `invalid header_length ${headerLength} (104 or 112)`, 'header_length');
  if (version === 2) {
    need(refcountBits === 16, 'compat=v2 supports only refcount_bits=16', 'refcount_bits');
    need(!lazyRefcounts, 'lazy_refcounts needs compat=v3', 'lazy_refcounts');
    need(!extendedL2, 'extended_l2 needs compat=v3', 'extended_l2');
    need(ctype === 'zlib', 'compression_type=zstd needs compat=v3', 'compression_type');
    need(dataFile === undefined, 'data_file needs compat=v3', 'data_file');
  }
  need(!extendedL2 || clusterBits >= MIN_EXTENDED_L2_CLUSTER_BITS, 'extended_l2 needs a cluster size of at least 16k', 'extended_l2');
  need(ctype === 'zlib' || headerLength >= QCOW2_V3_HEADER_LENGTH_WITH_COMPRESSION, 'compression_type=zstd needs header_length 112', 'header_length');
  need(!dataFileRaw || dataFile !== undefined, 'data_file_raw needs data_file', 'data_file_raw');
  need(!(dataFileRaw && backingFile !== undefined), 'a raw external data file cannot be combined with a backing file', 'data_file_raw');
  need(backingFile === undefined || prealloc === 'off', 'preallocation cannot be combined with a backing file', 'preallocation');
  need(backingFile === undefined || utf8Encode(backingFile).length <= MAX_BACKING_FILE_NAME, 'backing file name longer than 1023 bytes', 'backing_file');
  need(backingFile === undefined || backingFile.length > 0, 'empty backing file name', 'backing_file');
  const encrypt = parseEncryption(o, prealloc);
  // A raw data file maps every cluster, written or not: one img has not written holds zeros, which would not decrypt to zeros.
  if (encrypt && dataFileRaw) throw unsupported(FORMAT, undefined, 'encryption with a raw external data file (data_file_raw=on) is not supported: the clusters not written would read as the decryption of zeros; leave data_file_raw off', { field: 'data_file_raw' });
  return {
    size,
    version,
    clusterBits,
    refcountOrder,
    lazyRefcounts,
    extendedL2,
    compressionType: ctype === 'zstd' ? COMPRESSION_ZSTD : COMPRESSION_ZLIB,
    // A raw data file is the disk: every cluster is mapped to it from the start (as qemu does).
    preallocation: prealloc === 'full' || prealloc === 'falloc' ? prealloc : prealloc === 'off' && !dataFileRaw ? 'off' : 'metadata',
    backingFile,
    backingFormat,
    dataFile,
    dataFileRaw,
    headerLength: version === 2 ? QCOW2_V2_HEADER_LENGTH : headerLength,
    encrypt,
  };
}

/** The `encrypt.*` options: a LUKS spec and passphrase, undefined without `encrypt.format`. */
function parseEncryption(o: Record<string, unknown>, prealloc: string): Qcow2Layout['encrypt'] {
  const format = pick(o, 'encryptFormat');
  const others = ['encryptPassphrase', 'encryptKeySecret', 'encryptCipherAlg', 'encryptCipherMode', 'encryptIvgenAlg', 'encryptIvgenHashAlg', 'encryptHashAlg', 'encryptIterTime'].filter((k) => pick(o, k) !== undefined);
  if (format === undefined) {
    if (others.length) throw invalidArg(FORMAT, `${others[0]} needs encryptFormat (encrypt.format=luks)`, { field: 'encrypt.format' });
    return undefined;
  }
  if (format === 'aes') throw unsupported(FORMAT, undefined, "encrypt.format=aes (qemu's old method) is read but not written by img: use encrypt.format=luks", { field: 'encrypt.format' });
  if (format !== 'luks') throw invalidArg(FORMAT, `invalid encrypt.format "${String(format)}" (luks)`, { field: 'encrypt.format' });
  const passphrase = pick(o, 'encryptPassphrase');
  if (passphrase === undefined) {
    const secret = pick(o, 'encryptKeySecret');
    throw invalidArg(
      FORMAT,
      secret !== undefined
        ? `encrypt.key-secret=${String(secret)} names a secret of the command line (--object secret,id=...); from code, give encryptPassphrase`
        : 'encrypt.format=luks needs a passphrase (encryptPassphrase; on the command line encrypt.key-secret=ID with --object secret,id=ID,data=...)',
      { field: 'encrypt.key-secret' },
    );
  }
  if (typeof passphrase !== 'string' && !(passphrase instanceof Uint8Array)) throw invalidArg(FORMAT, 'encryptPassphrase is a string or bytes', { field: 'encryptPassphrase' });
  if (prealloc !== 'off') throw unsupported(FORMAT, undefined, 'preallocation of an encrypted image is not supported (preallocated clusters would read as the decryption of zeros)', { field: 'preallocation' });
  const luks = luksCreateSpecOf(
    { cipherAlg: pick(o, 'encryptCipherAlg'), cipherMode: pick(o, 'encryptCipherMode'), ivgenAlg: pick(o, 'encryptIvgenAlg'), ivgenHashAlg: pick(o, 'encryptIvgenHashAlg'), hashAlg: pick(o, 'encryptHashAlg'), iterTime: pick(o, 'encryptIterTime') },
    FORMAT,
    'encrypt.',
  );
  return {
    luks,
    passphrase: typeof passphrase === 'string' ? utf8Encode(passphrase) : passphrase,
  };
}

/** The header of a new image with this layout and these table positions. */
export function headerFor(l: Qcow2Layout, t: { l1Entries: number; l1Offset: number; refcountTableOffset: number; refcountTableClusters: number }): Qcow2Header {
  return {
    version: l.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: l.clusterBits,
    size: l.size,
    cryptMethod: 0,
    l1Size: t.l1Entries,
    l1TableOffset: t.l1Offset,
    refcountTableOffset: t.refcountTableOffset,
    refcountTableClusters: t.refcountTableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: (l.dataFile !== undefined ? 1n << BigInt(INCOMPAT_DATA_FILE) : 0n) | (l.compressionType !== COMPRESSION_ZLIB ? 1n << BigInt(INCOMPAT_COMPRESSION) : 0n) | (l.extendedL2 ? 1n << BigInt(INCOMPAT_EXTENDED_L2) : 0n),
    compatibleFeatures: l.lazyRefcounts ? 1n << BigInt(COMPAT_LAZY_REFCOUNTS) : 0n,
    autoclearFeatures: l.dataFileRaw ? 1n << BigInt(AUTOCLEAR_DATA_FILE_RAW) : 0n,
    refcountOrder: l.refcountOrder,
    headerLength: l.headerLength,
    compressionType: l.compressionType,
    extraFields: new Uint8Array(Math.max(0, l.headerLength - 105)),
  };
}

/** Builds cluster 0: header, extensions, backing file name. */
export function headerCluster(l: Qcow2Layout, h: Qcow2Header, cs: number): Uint8Array {
  const exts: HeaderExtension[] = [];
  if (l.backingFormat !== undefined) exts.push(stringExtension(EXT_BACKING_FORMAT, l.backingFormat));
  if (l.dataFile !== undefined) exts.push(stringExtension(EXT_DATA_FILE, l.dataFile));
  // The feature name table is a courtesy: left out when it does not fit (small clusters).
  const withTable = l.version === 3 ? [...exts, serializeFeatureTable()] : exts;
  const fits = (list: HeaderExtension[]) => headerClusterBytes(h, list, l.backingFile) <= cs;
  const chosen = fits(withTable) ? withTable : exts;
  if (!fits(chosen)) throw invalidArg(FORMAT, `the header, its extensions and the backing file name do not fit in one ${cs}-byte cluster`, { field: 'cluster_size' });
  return layoutHeaderCluster(h, chosen, l.backingFile, cs);
}

/** Fills cluster `k` of a new image (`buf`, zeroed, one cluster long) with what `plan` puts there. */
function fillCluster(l: Qcow2Layout, h: Qcow2Header, plan: CreatePlan, buf: Uint8Array, k: number, guestClusters: number): void {
  const cs = buf.length;
  const role = plan.roleOf(k);
  switch (role.kind) {
    case 'header':
      buf.set(headerCluster(l, h, cs));
      return;
    case 'refcount-table':
      for (let b = (role.index * cs) / 8; b < Math.min(plan.refcountBlocks, ((role.index + 1) * cs) / 8); b++) writeU64Be(buf, b * 8 - role.index * cs, plan.refcountBlockAt(b) * cs);
      return;
    case 'refcount-block': {
      const refBits = 2 ** l.refcountOrder;
      const perBlock = (cs * 8) / refBits;
      const first = role.index * perBlock;
      for (let c = first; c < Math.min(plan.total, first + perBlock); c++) if (plan.used(c)) writeRefcount(buf, c - first, refBits, 1);
      return;
    }
    case 'l1':
      for (let t = (role.index * cs) / 8; t < Math.min(plan.l2Tables, ((role.index + 1) * cs) / 8); t++) writeEntryOffset(buf, t * 8 - role.index * cs, plan.l2At(t) * cs, true);
      return;
    case 'l2': {
      const es = l.extendedL2 ? 16 : 8;
      const perTable = cs / es;
      const first = role.index * perTable;
      for (let c = first; c < Math.min(guestClusters, first + perTable); c++) {
        const at = (c - first) * es;
        // With an external data file guest cluster c sits at the same offset there.
        writeEntryOffset(buf, at, l.dataFile === undefined ? (plan.dataAt + c) * cs : c * cs, true);
        // qemu leaves every subcluster of a preallocated cluster unallocated (reads as zeros); img keeps them
        // allocated where the clusters are in an external data file, whose bytes are the disk's.
        if (l.extendedL2 && l.dataFile !== undefined) writeU32Be(buf, at + 12, 0xffffffff);
      }
      return;
    }
    default:
      return;
  }
}

/**
 * Creates a qcow2 image in `storage` (which is truncated first) and
 * returns it open for writing. A block device (`storage.fixedSize`) is
 * written at its start and never resized: the layout must fit in it
 * (else ERR_IMG_INVALID_ARG before anything is written), and preallocated
 * data clusters are written with zeros whatever the mode.
 *
 * @example
 * ```ts
 * const disk = await createQcow2(await FileStorage.create('new.qcow2'), { size: 10 * 2 ** 30, clusterSize: '64k' });
 * await disk.write(0, bootSector);
 * await disk.close();
 * ```
 */
export async function createQcow2(storage: Storage, options: Qcow2CreateOptions): Promise<Qcow2Disk> {
  const l = parseCreateOptions(options);
  if (l.backingFile !== undefined && !options.resolver && !options.noBacking) {
    throw invalidArg(FORMAT, `${storage.name}: a backing file needs a resolver to open it (or noBacking)`, { file: storage.name, field: 'backingFile' });
  }
  const cs = 2 ** l.clusterBits;
  const l2Entries = cs / (l.extendedL2 ? 16 : 8);
  const l2Coverage = l2Entries * cs;
  const l1Entries = Math.ceil(l.size / l2Coverage);
  if (l1Entries * 8 > MAX_L1_TABLE_BYTES) throw invalidArg(FORMAT, `size ${l.size} needs an L1 table over 32 MiB with ${cs}-byte clusters`, { field: 'size' });
  const l1Clusters = Math.ceil((l1Entries * 8) / cs);
  const prealloc = l.preallocation !== 'off';
  const guestClusters = Math.ceil(l.size / cs);
  const input = { clusterSize: cs, refcountOrder: l.refcountOrder, l1Clusters, l2Tables: prealloc ? l1Entries : 0, dataClusters: prealloc && l.dataFile === undefined ? guestClusters : 0 };
  // falloc and full are laid out as qemu's preallocating truncate leaves them (so that map shows the same offsets).
  const allocates = l.preallocation === 'falloc' || l.preallocation === 'full';
  const plan = (allocates && l.dataFile === undefined ? truncatedCreatePlan(input) : undefined) ?? packedCreatePlan(input);
  if (plan.rtClusters * cs > MAX_REFCOUNT_TABLE_BYTES) throw invalidArg(FORMAT, 'the refcount table would exceed 8 MiB', { field: 'size' });

  // A block device keeps its size (Storage.fixedSize): what create lays out must fit, checked before anything is written.
  const capacity = storage.fixedSize ? await storage.size() : Infinity;
  if (plan.total * cs > capacity) {
    throw invalidArg(FORMAT, `${storage.name}: the block device is ${capacity} bytes, too small for the ${plan.total * cs} bytes the new image lays out`, { file: storage.name, field: 'size', expected: plan.total * cs, actual: capacity });
  }

  const h = headerFor(l, { l1Entries, l1Offset: l1Entries ? plan.l1At * cs : 0, refcountTableOffset: plan.rtAt * cs, refcountTableClusters: plan.rtClusters });

  // The data file first: if it cannot be opened, nothing is written.
  let dataStorage: Storage | undefined;
  if (l.dataFile !== undefined) {
    dataStorage = options.dataFileStorage;
    if (!dataStorage) {
      if (!options.resolver) throw invalidArg(FORMAT, 'an external data file needs dataFileStorage or a resolver', { field: 'dataFile' });
      const request = { name: l.dataFile, kind: 'data-file' as const, from: storage, writable: true };
      // As qemu-img create: a data file that does not exist yet is created (one that exists is emptied below, as qemu-img empties it).
      const resolver = options.resolver;
      dataStorage = await resolver(request).catch((e: unknown) => {
        if (ImageError.isInstance(e) && e.code === 'ERR_IMG_NOT_FOUND') return resolver({ ...request, create: true });
        throw e;
      });
    }
  }
  try {
    await storage.truncate(0);
    // Metadata is built and written a window at a time, so that preallocating a large disk stays within bounded memory.
    const window = Math.max(cs, Math.floor((4 * 1024 * 1024) / cs) * cs);
    const fill = (buf: Uint8Array, first: number) => {
      // `buf` holds clusters [first, first + buf.length / cs) of the file.
      for (let k = first; k < first + buf.length / cs; k++) fillCluster(l, h, plan, buf.subarray((k - first) * cs, (k - first + 1) * cs), k, guestClusters);
    };
    for (const [from, to] of plan.metadataRuns) {
      for (let start = from * cs; start < to * cs; start += window) {
        const buf = new Uint8Array(Math.min(window, to * cs - start));
        fill(buf, start / cs);
        await storage.write(start, buf);
      }
    }
    if (plan.dataClusters) {
      await storage.truncate(plan.total * cs);
      // falloc: one fallocate where the file system can (else zeros); full: zeros, as qemu writes them.
      // A block device reads as its old bytes, not as the holes of a grown file: every mode writes the zeros there
      // (qemu leaves metadata's data clusters reading as the old bytes, and refuses falloc and full).
      if (storage.fixedSize) await preallocateRange(storage, plan.dataAt * cs, plan.dataClusters * cs, 'full');
      else if (allocates) await preallocateRange(storage, plan.dataAt * cs, plan.dataClusters * cs, l.preallocation === 'full' ? 'full' : 'falloc');
    }
    if (dataStorage) {
      await dataStorage.truncate(0);
      await dataStorage.truncate(l.size);
      if (allocates) await preallocateRange(dataStorage, 0, l.size, l.preallocation === 'full' ? 'full' : 'falloc');
      await dataStorage.flush();
    }
    await storage.flush();
  } finally {
    // The data file is opened again by openQcow2 through the same route.
    if (dataStorage && dataStorage !== options.dataFileStorage) await dataStorage.close();
  }
  if (l.encrypt) await encryptNewImage(storage, l.encrypt.luks, l.encrypt.passphrase);
  const given = options.dataFileStorage;
  const resolver: Resolver | undefined = given !== undefined ? async (request) => (request.kind === 'data-file' ? given : options.resolver ? options.resolver(request) : Promise.reject(new Error('no resolver'))) : options.resolver;
  return openQcow2(storage, { readOnly: false, resolver, formats: options.formats, noBacking: options.noBacking, ...(l.encrypt ? { passphrase: l.encrypt.passphrase } : {}) });
}
