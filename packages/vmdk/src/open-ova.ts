/**
 * openOva: a disk of an OVA opened where it lies in the tar (a window of
 * the file), after reading the OVF descriptor and, in untrusted mode (or
 * when asked), checking the `.mf` manifest.
 */
import { ByteStreamReader, ImageError, invalidArg, corrupt, unsafe, unsupported, type Disk, type OpenOptions, type Storage } from '@img/block';
import { OvaDisk, type OvaContents } from './ova-disk.js';
import { parseManifest, verifyManifest } from './ova-manifest.js';
import { readTar, type TarMember } from './ova.js';
import { MAX_OVF_BYTES, hrefMemberNames, parseOvf, refuseEncoding } from './ovf.js';
import { openVmdk } from './open.js';
import { hasSparseMagic } from './sparse-header.js';
import { StorageWindow } from './storage-window.js';
import { findChunks, JoinedStorage } from './ova-chunks.js';
import { gunzipMember, OVF_GZIP, storageBytes } from './ova-gzip.js';
import { openStreamVmdk } from './stream-disk.js';
import { FLAG_COMPRESSED, FLAG_MARKERS, parseSparseHeader } from './sparse-header.js';

/** Options of openOva. */
export interface OvaOpenOptions extends OpenOptions {
  /** Which disk of the OVF's DiskSection to open, counted from 0 (default 0). */
  disk?: number;
  /** Check the manifest's digests (default: in untrusted mode only). */
  verifyManifest?: boolean;
  /** Opens a member that is not a VMDK (raw, qcow2) read-only; without it such a member is ERR_IMG_UNSUPPORTED. */
  openMember?: (storage: Storage, format: string | undefined) => Promise<Disk>;
}

/**
 * Reads the OVA's member table, OVF and manifest (metadata only). A
 * manifest that does not parse leaves `contents.manifest` unset and is
 * answered as `manifestError`: only a manifest check needs it.
 */
export async function readOva(storage: Storage): Promise<{ members: TarMember[]; contents: OvaContents; manifestError?: ImageError }> {
  const members = await readTar(storage);
  const ovfMember = members.find((m) => m.name.toLowerCase().endsWith('.ovf'));
  if (!ovfMember) throw corrupt('ova', storage.name, 'the tar archive holds no .ovf descriptor, so it is not an OVA', { field: 'ovf' });
  if (ovfMember.size > MAX_OVF_BYTES) throw unsupported('ova', storage.name, `the OVF "${ovfMember.name}" is ${ovfMember.size} bytes (at most ${MAX_OVF_BYTES})`, { field: 'ovf', actual: ovfMember.size });
  const ovf = parseOvf(new TextDecoder().decode(await storage.read(ovfMember.offset, ovfMember.size)), `${storage.name}:${ovfMember.name}`);
  const mf = members.find((m) => m.name.toLowerCase().endsWith('.mf'));
  let manifest: OvaContents['manifest'];
  let manifestError: ImageError | undefined;
  if (mf) {
    try {
      if (mf.size > MAX_OVF_BYTES) throw unsupported('ova', storage.name, `the manifest "${mf.name}" is ${mf.size} bytes (at most ${MAX_OVF_BYTES})`, { field: 'manifest', actual: mf.size });
      manifest = parseManifest(new TextDecoder().decode(await storage.read(mf.offset, mf.size)), `${storage.name}:${mf.name}`);
    } catch (e) {
      if (!ImageError.isInstance(e)) throw e;
      manifestError = e;
    }
  }
  return { members, contents: { ovfName: ovfMember.name, ovf, members: members.map((m) => ({ name: m.name, size: m.size })), ...(manifest ? { manifest } : {}) }, ...(manifestError ? { manifestError } : {}) };
}

/**
 * Opens disk `options.disk` (default 0) of the OVA in `storage`, read-only.
 * A streamOptimized (or any sparse) VMDK member opens in place; other
 * formats need `options.openMember`. A member stored gzip-compressed
 * (`ovf:compression="gzip"`) must hold a streamOptimized VMDK, read front
 * to back as it inflates (a StreamVmdkDisk: stream-disk.ts, ova-gzip.ts).
 * Closing the disk closes `storage`.
 *
 * @example
 * ```ts
 * await using disk = await openOva(await FileStorage.open('vm.ova'), { disk: 0, untrusted: true });
 * const boot = await disk.read(0, 512);
 * ```
 */
export async function openOva(storage: Storage, options: OvaOpenOptions = {}): Promise<OvaDisk> {
  if (options.readOnly === false) throw unsupported('ova', storage.name, 'an OVA can only be opened read-only', { field: 'readOnly' });
  const { members, contents, manifestError } = await readOva(storage);
  const { ovf } = contents;
  const index = options.disk ?? 0;
  if (!Number.isInteger(index) || index < 0 || index >= ovf.disks.length) {
    throw invalidArg('ova', `${storage.name}: disk ${index} does not exist (the OVF lists ${ovf.disks.length} disk${ovf.disks.length === 1 ? '' : 's'}, counted from 0)`, { field: 'disk', actual: index });
  }
  const d = ovf.disks[index]!;
  const ref = ovf.files.find((f) => f.id === d.fileRef);
  if (!ref) throw corrupt('ova', storage.name, `the OVF disk "${d.diskId}" refers to file "${d.fileRef ?? ''}", which References does not list`, { field: 'fileRef', actual: d.fileRef ?? '' });
  refuseEncoding(ref, storage.name);
  const names = hrefMemberNames(ref.href);
  // A file split into chunks (ovf:chunkSize) is its chunks joined in order; otherwise one member.
  const parts = ref.chunkSize !== undefined ? findChunks(members, names, ref.chunkSize, ref.size, storage.name) : [names.map((n) => members.find((m) => m.name === n)).find((m) => m !== undefined)].filter((m) => m !== undefined);
  const member = parts?.[0];
  if (!parts || !member) throw corrupt('ova', storage.name, `the OVF's file "${ref.href}" is not in the OVA`, { field: 'href', actual: ref.href });
  if (ref.chunkSize === undefined && ref.size !== undefined && ref.size !== member.size) throw corrupt('ova', storage.name, `the OVF says "${ref.href}" holds ${ref.size} bytes, the tar member holds ${member.size}`, { field: 'size', expected: ref.size, actual: member.size });
  if (options.verifyManifest ?? options.untrusted ?? false) {
    if (manifestError) throw manifestError;
    if (!contents.manifest && options.verifyManifest) throw corrupt('ova', storage.name, 'a manifest check was asked for, but the OVA holds no .mf file', { field: 'manifest' });
    if (contents.manifest) await verifyManifest(storage, contents.manifest, members);
    // A manifest that leaves the disk (or one of its chunks) out checks nothing that matters: untrusted mode refuses it
    // (as the pipe reader does).
    const unlisted = contents.manifest && options.untrusted ? parts.find((p) => !contents.manifest!.some((e) => e.name === p.name)) : undefined;
    if (unlisted) throw unsafe('ova', storage.name, `the manifest does not list the disk "${unlisted.name}", so its bytes cannot be checked`, { field: 'manifest', actual: unlisted.name });
  }
  const window =
    ref.chunkSize !== undefined
      ? new JoinedStorage(
          storage,
          parts.map((p) => ({ offset: p.offset, length: p.size })),
          `${storage.name}:${ref.href}`,
          true,
        )
      : new StorageWindow(storage, member.offset, member.size, `${storage.name}:${member.name}`, true);
  let inner: Disk;
  if (ref.compression === OVF_GZIP) {
    inner = await openGzipMember(window, storage.name, ref.chunkSize !== undefined ? ref.href : member.name, d.diskId);
    return new OvaDisk(inner, contents, index);
  }
  const head = await window.read(0, 512);
  if (hasSparseMagic(head)) {
    // No resolver: the sparse extent embeds its descriptor; a parent or extent file is refused.
    inner = await openVmdk(window, { untrusted: true });
  } else if (options.openMember) {
    inner = await options.openMember(window, d.format);
  } else {
    throw unsupported('ova', storage.name, `disk "${d.diskId}" ("${member.name}") is not a sparse VMDK; opening other formats needs openMember (use @img/convert)`, { field: 'format', actual: d.format ?? '' });
  }
  // The disk is what the member holds, as VirtualBox and VMware take it: an OVF capacity rounded to whole units
  // (`byte * 2^30`), or larger than the disk (ovftool would grow it on deploy), is no reason to refuse the data.
  return new OvaDisk(inner, contents, index);
}

/**
 * Opens the gzip-compressed disk member in `compressed` (ova-gzip.ts): a
 * streamOptimized VMDK read front to back (stream-disk.ts); any other
 * content is ERR_IMG_UNSUPPORTED, since it would need random access into
 * the compressed member.
 */
async function openGzipMember(compressed: Storage, file: string, member: string, diskId: string): Promise<Disk> {
  const bytes = () => gunzipMember(storageBytes(compressed), { file, member });
  const r = new ByteStreamReader(bytes(), 'ova', file);
  let head: Uint8Array;
  try {
    head = await r.upTo(512);
  } finally {
    await r.cancel();
  }
  const stream = head.length === 512 && hasSparseMagic(head) && (parseSparseHeader(head, 0, compressed.name).flags & (FLAG_COMPRESSED | FLAG_MARKERS)) === (FLAG_COMPRESSED | FLAG_MARKERS);
  if (!stream) {
    throw unsupported(
      'ova',
      file,
      `disk "${diskId}" ("${member}") is gzip-compressed (ovf:compression="gzip") and is not a streamOptimized VMDK; only that can be read from a compressed member, front to back (${hasSparseMagic(head) ? 'a sparse VMDK of another kind' : 'another format'} would need random access into it): decompress the member first`,
      { field: 'compression', actual: member },
    );
  }
  return openStreamVmdk({ name: compressed.name, storage: compressed, bytes, orderAdvice: 'decompress the member first, or read the OVA from a pipe' });
}
