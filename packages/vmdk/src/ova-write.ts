/**
 * streamOva: any Disk as an OVA byte stream (DSP0243 "OVF package in a
 * single file"): a ustar archive holding the `.ovf` descriptor first, then
 * the disk as a streamOptimized VMDK (`<name>-disk1.vmdk`), then the `.mf`
 * manifest (`SHA256(name)= hex` lines; SHA-1 or SHA-512 on request).
 *
 * The tar header of the disk, and the OVF before it (References names the
 * disk's size), need the compressed size before the first byte of the
 * disk. So the disk is compressed once into a spool (a Storage the caller
 * gives: a temporary file in the Node CLI; memory, bounded, otherwise),
 * hashed on the way, and the archive is then emitted front to back with
 * no seek: to a pipe or a file alike, with its length known up front.
 * Compressing twice (a sizing pass, then the real one) would need no
 * spool but double the CPU time; the spool costs one write and one read
 * of the compressed bytes.
 */
import { MemoryStorage, invalidArg, unsupported, type Disk, type ImageStream, type OptionTable, type Storage } from '@img/block';
import { ADAPTER_TYPES, type AdapterType } from './new-descriptor.js';
import { guestOs, serializeOvf } from './ova-write-ovf.js';
import { serializeTarHeader, tarEnd, tarPadding } from './ova-write-tar.js';
import { newHasher, type Hasher, type ManifestAlgorithm } from './sha.js';
import { streamVmdk } from './stream.js';

/** Options of streamOva. */
export interface OvaWriteOptions {
  /** The virtual system's name, and the stem of the member names (default "vm"). */
  name?: string;
  /** Virtual CPUs (default 1). */
  cpus?: number;
  /** Memory in MiB (default 1024). */
  memoryMiB?: number;
  /** Guest OS: a VMware guest id of OVF_GUEST_OS or a CIM OSType number (default "otherGuest64"). */
  os?: string;
  /** The logical network of the one network adapter (default "VM Network", VMware's default port group). */
  network?: string;
  /** Manifest digest, or "none" for no `.mf` (default "sha256", what ovftool writes). */
  manifest?: ManifestAlgorithm | 'none';
  /** The disk controller and the VMDK's ddb.adapterType (default "lsilogic", VMware's default for exports). */
  adapterType?: AdapterType;
  /** The VMDK's ddb.virtualHWVersion. */
  hwVersion?: string;
  /** The VMDK's ddb.toolsVersion. */
  toolsVersion?: string;
  /** Modification time of the members, seconds since the epoch (default now). */
  mtime?: number;
  /** Where the compressed disk waits until its size is known (default: memory, at most MAX_MEMORY_SPOOL bytes). Closed when the stream ends. */
  spool?: Storage;
  signal?: AbortSignal;
}

/** Most compressed disk bytes held in the default (memory) spool. */
export const MAX_MEMORY_SPOOL = 1024 * 1024 * 1024;

/** The `-o` options of the ova format (qemu-img style names). */
export const OVA_CREATE_OPTIONS: OptionTable = [
  { key: 'name', name: 'name', kind: 'str', help: 'Virtual machine name, and the stem of the file names in the OVA (default vm)' },
  { key: 'cpus', name: 'cpus', kind: 'num', help: 'Number of virtual CPUs (default 1)' },
  { key: 'memoryMiB', name: 'memory', kind: 'num', help: 'Memory in MiB (default 1024)' },
  { key: 'os', name: 'os', kind: 'str', help: 'Guest OS: a VMware guest id (otherGuest64, ubuntu64Guest, ...) or a CIM OSType number (default otherGuest64)' },
  { key: 'network', name: 'network', kind: 'str', help: 'Network the adapter connects to (default "VM Network")' },
  { key: 'manifest', name: 'manifest', kind: 'str', help: 'Manifest digest: sha256 (default), sha1, sha512 or none' },
  { key: 'adapterType', name: 'adapter_type', kind: 'str', help: 'Disk controller: lsilogic (default), buslogic, pvscsi, ide' },
  { key: 'hwVersion', name: 'hwversion', kind: 'str', help: 'VMDK hardware version (ddb.virtualHWVersion)' },
  { key: 'toolsVersion', name: 'toolsversion', kind: 'str', help: 'VMware guest tools version (ddb.toolsVersion)' },
];

const MANIFESTS = ['sha256', 'sha1', 'sha512', 'none'] as const;

function count(v: unknown, field: string, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > max) throw invalidArg('ova', `${field} must be a whole number from 1 to ${max} (got ${String(v)})`, { field, actual: String(v) });
  return n;
}

/** streamOva's options from what the registry passes (`-o` text or typed values); an unknown key or a bad value is ERR_IMG_INVALID_ARG. */
export function ovaWriteOptionsFrom(options: Record<string, unknown> = {}): OvaWriteOptions {
  const out: OvaWriteOptions = {};
  const known = new Set([...OVA_CREATE_OPTIONS.map((o) => o.key), 'size', 'detectZeroes', 'spool', 'signal', 'mtime', 'resolver', 'formats', 'noBacking']);
  for (const key of Object.keys(options)) if (!known.has(key)) throw invalidArg('ova', `unknown ova option "${key}"`, { field: key });
  const { name, os, network, manifest, adapterType, hwVersion, toolsVersion, spool, signal, mtime } = options;
  if (name !== undefined) out.name = String(name);
  const cpus = count(options.cpus, 'cpus', 768);
  if (cpus !== undefined) out.cpus = cpus;
  const memory = count(options.memoryMiB, 'memory', 24 * 1024 * 1024);
  if (memory !== undefined) out.memoryMiB = memory;
  if (os !== undefined) out.os = String(os);
  if (network !== undefined) out.network = String(network);
  if (manifest !== undefined) {
    const m = String(manifest).toLowerCase();
    if (!(MANIFESTS as readonly string[]).includes(m)) throw invalidArg('ova', `manifest must be one of ${MANIFESTS.join(', ')} (got "${String(manifest)}")`, { field: 'manifest', actual: String(manifest) });
    out.manifest = m as OvaWriteOptions['manifest'] & string;
  }
  if (adapterType !== undefined) {
    if (!(ADAPTER_TYPES as readonly string[]).includes(String(adapterType)) || adapterType === 'legacyESX') {
      throw invalidArg('ova', `adapter_type must be one of lsilogic, buslogic, pvscsi, ide (got "${String(adapterType)}")`, { field: 'adapter_type', actual: String(adapterType) });
    }
    out.adapterType = adapterType as AdapterType;
  }
  if (hwVersion !== undefined) out.hwVersion = String(hwVersion);
  if (toolsVersion !== undefined) out.toolsVersion = String(toolsVersion);
  if (typeof mtime === 'number') out.mtime = mtime;
  if (spool !== undefined) out.spool = spool as Storage;
  if (signal !== undefined) out.signal = signal as AbortSignal;
  return out;
}

/** The VM name checked for use as a file stem: printable, no path separators, short enough for a ustar name. */
function checkName(name: string): string {
  // "-disk1.vmdk" is the longest suffix; a ustar name holds 100 bytes.
  if (name === '' || new TextEncoder().encode(name).length > 80 || hasControlOr(name, '/\\:*?"<>|') || name.startsWith('.')) {
    throw invalidArg('ova', `the name "${name}" must be 1 to 80 bytes without path separators, control characters or :*?"<>|, and not start with "."`, { field: 'name', actual: name });
  }
  return name;
}

const READ_CHUNK = 1 << 20;

/**
 * An OVA holding `source` as its one disk. The returned stream's length
 * is exact; the work of compressing the disk is done before this resolves.
 *
 * @example
 * ```ts
 * const ova = await streamOva(disk, { name: 'web', cpus: 2, memoryMiB: 2048, os: 'ubuntu64Guest' });
 * for await (const chunk of ova.chunks) out.write(chunk);
 * ```
 */
export async function streamOva(source: Disk, options: OvaWriteOptions = {}): Promise<ImageStream> {
  const name = checkName(options.name ?? 'vm');
  const ovfFile = `${name}.ovf`;
  const diskFile = `${name}-disk1.vmdk`;
  const mfFile = `${name}.mf`;
  const algorithm = options.manifest ?? 'sha256';
  const adapterType = options.adapterType ?? 'lsilogic';
  const os = options.os ?? 'otherGuest64';
  const mtime = options.mtime ?? Math.floor(Date.now() / 1000);
  const spool = options.spool ?? new MemoryStorage({ name: 'ova spool' });
  const limit = options.spool ? Number.MAX_SAFE_INTEGER : MAX_MEMORY_SPOOL;
  guestOs(os); // a bad option fails before the disk is compressed
  let diskSize = 0;
  let populatedSize = 0;
  const diskHash: Hasher | undefined = algorithm === 'none' ? undefined : newHasher(algorithm);
  try {
    const vmdk = await streamVmdk(source, {
      fileName: diskFile,
      adapterType,
      ...(options.hwVersion !== undefined ? { hwVersion: options.hwVersion } : {}),
      ...(options.toolsVersion !== undefined ? { toolsVersion: options.toolsVersion } : {}),
      onFinish: ({ grains, grainBytes }) => (populatedSize = Math.min(source.size, grains * grainBytes)),
    });
    for await (const chunk of vmdk.chunks) {
      options.signal?.throwIfAborted();
      if (diskSize + chunk.length > limit) {
        throw unsupported('ova', spool.name, `the compressed disk exceeds ${limit} bytes, the most an OVA is held in memory for; give a spool storage (the img-convert CLI uses a temporary file)`, { field: 'spool', actual: diskSize + chunk.length });
      }
      diskHash?.update(chunk);
      await spool.write(diskSize, chunk);
      diskSize += chunk.length;
    }
  } catch (e) {
    await spool.close().catch(() => undefined);
    throw e;
  }
  const ovf = new TextEncoder().encode(serializeOvf({ name, diskFile, diskFileSize: diskSize, capacity: source.size, populatedSize, cpus: options.cpus ?? 1, memoryMiB: options.memoryMiB ?? 1024, os, adapterType, network: options.network ?? 'VM Network' }));
  let manifest: Uint8Array | undefined;
  if (diskHash) {
    const tag = algorithm.toUpperCase();
    const ovfHash = newHasher(algorithm as ManifestAlgorithm);
    ovfHash.update(ovf);
    manifest = new TextEncoder().encode(`${tag}(${ovfFile})= ${ovfHash.hex()}\n${tag}(${diskFile})= ${diskHash.hex()}\n`);
  }
  const ovfHeader = serializeTarHeader({ name: ovfFile, size: ovf.length, mtime });
  const diskHeader = serializeTarHeader({ name: diskFile, size: diskSize, mtime });
  const mfHeader = manifest ? serializeTarHeader({ name: mfFile, size: manifest.length, mtime }) : undefined;
  const length = ovfHeader.length + ovf.length + tarPadding(ovf.length) + diskHeader.length + diskSize + tarPadding(diskSize) + (mfHeader && manifest ? mfHeader.length + manifest.length + tarPadding(manifest.length) : 0) + tarEnd().length;
  async function* chunks(): AsyncGenerator<Uint8Array> {
    try {
      yield ovfHeader;
      yield ovf;
      yield new Uint8Array(tarPadding(ovf.length));
      yield diskHeader;
      for (let at = 0; at < diskSize; at += READ_CHUNK) {
        options.signal?.throwIfAborted();
        yield await spool.read(at, Math.min(READ_CHUNK, diskSize - at));
      }
      yield new Uint8Array(tarPadding(diskSize));
      if (mfHeader && manifest) {
        yield mfHeader;
        yield manifest;
        yield new Uint8Array(tarPadding(manifest.length));
      }
      yield tarEnd();
    } finally {
      await spool.close().catch(() => undefined);
    }
  }
  return { length, chunks: chunks() };
}

/** Whether `name` holds a control character (U+0000..U+001F, U+007F) or one of `chars`. */
function hasControlOr(name: string, chars: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || chars.includes(name[i]!)) return true;
  }
  return false;
}
