/**
 * createVhd: new fixed, dynamic and differencing disks.
 *
 * Sizing: by default the footer's creator application is "win " (Hyper-V)
 * with the spec's CHS geometry, so that every reader (qemu, Windows,
 * libvhdi) uses the current size and sees exactly the size asked for, even
 * when it is not CHS-exact. `forceSize: true` writes what qemu-img's
 * force_size=on writes ("qem2", maximal geometry); `forceSize: false`
 * rounds the size up to a CHS-exact one, as qemu-img does by default.
 */
import { checkOptionKeys, invalidArg, parseBool, parseSize, type Disk, type OptionTable, type Resolver, type Storage } from '@img/block';
import { BAT_UNUSED, MAX_BAT_ENTRIES, batBytes, emptyBatBytes } from './bat.js';
import { bitmapSize } from './bitmap.js';
import { DYNAMIC_HEADER_COOKIE, DYNAMIC_HEADER_SIZE, DYNAMIC_HEADER_VERSION, emptyLocator, type ParentLocatorEntry, type VhdDynamicHeader } from './dynamic-header.js';
import { DISK_TYPE, FEATURE_RESERVED, FILE_FORMAT_VERSION, FOOTER_COOKIE, FOOTER_SIZE, NO_DATA_OFFSET, toVhdTimestamp, type VhdFooter, type VhdType } from './footer.js';
import { VHD_MAX_CHS_SECTORS, VHD_MAX_SIZE, VHD_SECTOR, chsForSectors, chsProduct, chsRoundUp, vhdVirtualSize, type VhdGeometry } from './geometry.js';
import { VhdDisk } from './disk.js';
import { VhdImage } from './image.js';
import { PLATFORM_CODE, baseName, dirName, encodeLocatorData, isAbsolutePath, pathToFileUrl, relativePath, toWindowsRelative } from './parent-locator.js';
import { FORMAT, MAX_BLOCK_SIZE, type VhdState } from './state.js';
import { NIL_UUID, newUuid, parseUuid } from './uuid.js';
import { writeFooters, writeHeader } from './write-metadata.js';

/** Default block size of dynamic and differencing disks. */
export const DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;
/** Creator written by default: sized by current size everywhere (see module doc). */
export const DEFAULT_CREATOR = { app: 'win ', version: 0x000a_0000, os: 'Wi2k' } as const;

/** The block size asked for (default 2 MiB), checked: a power of two from 512 bytes to the largest we open. */
export function checkedBlockSize(blockSize: number = DEFAULT_BLOCK_SIZE): number {
  if (!Number.isSafeInteger(blockSize) || blockSize < VHD_SECTOR || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    throw invalidArg(FORMAT, `block size ${blockSize} is not a power of two between 512 and ${MAX_BLOCK_SIZE}`, { field: 'blockSize' });
  }
  return blockSize;
}

/** A new disk's footer (its checksum is set when it is serialized); `app` overrides the default creator application. */
export function newFooter(type: VhdType, size: number, geometry: VhdGeometry, options: Pick<VhdCreateOptions, 'creator' | 'timestamp' | 'uuid'>, app?: string): VhdFooter {
  return {
    cookie: FOOTER_COOKIE,
    features: FEATURE_RESERVED,
    fileFormatVersion: FILE_FORMAT_VERSION,
    dataOffset: type === 'fixed' ? NO_DATA_OFFSET : BigInt(VHD_SECTOR),
    timestamp: toVhdTimestamp(options.timestamp ?? new Date()),
    creatorApp: (options.creator?.app ?? app ?? DEFAULT_CREATOR.app).padEnd(4, ' ').slice(0, 4),
    creatorVersion: options.creator?.version ?? DEFAULT_CREATOR.version,
    creatorHostOs: (options.creator?.os ?? DEFAULT_CREATOR.os).padEnd(4, ' ').slice(0, 4),
    originalSize: size,
    currentSize: size,
    geometry,
    diskType: DISK_TYPE[type],
    checksum: 0,
    uniqueId: options.uuid ?? newUuid(),
    savedState: 0,
    reserved: new Uint8Array(FOOTER_SIZE - 0x55),
  };
}

/** The parent of a new differencing disk. */
export interface VhdParentSpec {
  /** The open parent (a VhdDisk). The child takes ownership: closing the child closes it. */
  disk: VhdDisk;
  /** The parent's path relative to the child's directory (W2ru locator, parent unicode name). */
  relativePath: string;
  /** The parent's absolute path (W2ku and MacX locators). */
  absolutePath?: string;
}

export interface VhdCreateOptions {
  /** Default "dynamic", or "differencing" when a parent is given. */
  type?: VhdType;
  /** Virtual size in bytes (rounded up to a sector). Differencing disks default to the parent's size. */
  size?: number;
  /** Bytes per block, a power of two from 512 (default 2 MiB). */
  blockSize?: number;
  parent?: VhdParentSpec;
  /** Unique id (default: a random UUID). */
  uuid?: string;
  /** Footer timestamp (default: now). */
  timestamp?: Date;
  /** Creator application (4 characters), version (major << 16 | minor) and host OS. */
  creator?: { app?: string; version?: number; os?: string };
  /** qemu-img's force_size: true = "qem2" and maximal geometry; false = round up to CHS. Default: exact size, "win ". */
  forceSize?: boolean;
  /**
   * Where a differencing disk's parent locator data goes: `before-bat`
   * (default: the BAT can then grow in place by moving blocks only) or
   * `after-bat`, as Hyper-V places it.
   */
  locatorPlacement?: 'before-bat' | 'after-bat';
  /** Looks parents up for a later setBacking (kind "parent"), as openVhd's `resolver`. */
  resolver?: Resolver;
}

/** The create options: typed key, `qemu-img create -o` name (qemu's vpc driver), help, kind of value. */
export const VHD_CREATE_OPTIONS: OptionTable = [
  { key: 'size', name: 'size', kind: 'size', help: 'Virtual disk size' },
  { key: 'type', name: 'subformat', kind: 'str', help: 'dynamic (default) or fixed' },
  { key: 'blockSize', name: 'block_size', kind: 'size', help: 'block size of dynamic disks, a power of two from 512 (default 2M)' },
  {
    key: 'forceSize',
    name: 'force_size',
    kind: 'bool',
    help: 'on: exact size with the maximal CHS geometry, as qemu-img (creator "qem2"); off: round up to a CHS-exact size; default: exact size (creator "win ")',
  },
  { key: 'backingFile', name: 'backing_file', kind: 'str', help: 'parent of a differencing disk (needs a resolver)' },
  { key: 'backingFormat', name: 'backing_fmt', kind: 'str', help: 'format of the parent: vhd (vpc)' },
];

/** Typed keys of VhdCreateOptions that have no `-o` name. */
export const VHD_TYPED_CREATE_KEYS: readonly string[] = ['parent', 'uuid', 'timestamp', 'creator', 'locatorPlacement', 'resolver'];

function geometryFor(size: number, forceSize: boolean | undefined): { geometry: VhdGeometry; size: number; app?: string } {
  const sectors = size / VHD_SECTOR;
  if (forceSize === true) return { geometry: { cylinders: 65535, heads: 16, sectorsPerTrack: 255 }, size, app: 'qem2' };
  if (forceSize === false) {
    const g = chsRoundUp(sectors);
    const product = chsProduct(g);
    return { geometry: g, size: product === VHD_MAX_CHS_SECTORS ? size : product * VHD_SECTOR };
  }
  return { geometry: chsForSectors(sectors), size };
}

/**
 * Creates a VHD in `storage` (its old contents are discarded) and returns
 * it open for writing.
 *
 * @example
 * ```ts
 * const disk = await createVhd(await FileStorage.create('a.vhd'), { type: 'dynamic', size: 10 * 2 ** 30 });
 * ```
 */
export async function createVhd(storage: Storage, options: VhdCreateOptions): Promise<VhdDisk> {
  return new VhdDisk(await createVhdImage(storage, options));
}

/** createVhd's work: the new image's core, open for writing. */
export async function createVhdImage(storage: Storage, options: VhdCreateOptions): Promise<VhdImage> {
  if (options === null || typeof options !== 'object') throw invalidArg(FORMAT, 'size is required', { field: 'size' });
  checkOptionKeys(
    FORMAT,
    VHD_CREATE_OPTIONS.filter((o) => !o.key.startsWith('backing')),
    options,
    VHD_TYPED_CREATE_KEYS,
  );
  const parent = options.parent;
  const type: VhdType = options.type ?? (parent ? 'differencing' : 'dynamic');
  if (!(type in DISK_TYPE)) throw invalidArg(FORMAT, `unknown VHD type "${String(type)}" (fixed, dynamic, differencing)`, { field: 'type' });
  if (type === 'differencing' && !parent) throw invalidArg(FORMAT, 'a differencing disk needs a parent', { field: 'parent' });
  if (type !== 'differencing' && parent) throw invalidArg(FORMAT, `a ${type} disk has no parent`, { field: 'parent' });
  const requested = options.size ?? parent?.disk.size;
  if (requested === undefined || !Number.isSafeInteger(requested) || requested < 0) throw invalidArg(FORMAT, `invalid size ${String(requested)}`, { field: 'size' });
  if (requested > VHD_MAX_SIZE) throw invalidArg(FORMAT, `size ${requested} is larger than the VHD maximum of 2040 GiB`, { field: 'size' });
  const blockSize = checkedBlockSize(options.blockSize);
  const sized = geometryFor(Math.ceil(requested / VHD_SECTOR) * VHD_SECTOR, options.forceSize);
  const size = sized.size;
  const uuid = options.uuid ?? newUuid();
  parseUuid(uuid);
  const footer = newFooter(type, size, sized.geometry, { ...options, uuid }, sized.app);
  const creatorApp = footer.creatorApp;
  const state: VhdState = {
    storage,
    type,
    footer,
    sizeMode: 'auto',
    size: vhdVirtualSize(creatorApp, sized.geometry, size),
    fixedFooterOffset: size,
    shortFooter: false,
    headerOffset: VHD_SECTOR,
    bat: new Uint32Array(0),
    blockSize: 0,
    bitmapBytes: 0,
    sectorsPerBlock: 0,
    nextFree: 0,
    metadata: [],
    problems: [],
    repairable: [],
    coalescing: false,
  };
  if (options.resolver) state.resolver = options.resolver;
  await storage.truncate(0);
  if (type === 'fixed') {
    await storage.truncate(size + FOOTER_SIZE);
    await writeFooters(state);
    await storage.flush();
    return new VhdImage(state, false);
  }
  const entries = Math.ceil(size / blockSize);
  if (entries > MAX_BAT_ENTRIES) {
    throw invalidArg(FORMAT, `a ${size}-byte disk of ${blockSize}-byte blocks needs ${entries} BAT entries, more than readers accept (${MAX_BAT_ENTRIES}): use larger blocks`, { field: 'blockSize' });
  }
  // Parent locator data goes between the header and the BAT, so that the BAT
  // can grow in place (resize) by moving blocks only: moving locator data
  // would mean rewriting both sectors of the header, which a torn write can
  // leave with a wrong checksum.
  const legacy = options.locatorPlacement === 'after-bat';
  let next = VHD_SECTOR + DYNAMIC_HEADER_SIZE + (legacy ? batBytes(entries) : 0);
  const locators: ParentLocatorEntry[] = [];
  const locatorData: Array<{ at: number; bytes: Uint8Array }> = [];
  let parentName = '';
  if (parent) {
    const rel = parent.relativePath.replace(/\\/g, '/');
    parentName = baseName(rel);
    const wanted: Array<[string, string]> = [];
    if (!isAbsolutePath(rel)) wanted.push([PLATFORM_CODE.W2RU, toWindowsRelative(rel)]);
    // An absolute parent name: the relative locator is the way from the child's directory, when the child's own
    // path says where that is; otherwise only the absolute locators are written (".\\/abs/path" would name nothing).
    else if (rel.startsWith('/') && storage.name.startsWith('/')) wanted.push([PLATFORM_CODE.W2RU, toWindowsRelative(relativePath(dirName(storage.name), rel))]);
    const abs = parent.absolutePath ?? (isAbsolutePath(rel) ? rel : undefined);
    if (abs) {
      wanted.push([PLATFORM_CODE.W2KU, abs]);
      if (abs.startsWith('/')) wanted.push([PLATFORM_CODE.MACX, pathToFileUrl(abs)]);
    }
    for (const [code, path] of wanted) {
      const bytes = encodeLocatorData(code, path);
      const space = Math.max(VHD_SECTOR, Math.ceil(bytes.length / VHD_SECTOR) * VHD_SECTOR);
      // Data space in bytes, as Windows writes it (the spec says sectors).
      locators.push({ platformCode: code, platformDataSpace: space, platformDataLength: bytes.length, reserved: 0, platformDataOffset: next });
      locatorData.push({ at: next, bytes });
      next += space;
    }
  }
  while (locators.length < 8) locators.push(emptyLocator());
  const tableOffset = legacy ? VHD_SECTOR + DYNAMIC_HEADER_SIZE : next;
  if (!legacy) next = tableOffset + batBytes(entries);
  const parentFooter = parent?.disk.footer;
  const header: VhdDynamicHeader = {
    cookie: DYNAMIC_HEADER_COOKIE,
    dataOffset: NO_DATA_OFFSET,
    tableOffset,
    headerVersion: DYNAMIC_HEADER_VERSION,
    maxTableEntries: entries,
    blockSize,
    checksum: 0,
    parentUniqueId: parentFooter?.uniqueId ?? NIL_UUID,
    parentTimestamp: parentFooter?.timestamp ?? 0,
    reserved1: 0,
    parentUnicodeName: parentName,
    parentLocators: locators,
    reserved2: new Uint8Array(256),
  };
  state.header = header;
  state.bat = new Uint32Array(entries).fill(BAT_UNUSED);
  state.blockSize = blockSize;
  state.bitmapBytes = bitmapSize(blockSize);
  state.sectorsPerBlock = blockSize / VHD_SECTOR;
  state.nextFree = next;
  state.metadata = [
    { start: 0, end: FOOTER_SIZE, what: 'the footer copy' },
    { start: VHD_SECTOR, end: VHD_SECTOR + DYNAMIC_HEADER_SIZE, what: 'the dynamic header' },
    { start: tableOffset, end: tableOffset + batBytes(entries), what: 'the BAT' },
    ...locatorData.map((l, i) => ({ start: l.at, end: l.at + locators[i]!.platformDataSpace, what: `parent locator ${i}` })),
  ];
  await writeHeader(state);
  await storage.write(tableOffset, emptyBatBytes(entries));
  for (const l of locatorData) await storage.write(l.at, l.bytes);
  await writeFooters(state);
  await storage.flush();
  if (parent) {
    state.parent = parent.disk as Disk;
    state.parentName = parent.relativePath;
    state.parentFile = parent.disk.storage.name;
  }
  return new VhdImage(state, false);
}

/**
 * Maps the CLI's string options (`subformat=dynamic|fixed`, `block_size=2M`,
 * `force_size=on`) and typed keys to VhdCreateOptions.
 */
export function vhdCreateOptionsFrom(options: Record<string, unknown>): VhdCreateOptions {
  const out: VhdCreateOptions = {};
  // The CLI passes -1 when the size is to come from the backing file.
  if (options.size !== undefined && !(typeof options.size === 'number' && options.size < 0)) out.size = parseSize(options.size as string | number);
  const type = options.type ?? options.subformat;
  if (type !== undefined) {
    if (type !== 'fixed' && type !== 'dynamic' && type !== 'differencing') {
      throw invalidArg(FORMAT, `invalid subformat "${String(type)}" (dynamic or fixed)`, { field: 'subformat' });
    }
    out.type = type;
  }
  const bs = options.blockSize ?? options.block_size;
  if (bs !== undefined) out.blockSize = parseSize(bs as string | number, 'block_size');
  const force = options.forceSize ?? options.force_size;
  if (force !== undefined) out.forceSize = parseBool(force, 'force_size');
  if (typeof options.uuid === 'string') out.uuid = options.uuid;
  if (options.timestamp instanceof Date) out.timestamp = options.timestamp;
  if (options.creator && typeof options.creator === 'object') out.creator = options.creator as VhdCreateOptions['creator'] & object;
  if (options.parent && typeof options.parent === 'object') out.parent = options.parent as VhdParentSpec;
  return out;
}
