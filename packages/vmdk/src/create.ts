/**
 * createVmdk: a new, empty image of one of the subformats this package
 * writes. monolithicSparse is laid out as qemu-img lays it out (header,
 * descriptor, redundant directory and tables, directory and tables, first
 * grain at 64 KiB); monolithicFlat is a descriptor in `storage` and a flat
 * extent file made through the resolver; streamOptimized is written front
 * to back (see append-writer.ts and stream-layout.ts) and finished on close.
 */
import { checkOptionKeys, invalidArg, optionHelp, type OptionTable, type Resolver, type Storage } from '@img/block';
import { ENTRY_BYTES, serializeEntries } from './grain-table.js';
import { AppendWriter } from './append-writer.js';
import { MAX_EXTENTS, serializeDescriptor, type DescriptorExtent, type VmdkDescriptor } from './descriptor.js';
import { VmdkDisk } from './disk.js';
import { GrainMap } from './grain-map.js';
import { FORMAT, VmdkImage, type VmdkExtent } from './image.js';
import { ADAPTER_TYPES, DEFAULT_HW_VERSION, DEFAULT_TOOLS_VERSION, newDescriptor, type AdapterType } from './new-descriptor.js';
import { FLAG_REDUNDANT_GRAIN_TABLE, FLAG_VALID_NEWLINE, FLAG_ZEROED_GRAIN_GTE, COMPRESSION_NONE, NEWLINE_CHARS, SECTOR, serializeSparseHeader, type SparseHeader } from './sparse-header.js';
import { STREAM_DESCRIPTOR_SECTORS, StreamLayout } from './stream-layout.js';

/** The subformats createVmdk writes. */
export const VMDK_SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'streamOptimized', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'] as const;
/** A subformat createVmdk writes. */
export type VmdkSubformat = (typeof VMDK_SUBFORMATS)[number];
/** Grain size of new sparse images: 128 sectors (64 KiB), as VMware and qemu write. */
export const DEFAULT_GRAIN_SECTORS = 128;
/** Guest bytes per extent file of a twoGbMaxExtent* image: 2 GiB, as qemu-img and VMware split. */
export const SPLIT_EXTENT_BYTES = 2 ** 31;
/** Sectors of the descriptor area of a new sparse extent (qemu-img's 20). */
const DESCRIPTOR_SECTORS = 20;
/**
 * Largest virtual size of a new monolithicSparse or streamOptimized image:
 * 2^32 - 512 grains of 64 KiB (256 TiB - 32 MiB), the largest qemu-img 7.2
 * lays out correctly (above it, qemu's 32-bit count of grain tables wraps
 * and the file it writes opens in neither qemu nor img). Grain table
 * entries are 32-bit sector offsets, so whatever the virtual size, at most
 * the first 2 TiB of the file can hold grains (the tables of a 256 TiB
 * disk take 32 GiB of it), in qemu as in img.
 */
export const MAX_SPARSE_SIZE = (2 ** 32 - 512) * DEFAULT_GRAIN_SECTORS * 512;

/** Options of createVmdk. */
export interface VmdkCreateOptions {
  /** Virtual size in bytes (rounded up to a sector). */
  size: number;
  /** Default monolithicSparse. */
  subformat?: VmdkSubformat;
  /** ddb.adapterType: ide (default for every subformat, as qemu-img), lsilogic, buslogic, legacyESX, pvscsi. */
  adapterType?: AdapterType;
  /** ddb.virtualHWVersion (default "4"). */
  hwVersion?: string;
  /** ddb.toolsVersion (default "2147483647"). */
  toolsVersion?: string;
  /** monolithicSparse: enable zeroed-grain GTEs (header flag bit 2), as qemu's zeroed_grain. */
  zeroedGrain?: boolean;
  /** monolithicFlat: opens (creates) the flat extent file next to `storage`. */
  resolver?: Resolver;
  /**
   * monolithicSparse: a child of this open VMDK, named in the descriptor as
   * `fileName` (relative to the child), with its CID as parentCID. The new
   * disk reads through it and closes it on close.
   */
  parent?: { disk: VmdkDisk; fileName: string };
}

function parseSubformat(text: string, name: string): VmdkSubformat {
  if ((VMDK_SUBFORMATS as readonly string[]).includes(text)) return text as VmdkSubformat;
  throw invalidArg(FORMAT, `${name} must be one of ${VMDK_SUBFORMATS.join(', ')} (got "${text}")`, { field: name, actual: text });
}

function parseAdapter(text: string, name: string): AdapterType {
  if ((ADAPTER_TYPES as readonly string[]).includes(text)) return text as AdapterType;
  throw invalidArg(FORMAT, `${name} must be one of ${ADAPTER_TYPES.join(', ')} (got "${text}")`, { field: name, actual: text });
}

/** The `-o` options of `img create -f vmdk` and `img-convert ... vmdk`, in qemu-img's names. */
export const VMDK_CREATE_OPTIONS: OptionTable = [
  { key: 'size', name: 'size', kind: 'size', help: 'Virtual disk size' },
  { key: 'subformat', name: 'subformat', kind: 'str', help: 'VMDK subformat: monolithicSparse (default), monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized', parse: parseSubformat },
  { key: 'adapterType', name: 'adapter_type', kind: 'str', help: 'Virtual adapter type: ide (default), lsilogic, buslogic, legacyESX, pvscsi', parse: parseAdapter },
  { key: 'hwVersion', name: 'hwversion', kind: 'str', help: 'VMDK hardware version (ddb.virtualHWVersion, default 4)' },
  { key: 'toolsVersion', name: 'toolsversion', kind: 'str', help: 'VMware guest tools version (ddb.toolsVersion)' },
  { key: 'zeroedGrain', name: 'zeroed_grain', kind: 'bool', help: 'Enable efficient zero writes (zeroed-grain GTEs)' },
  { key: 'compat6', name: 'compat6', kind: 'bool', help: 'VMDK version 6 image: hwversion 6, as qemu-img (not with hwversion)' },
];

/** `-o` name -> help, for `-o help`. */
export const VMDK_CREATE_HELP = optionHelp(VMDK_CREATE_OPTIONS);

/** Typed keys createVmdk takes beyond its table. */
export const VMDK_TYPED_CREATE_KEYS: readonly string[] = ['resolver'];

/**
 * Typed options from whatever the registry passes (values may still be
 * `-o` strings such as '64k' or 'on'); unknown keys are refused.
 */
export function vmdkCreateOptionsFrom(options: Record<string, unknown> & { size: number }): VmdkCreateOptions {
  checkOptionKeys(FORMAT, VMDK_CREATE_OPTIONS, options, VMDK_TYPED_CREATE_KEYS);
  const out: VmdkCreateOptions = { size: options.size };
  for (const spec of VMDK_CREATE_OPTIONS) {
    const v = options[spec.key];
    if (v === undefined || spec.key === 'size' || spec.key === 'compat6') continue;
    const value = typeof v === 'string' && spec.kind === 'bool' ? v === 'on' || v === 'true' || v === '1' : typeof v === 'string' && spec.parse ? spec.parse(v, spec.name) : v;
    (out as unknown as Record<string, unknown>)[spec.key] = value;
  }
  // qemu-img's compat6 is hwversion 6 under another name, and refused beside an explicit hwversion.
  const compat6 = options.compat6;
  if (compat6 === true || compat6 === 'on' || compat6 === 'true' || compat6 === '1') {
    if (out.hwVersion !== undefined) throw invalidArg(FORMAT, 'compat6 cannot be enabled with hwversion set', { field: 'compat6' });
    out.hwVersion = '6';
  }
  if (options.resolver) out.resolver = options.resolver as Resolver;
  return out;
}

/** The last path component of a storage name (what a descriptor names its extent by). */
function baseName(name: string): string {
  const i = Math.max(name.lastIndexOf('/'), name.lastIndexOf('\\'));
  return i >= 0 ? name.slice(i + 1) : name;
}

/** "disk.vmdk" -> "disk-flat.vmdk", as qemu-img and VMware name a flat extent. */
export function flatExtentName(descriptorName: string): string {
  const base = baseName(descriptorName);
  const stem = base.toLowerCase().endsWith('.vmdk') ? base.slice(0, -5) : base;
  return `${stem}-flat.vmdk`;
}

/**
 * The name of extent `index` (from 1) of a twoGbMaxExtent* image whose
 * descriptor is `descriptorName`, as qemu-img names them: "disk.vmdk" ->
 * "disk-s001.vmdk" (sparse) or "disk-f001.vmdk" (flat), beside the
 * descriptor.
 */
export function splitExtentName(descriptorName: string, flat: boolean, index: number): string {
  const base = baseName(descriptorName);
  const dot = base.lastIndexOf('.');
  const stem = dot > 0 ? base.slice(0, dot) : base;
  const ext = dot > 0 ? base.slice(dot) : '';
  return `${stem}-${flat ? 'f' : 's'}${String(index).padStart(3, '0')}${ext}`;
}

/**
 * The extent files {@link createVmdk} makes beside a descriptor named
 * `descriptorName` for an image of `size` bytes, by name (relative to the
 * descriptor): `disk-flat.vmdk` for monolithicFlat, `disk-f001.vmdk`,
 * `disk-s001.vmdk`, ... for the twoGbMaxExtent ones, none for the
 * subformats that keep their data in the descriptor's own file. createVmdk
 * creates them exclusively (an existing file of that name fails it, EEXIST);
 * a caller about to replace an image can see that they are free before it
 * truncates anything.
 */
export function vmdkExtentFileNames(descriptorName: string, size: number, subformat: VmdkSubformat = 'monolithicSparse'): string[] {
  const sectors = Math.ceil(Math.max(0, size) / SECTOR);
  if (subformat === 'monolithicFlat') return [flatExtentName(descriptorName)];
  if (subformat !== 'twoGbMaxExtentSparse' && subformat !== 'twoGbMaxExtentFlat') return [];
  // A size createVmdk refuses names no files.
  if (Math.ceil((sectors * SECTOR) / SPLIT_EXTENT_BYTES) > MAX_EXTENTS) return [];
  return splitExtents(descriptorName, sectors, subformat === 'twoGbMaxExtentFlat').map((e) => e.fileName!);
}

/** The extent lines of a twoGbMaxExtent* image of `sectors` sectors. */
function splitExtents(descriptorName: string, sectors: number, flat: boolean): DescriptorExtent[] {
  const per = SPLIT_EXTENT_BYTES / SECTOR;
  const out: DescriptorExtent[] = [];
  for (let at = 0, i = 1; at < sectors; at += per, i++) {
    const n = Math.min(per, sectors - at);
    const fileName = splitExtentName(descriptorName, flat, i);
    out.push(flat ? { access: 'RW', sectors: n, type: 'FLAT', fileName, offset: 0 } : { access: 'RW', sectors: n, type: 'SPARSE', fileName });
  }
  return out;
}

/**
 * Creates an empty VMDK in `storage` and opens it read-write.
 *
 * @example
 * ```ts
 * const disk = await createVmdk(await FileStorage.create('a.vmdk'), { size: 1 << 30 });
 * await disk.write(0, bootSector);
 * await disk.close();
 * ```
 */
export async function createVmdk(storage: Storage, options: VmdkCreateOptions): Promise<VmdkDisk> {
  const size = options.size;
  if (!Number.isSafeInteger(size) || size <= 0) throw invalidArg(FORMAT, `size must be a positive number of bytes (got ${String(size)})`, { field: 'size', actual: size });
  const subformat = options.subformat ?? 'monolithicSparse';
  parseSubformat(subformat, 'subformat');
  const adapterType = parseAdapter(options.adapterType ?? 'ide', 'adapter_type');
  const sectors = Math.ceil(size / SECTOR);
  const split = subformat === 'twoGbMaxExtentSparse' || subformat === 'twoGbMaxExtentFlat';
  const flat = subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat';
  if (split && Math.ceil((sectors * SECTOR) / SPLIT_EXTENT_BYTES) > MAX_EXTENTS) {
    throw invalidArg(FORMAT, `a ${subformat} image holds at most ${MAX_EXTENTS} extents of 2 GiB (got ${size} bytes)`, { field: 'size', actual: size });
  }
  if (flat && options.zeroedGrain) throw invalidArg(FORMAT, `a ${subformat} image has no grains: zeroed_grain does not apply`, { field: 'zeroed_grain' });
  if (hasQuoteOrControl(baseName(storage.name))) throw invalidArg(FORMAT, `the image name "${baseName(storage.name)}" cannot be written in a descriptor (a quote or control character)`, { field: 'file' });
  if (!split && subformat !== 'monolithicFlat' && sectors * SECTOR > MAX_SPARSE_SIZE) {
    throw invalidArg(FORMAT, `a ${subformat} VMDK holds at most ${MAX_SPARSE_SIZE} bytes (2^32 - 512 grains of 64 KiB, as qemu-img lays out; got ${size})`, { field: 'size', actual: size });
  }
  const spec = {
    createType: subformat,
    sectors,
    extentFile: subformat === 'monolithicFlat' ? flatExtentName(storage.name) : baseName(storage.name),
    adapterType,
    hwVersion: options.hwVersion ?? DEFAULT_HW_VERSION,
    toolsVersion: options.toolsVersion ?? DEFAULT_TOOLS_VERSION,
  };
  if (options.parent && subformat !== 'monolithicSparse' && subformat !== 'twoGbMaxExtentSparse') {
    throw invalidArg(FORMAT, `a parent needs subformat monolithicSparse or twoGbMaxExtentSparse, not ${subformat}`, { field: 'backing_file' });
  }
  const descriptor = newDescriptor({ ...spec, ...(options.parent ? { parent: { cid: options.parent.disk.cid, fileName: options.parent.fileName } } : {}) });
  if (split) {
    descriptor.extents = splitExtents(storage.name, sectors, flat);
    return createSplit(storage, descriptor, flat, options.zeroedGrain ?? false, options.resolver, options.parent);
  }
  if (subformat === 'monolithicFlat') return createFlat(storage, descriptor, sectors, options.resolver);
  if (subformat === 'streamOptimized') return createStream(storage, descriptor, sectors);
  return createSparse(storage, descriptor, sectors, options.zeroedGrain ?? false, options.parent);
}

async function createFlat(storage: Storage, descriptor: VmdkDescriptor, sectors: number, resolver: Resolver | undefined): Promise<VmdkDisk> {
  const name = descriptor.extents[0]!.fileName!;
  if (!resolver) throw invalidArg(FORMAT, `a monolithicFlat image needs a resolver to create its extent file "${name}"`, { field: 'resolver' });
  const text = new TextEncoder().encode(serializeDescriptor(descriptor));
  await storage.truncate(0);
  await storage.write(0, text);
  const flat = await resolver({ name, kind: 'data-file', from: storage, writable: true, create: true });
  try {
    await flat.truncate(sectors * SECTOR);
  } catch (e) {
    await flat.close().catch(() => undefined);
    throw e;
  }
  const core = new VmdkImage({
    storage,
    descriptor,
    home: { storage, offset: 0 },
    createType: 'monolithicFlat',
    extents: [{ kind: 'flat', type: 'FLAT', start: 0, length: sectors * SECTOR, storage: flat, fileOffset: 0 }],
    readOnly: false,
    owned: [flat],
    resolver,
  });
  core.cidUpdated = true;
  return new VmdkDisk(core);
}

/**
 * Lays out an empty hosted sparse extent in `storage` as qemu-img does
 * (header, 20-sector descriptor area holding `descriptorText` or zeros,
 * redundant directory and tables, directory and tables, first grain on a
 * grain boundary) and returns its grain map.
 */
async function layoutSparseExtent(storage: Storage, sectors: number, zeroedGrain: boolean, descriptorText: Uint8Array | undefined): Promise<GrainMap> {
  const grainSize = DEFAULT_GRAIN_SECTORS;
  const gtes = 512;
  const tables = Math.ceil(sectors / (grainSize * gtes));
  const gdSectors = Math.ceil((tables * ENTRY_BYTES) / SECTOR);
  const gtSectors = (gtes * ENTRY_BYTES) / SECTOR;
  const descSectors = DESCRIPTOR_SECTORS;
  const rgdOffset = 1 + descSectors;
  const gdOffset = rgdOffset + gdSectors + tables * gtSectors;
  const overHead = Math.ceil((gdOffset + gdSectors + tables * gtSectors) / grainSize) * grainSize;
  const header: SparseHeader = {
    version: 1,
    flags: FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GRAIN_TABLE | (zeroedGrain ? FLAG_ZEROED_GRAIN_GTE : 0),
    capacity: sectors,
    grainSize,
    descriptorOffset: 1,
    descriptorSize: descSectors,
    numGTEsPerGT: gtes,
    rgdOffset,
    gdOffset,
    overHead,
    uncleanShutdown: false,
    newlineChars: [...NEWLINE_CHARS],
    compressAlgorithm: COMPRESSION_NONE,
  };
  const rgd = new Uint32Array(tables);
  const gd = new Uint32Array(tables);
  for (let t = 0; t < tables; t++) {
    rgd[t] = rgdOffset + gdSectors + t * gtSectors;
    gd[t] = gdOffset + gdSectors + t * gtSectors;
  }
  await storage.truncate(0);
  // The header and the descriptor's text, not the rest of its 20 sectors: they read as zeros from the file's hole,
  // as in qemu-img's (whose `disk size` is then the same).
  const head = new Uint8Array(SECTOR * (1 + Math.ceil((descriptorText?.length ?? 0) / SECTOR)));
  head.set(serializeSparseHeader(header), 0);
  if (descriptorText) head.set(descriptorText, SECTOR);
  await storage.write(0, head);
  await storage.write(rgdOffset * SECTOR, serializeEntries(rgd, gdSectors * SECTOR));
  await storage.write(gdOffset * SECTOR, serializeEntries(gd, gdSectors * SECTOR));
  // The tables are zeros: growing the file to the first grain makes them so.
  await storage.truncate(overHead * SECTOR);
  return new GrainMap({
    storage,
    header,
    gd,
    rgd,
    gdOffset: gdOffset * SECTOR,
    rgdOffset: rgdOffset * SECTOR,
    regions: [
      { start: 0, end: SECTOR, what: 'header' },
      { start: SECTOR, end: (1 + descSectors) * SECTOR, what: 'embedded descriptor' },
      { start: rgdOffset * SECTOR, end: (rgdOffset + gdSectors) * SECTOR, what: 'redundant grain directory' },
      { start: gdOffset * SECTOR, end: (gdOffset + gdSectors) * SECTOR, what: 'grain directory' },
    ],
    fileSize: overHead * SECTOR,
  });
}

/** A monolithicSparse image: one sparse extent with the descriptor embedded. */
async function createSparse(storage: Storage, descriptor: VmdkDescriptor, sectors: number, zeroedGrain: boolean, parent?: { disk: VmdkDisk; fileName: string }): Promise<VmdkDisk> {
  const text = new TextEncoder().encode(serializeDescriptor(descriptor));
  if (text.length > DESCRIPTOR_SECTORS * SECTOR) throw invalidArg(FORMAT, 'the descriptor does not fit in 20 sectors', { field: 'descriptor' });
  const map = await layoutSparseExtent(storage, sectors, zeroedGrain, text);
  const core = new VmdkImage({
    storage,
    descriptor,
    home: { storage, offset: SECTOR, capacity: DESCRIPTOR_SECTORS * SECTOR },
    createType: 'monolithicSparse',
    extents: [{ kind: 'sparse', type: 'SPARSE', start: 0, length: sectors * SECTOR, storage, map }],
    readOnly: false,
    owned: [],
    ...(parent ? { parent: parent.disk, parentName: parent.fileName } : {}),
  });
  core.cidUpdated = true;
  return new VmdkDisk(core);
}

/**
 * A twoGbMaxExtentSparse or twoGbMaxExtentFlat image: the descriptor in
 * `storage`, and one extent file per 2 GiB of guest bytes beside it
 * (`<name>-s001.vmdk`, `<name>-f001.vmdk`, ...), each created through the
 * resolver (fileResolver creates exclusively: an existing file, an input
 * included, is never overwritten). The descriptor is written last, so a
 * failure leaves no descriptor naming missing extents.
 */
async function createSplit(storage: Storage, descriptor: VmdkDescriptor, flat: boolean, zeroedGrain: boolean, resolver: Resolver | undefined, parent?: { disk: VmdkDisk; fileName: string }): Promise<VmdkDisk> {
  if (!resolver) throw invalidArg(FORMAT, `a ${flat ? 'twoGbMaxExtentFlat' : 'twoGbMaxExtentSparse'} image needs a resolver to create its extent files`, { field: 'resolver' });
  const extents: VmdkExtent[] = [];
  const owned: Storage[] = [];
  try {
    let start = 0;
    for (const line of descriptor.extents) {
      const file = await resolver({ name: line.fileName!, kind: 'data-file', from: storage, writable: true, create: true });
      owned.push(file);
      const length = line.sectors * SECTOR;
      if (flat) {
        await file.truncate(length);
        extents.push({ kind: 'flat', type: 'FLAT', fileName: line.fileName!, start, length, storage: file, fileOffset: 0 });
      } else {
        const map = await layoutSparseExtent(file, line.sectors, zeroedGrain, undefined);
        extents.push({ kind: 'sparse', type: 'SPARSE', fileName: line.fileName!, start, length, storage: file, map });
      }
      start += length;
    }
    await storage.truncate(0);
    await storage.write(0, new TextEncoder().encode(serializeDescriptor(descriptor)));
  } catch (e) {
    for (const s of owned) await s.close().catch(() => undefined);
    throw e;
  }
  const core = new VmdkImage({
    storage,
    descriptor,
    home: { storage, offset: 0 },
    createType: flat ? 'twoGbMaxExtentFlat' : 'twoGbMaxExtentSparse',
    extents,
    readOnly: false,
    owned,
    resolver,
    ...(parent ? { parent: parent.disk, parentName: parent.fileName } : {}),
  });
  core.cidUpdated = true;
  return new VmdkDisk(core);
}

async function createStream(storage: Storage, descriptor: VmdkDescriptor, sectors: number): Promise<VmdkDisk> {
  const text = new TextEncoder().encode(serializeDescriptor(descriptor));
  if (text.length > STREAM_DESCRIPTOR_SECTORS * SECTOR) throw invalidArg(FORMAT, 'the descriptor does not fit in 20 sectors', { field: 'descriptor' });
  const layout = new StreamLayout(sectors, DEFAULT_GRAIN_SECTORS, text);
  await storage.truncate(0);
  const head = layout.head();
  await storage.write(0, head);
  const map = new GrainMap({
    storage,
    header: layout.header,
    gd: new Uint32Array(layout.tableCount),
    gdOffset: 0,
    rgdOffset: 0,
    regions: [{ start: 0, end: head.length, what: 'header and descriptor' }],
    fileSize: head.length,
  });
  const core = new VmdkImage({
    storage,
    descriptor,
    home: { storage, offset: SECTOR, capacity: STREAM_DESCRIPTOR_SECTORS * SECTOR },
    createType: 'streamOptimized',
    extents: [{ kind: 'sparse', type: 'SPARSE', start: 0, length: sectors * SECTOR, storage, map }],
    readOnly: false,
    owned: [],
  });
  core.appendWriter = new AppendWriter(storage, layout, map, sectors * SECTOR);
  core.cidUpdated = true;
  return new VmdkDisk(core);
}

/** Whether `name` holds a double quote or a control character (U+0000..U+001F): neither can be written in a descriptor line. */
function hasQuoteOrControl(name: string): boolean {
  for (let i = 0; i < name.length; i++) if (name.charCodeAt(i) < 0x20 || name[i] === '"') return true;
  return false;
}
