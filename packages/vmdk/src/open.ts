/**
 * openVmdk: a file is either a hosted sparse extent ('KDMV', its
 * descriptor embedded: monolithicSparse, streamOptimized) or a descriptor
 * (text) naming extent files (monolithicFlat, twoGbMaxExtentSparse/Flat,
 * vmfs). Extent files and the parent are opened through the caller's
 * resolver; an untrusted open refuses every name found in the image.
 */
import { chainCycleError, chainTooDeepError, corrupt, hex, invalidArg, noResolverError, readOnlyStorageError, unsafe, unsupported, wrongFormat, type ChainOpenOptions, type Disk, type OpenOptions, type Storage } from '@img/block';
import { CID_NO_PARENT, decodeDescriptorBytes, descriptorField, looksLikeDescriptor, MAX_DESCRIPTOR_BYTES, parseCid, parseDescriptor, type DescriptorExtent, type VmdkDescriptor } from './descriptor.js';
import { VmdkDisk } from './disk.js';
import { FORMAT, VmdkImage, type VmdkExtent } from './image.js';
import { SECTOR, SPARSE_MAGIC, hasSparseMagic } from './sparse-header.js';
import { openSparseExtent } from './sparse-extent.js';
import { assertWritableLayout } from './write-guard.js';
import { hasCowdMagic } from './cowd-header.js';
import { openCowdExtent } from './cowd-extent.js';
import { openSeSparseExtent } from './sesparse-extent.js';
import type { GrainMap } from './grain-map.js';

/** Default deepest parent chain. */
const DEFAULT_MAX_CHAIN = 64;

/** Options of openVmdk: the generic OpenOptions plus VMDK's own. */
export interface VmdkOpenOptions extends OpenOptions {
  /**
   * Use a parent whose CID differs from the child's parentCID. Such a
   * chain opens either way (a commit into the parent changes its CID and
   * leaves the child's parentCID as it was; info, map and check work, as
   * in qemu-img); without this option, as in qemu-img, a read that falls
   * through to the parent and a write that needs a new grain in the child
   * are ERR_IMG_MISMATCH.
   */
  allowCidMismatch?: boolean;
}

/** The createTypes whose descriptor is a file of its own (as qemu accepts them). */
const DESCRIPTOR_FILE_TYPES = ['monolithicFlat', 'vmfs', 'vmfsSparse', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'vmfsRaw', 'vmfsRawDeviceMap', 'vmfsPassthroughRawDeviceMap', 'custom', 'fullDevice', 'partitionedDevice', 'seSparse'];

/**
 * Opens a VMDK over `storage` (the descriptor file, or the sparse extent
 * with its embedded descriptor). Read-only unless `readOnly: false`.
 *
 * @example
 * ```ts
 * await using disk = await openVmdk(await FileStorage.open('a.vmdk'), { resolver: fileResolver });
 * const first = await disk.read(0, 512);
 * ```
 */
export async function openVmdk(storage: Storage, options: VmdkOpenOptions = {}): Promise<VmdkDisk> {
  return new VmdkDisk(await openVmdkImage(storage, options));
}

/** Opens the core of a VMDK image (what {@link openVmdk} wraps; check loads it directly). On failure every file it opened is closed again. */
export async function openVmdkImage(storage: Storage, options: VmdkOpenOptions = {}): Promise<VmdkImage> {
  const owned: Storage[] = [];
  let parent: Disk | undefined;
  try {
    return await openCore(storage, options, owned, (p) => (parent = p));
  } catch (e) {
    await parent?.close().catch(() => undefined);
    for (const s of owned) await s.close().catch(() => undefined);
    throw e;
  }
}

async function openCore(storage: Storage, options: VmdkOpenOptions, owned: Storage[], setParent: (p: Disk) => void): Promise<VmdkImage> {
  const file = storage.name;
  const readOnly = options.readOnly ?? true;
  if (!readOnly && storage.readOnly) throw readOnlyStorageError(FORMAT, file);
  const fileSize = await storage.size();
  if (fileSize < 4) throw wrongFormat(FORMAT, file);
  const head = await storage.read(0, Math.min(fileSize, SECTOR));
  let descriptor: VmdkDescriptor;
  let extents: VmdkExtent[];
  let home: VmdkImage['home'];
  let createType: string;
  if (hasSparseMagic(head)) {
    const opened = await openSparseExtent(storage, head);
    const h = opened.map.header;
    if (h.capacity === 0) throw unsupported(FORMAT, file, 'a sparse extent of capacity 0 (a descriptor hidden in a sparse header) is not supported', { field: 'capacity', offset: 12 });
    // As qemu-img: a sparse extent whose descriptor area holds no descriptor (no "parentCID" in its text, qemu's
    // test) is one piece of a split image (x-s001.vmdk of twoGbMaxExtentSparse: its area is there but empty);
    // opened alone it would show one extent's worth of the disk as if it were all of it.
    if (!opened.descriptorText?.includes('parentCID')) {
      throw unsupported(FORMAT, file, 'the sparse extent has no embedded descriptor (no parentCID in its descriptor area): it is one extent of a split image, open the descriptor file that names it', { field: 'descriptorOffset', offset: 28 });
    }
    descriptor = parseDescriptor(opened.descriptorText ?? '', file);
    createType = descriptorField(descriptor, 'createType') ?? (opened.map.compressed ? 'streamOptimized' : 'monolithicSparse');
    extents = [{ kind: 'sparse', type: 'SPARSE', start: 0, length: opened.map.capacityBytes, storage, map: opened.map }];
    home = opened.descriptorArea ? { storage, offset: opened.descriptorArea.offset, capacity: opened.descriptorArea.length } : { storage, offset: 0, capacity: 0 };
    if (!readOnly) {
      if (opened.map.compressed) throw unsupported(FORMAT, file, 'a streamOptimized (compressed) image can only be opened read-only', { field: 'flags' });
      if (h.version === 3) throw unsupported(FORMAT, file, 'a version 3 hosted sparse extent can only be opened read-only (as qemu)', { field: 'version', offset: 4 });
      await assertWritableLayout(opened.map);
    }
  } else {
    if (hasCowdMagic(head)) throw unsupported(FORMAT, file, 'a COWD extent opened on its own: open the vmfsSparse descriptor that names it (it holds the size, the CID and the parent)', { field: 'magic', offset: 0 });
    const text = decodeDescriptorBytes(await storage.read(0, Math.min(fileSize, MAX_DESCRIPTOR_BYTES)));
    if (!looksLikeDescriptor(text)) throw wrongFormat(FORMAT, file);
    descriptor = parseDescriptor(text, file);
    createType = descriptorField(descriptor, 'createType') ?? '';
    if (!DESCRIPTOR_FILE_TYPES.includes(createType)) {
      throw unsupported(FORMAT, file, `createType "${createType}" is not supported in a descriptor file`, { field: 'createType', actual: createType });
    }
    extents = await openExtents(storage, descriptor, options, owned, readOnly);
    home = { storage, offset: 0 };
  }
  const parentOpen = await openParent(storage, descriptor, options);
  if (parentOpen) setParent(parentOpen.disk);
  const parentCid = parseCid(descriptorField(descriptor, 'parentCID'));
  const stale = parentOpen && parentCid !== undefined && parentCid !== CID_NO_PARENT && parentOpen.cid !== parentCid;
  const hint = descriptorField(descriptor, 'parentFileNameHint');
  return new VmdkImage({
    storage,
    descriptor,
    home,
    createType,
    extents,
    readOnly,
    owned,
    ...(parentOpen ? { parent: parentOpen.disk } : {}),
    ...(stale && parentCid !== undefined ? { staleParent: { parentCid, cid: parentOpen.cid, allowed: options.allowCidMismatch ?? false } } : {}),
    ...(hint ? { parentName: hint } : {}),
    ...(options.resolver && !options.untrusted ? { resolver: options.resolver } : {}),
  });
}

/** Opens each extent line's file through the resolver, in guest order. */
async function openExtents(storage: Storage, d: VmdkDescriptor, options: VmdkOpenOptions, owned: Storage[], readOnly: boolean): Promise<VmdkExtent[]> {
  const file = storage.name;
  const out: VmdkExtent[] = [];
  let start = 0;
  if (d.extents.length === 0) throw corrupt(FORMAT, file, 'the descriptor lists no extent', { field: 'extents' });
  // Each file is opened once. By name first: a descriptor repeating one name 32768 times would otherwise open (and
  // lock) one file 32768 times, and the kernel's lock list makes that quadratic (minutes). Then by the storage's
  // identity (a file's device and inode), which also sees "./a.vmdk", "sub/../a.vmdk" and links as the file they name.
  // Read-only extents share the storage; a writable open refuses a file named twice, as qemu does (its second open of
  // the file fails on its own image locks), since a write through one extent changes what the other reads.
  const byName = new Map<string, SharedFile>();
  const byIdentity = new Map<string, SharedFile>();
  if (storage.identity !== undefined) byIdentity.set(storage.identity, { storage, extent: -1 });
  for (const [i, line] of d.extents.entries()) {
    const length = line.sectors * SECTOR;
    if (line.type === 'ZERO' || line.access === 'NOACCESS') {
      out.push({ kind: 'zero', type: line.type, start, length });
      start = extentEnd(file, start, length, i);
      continue;
    }
    if (!readOnly && (line.type === 'VMFSSPARSE' || line.type === 'SESPARSE')) {
      throw unsupported(FORMAT, file, `extent ${i + 1} is ${line.type}, which can only be opened read-only`, { field: `extent ${i + 1}`, actual: line.type });
    }
    let shared = byName.get(line.fileName!);
    if (!shared) {
      const fresh = await resolveExtent(storage, line, i, options, readOnly);
      shared = fresh.identity !== undefined ? byIdentity.get(fresh.identity) : undefined;
      if (shared) await fresh.close().catch(() => undefined);
      else {
        shared = { storage: fresh, extent: i };
        owned.push(fresh);
        if (fresh.identity !== undefined) byIdentity.set(fresh.identity, shared);
      }
      byName.set(line.fileName!, shared);
    }
    if (shared.extent !== i && !readOnly) throw namedTwice(file, line, i, shared.extent);
    const extentStorage = shared.storage;
    if (line.type === 'SPARSE' || line.type === 'VMFSSPARSE' || line.type === 'SESPARSE') {
      // Read-only, a file named again with the same type shares the grain map the first one opened: the same header,
      // grain directory and tables, loaded once (32768 copies of one grain map held 300 MiB).
      const map = shared.map !== undefined && shared.mapType === line.type ? shared.map : await openGrainMap(file, line, i, extentStorage, readOnly);
      shared.map = map;
      shared.mapType = line.type;
      // As qemu: the extent's own header decides its size.
      out.push({ kind: 'sparse', type: line.type, fileName: line.fileName!, start, length: map.capacityBytes, storage: extentStorage, map });
      start = extentEnd(file, start, map.capacityBytes, i);
      continue;
    }
    const size = await extentStorage.size();
    const fileOffset = (line.offset ?? 0) * SECTOR;
    if (fileOffset + length > size) {
      throw corrupt(FORMAT, file, `extent ${i + 1} ("${line.fileName}") needs ${length} bytes from ${hex(fileOffset)}, but the file holds ${size}`, { field: `extent ${i + 1}`, expected: fileOffset + length, actual: size });
    }
    out.push({ kind: 'flat', type: line.type, fileName: line.fileName!, start, length, storage: extentStorage, fileOffset });
    start = extentEnd(file, start, length, i);
  }
  return out;
}

/** Opens the grain map of sparse extent `i` (SPARSE, VMFSSPARSE or SESPARSE): COWD or KDMV by its magic, as qemu. */
async function openGrainMap(file: string, line: DescriptorExtent, i: number, extentStorage: Storage, readOnly: boolean): Promise<GrainMap> {
  if (line.type === 'SESPARSE') return openSeSparseExtent(extentStorage);
  const size = await extentStorage.size();
  if (hasCowdMagic(await extentStorage.read(0, Math.min(size, 4)))) {
    if (!readOnly) throw unsupported(FORMAT, file, `extent ${i + 1} is a COWD extent, which can only be opened read-only`, { field: `extent ${i + 1}` });
    return openCowdExtent(extentStorage);
  }
  const head = await extentStorage.read(0, Math.min(size, SECTOR));
  if (!hasSparseMagic(head)) throw corrupt(FORMAT, file, `extent ${i + 1} ("${line.fileName}") is not a sparse extent (no KDMV or COWD magic)`, { field: `extent ${i + 1}`, expected: SPARSE_MAGIC });
  const opened = await openSparseExtent(extentStorage, head);
  if (!readOnly && opened.map.compressed) throw unsupported(FORMAT, file, `extent ${i + 1} is compressed and can only be opened read-only`, { field: `extent ${i + 1}` });
  if (!readOnly) await assertWritableLayout(opened.map);
  return opened.map;
}

/** A file that extents share: its storage and the first extent (-1: the descriptor file) that opened it. */
interface SharedFile {
  storage: Storage;
  extent: number;
  /** The grain map the first sparse extent on the file opened, and that extent's type (read-only opens share it). */
  map?: GrainMap;
  mapType?: string;
}

/** Extent `i` names a file that extent `first` (-1: the descriptor itself) opened already: a writable open refuses it. */
function namedTwice(file: string, line: DescriptorExtent, i: number, first: number): Error {
  const what = first < 0 ? 'the descriptor file itself' : `the file of extent ${first + 1}`;
  return corrupt(FORMAT, file, `extent ${i + 1} names "${line.fileName}", ${what}: a write through one would change the other, so writable opens refuse it`, { field: `extent ${i + 1}`, actual: line.fileName! });
}

/** Where extent `i` ends in the guest: the disk's size may not pass 2^53 bytes (ZERO extents of 2^53 sectors are text, not data). */
function extentEnd(file: string, start: number, length: number, i: number): number {
  const end = start + length;
  if (!Number.isSafeInteger(end)) throw corrupt(FORMAT, file, `extent ${i + 1} ends past 2^53 bytes: the extents' sizes add up to more than a disk can hold`, { field: `extent ${i + 1}`, actual: end });
  return end;
}

async function resolveExtent(storage: Storage, line: DescriptorExtent, i: number, options: VmdkOpenOptions, readOnly: boolean): Promise<Storage> {
  const file = storage.name;
  const name = line.fileName!;
  if (options.untrusted) {
    throw unsafe(FORMAT, file, `extent ${i + 1} is the data file "${name}", outside the given storage; untrusted opens do not open files named inside an image`, { field: `extent ${i + 1}`, actual: name });
  }
  if (!options.resolver) {
    throw invalidArg(FORMAT, `${file}: extent ${i + 1} is the file "${name}": pass a resolver (fileResolver) to open it`, { field: 'resolver', actual: name });
  }
  return options.resolver({ name, kind: 'data-file', from: storage, writable: !readOnly });
}

/** Opens the parent named by parentFileNameHint (its CID is compared with parentCID by the caller, and matters only to writes). */
async function openParent(storage: Storage, d: VmdkDescriptor, options: VmdkOpenOptions & ChainOpenOptions): Promise<{ disk: Disk; name: string; cid: number } | undefined> {
  const file = storage.name;
  const name = descriptorField(d, 'parentFileNameHint');
  if (name === undefined || name === '' || options.noBacking) return undefined;
  if (options.untrusted) throw unsafe(FORMAT, file, `the image refers to a parent "${name}"; untrusted opens do not follow it (use noBacking)`, { field: 'parentFileNameHint', actual: name });
  if (!options.resolver) throw noResolverError(FORMAT, file, 'a parent', name, 'noBacking to read without it', { field: 'resolver', actual: name });
  const chain = [...(options.chain ?? []), file];
  const max = options.maxChainDepth ?? DEFAULT_MAX_CHAIN;
  if (chain.length > max) throw chainTooDeepError(FORMAT, file, max, { field: 'parentFileNameHint' });
  const parentStorage = await options.resolver({ name, kind: 'parent', from: storage, writable: options.backingWritable ?? false });
  if (chain.includes(parentStorage.name)) {
    await parentStorage.close().catch(() => undefined);
    throw chainCycleError(FORMAT, file, `parent "${name}" (${parentStorage.name})`, { field: 'parentFileNameHint', actual: name });
  }
  let disk: VmdkDisk;
  try {
    const below: VmdkOpenOptions & ChainOpenOptions = { ...options, readOnly: !(options.backingWritable ?? false), chain };
    disk = await openVmdk(parentStorage, below);
  } catch (e) {
    await parentStorage.close().catch(() => undefined);
    throw e;
  }
  return { disk, name, cid: disk.cid };
}
