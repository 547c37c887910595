/**
 * img info: an image's format, sizes, backing chain and snapshots, as qemu-img info prints them.
 */
import { imageOpenOptions, imageOptsFor } from '../qemu-objects.js';
import { stat } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { parseArgs } from '../parse-args.js';
import { isNbdUri, parseNbdUri, qemuNbdFilename } from '@img/nbd';
import { ImageError, PROBE_BYTES, unavailableStorage, type Disk, type ImageInfo, type Resolver, type Storage } from '@img/block';
import { FileStorage, fileResolverWith } from '@img/block/node';
import { probeVmdk } from '@img/vmdk';
import { humanInfo, qdictSorted, qemuFormatName, qemuJson, type InfoLayer } from '../info-human.js';
import { openImageFile } from '../../node.js';
import { relativeToNbd } from '../../node/nbd-backing.js';
import { isJsonName, qemuNameResolver } from '../../node/qemu-names.js';
import { UsageError } from '../common.js';
import { type Handler, common, shareOption, outputMode, onePath, combinePath, backingOf } from './shared.js';

/** qemu-img info's JSON for an image. */
export function infoJson(path: string, info: ImageInfo, actualSize: number | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {
    'virtual-size': info.virtualSize,
    filename: path,
    format: qemuFormatName(info.format),
    ...(actualSize !== undefined ? { 'actual-size': actualSize } : {}),
  };
  if (info.clusterSize !== undefined) out['cluster-size'] = info.clusterSize;
  if (info.backingFile !== undefined) out['backing-filename'] = info.backingFile;
  if (info.fullBackingFile !== undefined) out['full-backing-filename'] = info.fullBackingFile;
  if (info.backingFormat !== undefined) out['backing-filename-format'] = info.backingFormat;
  // qemu-img has no dirty flag to report for an image over NBD, raw or the export itself (its NBD driver has no image info), and leaves the key out.
  if (!((info.format === 'raw' || info.format === 'nbd') && isNbdUri(path))) out['dirty-flag'] = info.dirty ?? false;
  if (info.encrypted) out.encrypted = true;
  if (info.snapshots?.length) {
    out.snapshots = info.snapshots.map((s) => ({
      id: s.id,
      name: s.name,
      'vm-state-size': s.vmStateSize,
      'date-sec': s.dateSec,
      'date-nsec': s.dateNsec,
      'vm-clock-sec': Math.floor(s.vmClockNsec / 1e9),
      'vm-clock-nsec': s.vmClockNsec % 1e9,
      ...(s.icount !== undefined ? { icount: s.icount } : {}),
    }));
  }
  if (info.formatSpecific) out['format-specific'] = { type: qemuFormatName(info.format), data: info.formatSpecific };
  return out;
}

/**
 * Opens the files a chain names as qemu-img names them: a relative name joined onto the directory of the image that
 * names it, as written (qemu's path_combine: `../m.vmdk` names its parent `../bk.vmdk`), not made absolute. A chain
 * member's name is what `image:` prints, and a VMDK's parent and extents are named after the storage they were opened
 * by: made absolute, they printed a path qemu-img does not, and the extent that is the image itself counted twice in
 * its disk size. Absolute names, `file:` names and new files go to the file resolver as they are.
 */
function qemuNamesResolver(forceShare: boolean): Resolver {
  const files = fileResolverWith({ forceShare });
  const qemuNames = qemuNameResolver(files, { forceShare });
  const resolve: Resolver = async (request) => {
    const { name, from } = request;
    if (!request.create && (isJsonName(name) || isNbdUri(name))) return qemuNames(request);
    if (request.create || isAbsolute(name) || name.startsWith('file:') || isNbdUri(from.name)) return files(request);
    // A differencing VHD's parent is found through its locators and named as found (qemu-img reads no VHD chain).
    if (request.kind === 'parent' && !(await isVmdk(from))) return files(request);
    return FileStorage.open(combinePath(from.name, name), { readOnly: !request.writable, forceShare: !request.writable && forceShare });
  };
  return (request) => {
    // As qemu-img info, which opens an image without I/O: a qcow2 whose external data file is missing is described
    // (its "data file:" line names it); only a read of its data would need the file.
    if (request.kind !== 'data-file' || request.writable) return resolve(request);
    return resolve(request).catch((e: unknown) => {
      if (!ImageError.isInstance(e) || e.code !== 'ERR_IMG_NOT_FOUND') throw e;
      return unavailableStorage(request.name, () => e);
    });
  };
}

async function isVmdk(storage: Storage): Promise<boolean> {
  const size = await storage.size();
  return probeVmdk(await storage.read(0, Math.min(size, PROBE_BYTES)), size) > 0;
}

async function describe(disk: Disk, path: string): Promise<InfoLayer> {
  const data: ImageInfo = { ...((await disk.info?.()) ?? { format: disk.format, virtualSize: disk.size }) };
  // A VHD stores no parent format: the SDK names it by its own name, qemu-img (and its -F) by the driver's, vpc.
  if (data.format === 'vhd' && data.backingFormat === 'vhd') data.backingFormat = qemuFormatName('vhd');
  // The full name is the stored one read from the image's directory, as qemu-img names it (a relative image path gives a relative name):
  // a qcow2 backing file and a VMDK parent alike. VHD's is the parent locator that was found, which may name another file than the stored name.
  // A VHD stores the parent's bare name; where the parent is, only its locators say, and they are resolved
  // when the chain is opened (--backing-chain): without that, no path is made up from the name.
  // Over NBD a relative name has no directory to be joined to: qemu-img says it "cannot determine actual path".
  const unresolved = data.backingFile !== undefined && relativeToNbd(path, data.backingFile);
  if (unresolved) delete data.fullBackingFile;
  // A name with a protocol prefix (a ":" before any "/": json:{...}, nbd://..., file:...) is its own full name, as qemu's path_combine leaves it.
  else if (data.backingFile !== undefined && data.format !== 'vhd') data.fullBackingFile = /^[^/]*:/.test(data.backingFile) ? data.backingFile : combinePath(path, data.backingFile);
  let actual: number | undefined = 0;
  try {
    actual = isNbdUri(path) ? undefined : (await stat(path)).blocks * 512;
  } catch {
    actual = 0;
  }
  // As qemu-img: the disk size of an image kept in several files (vmdk extents) counts them all.
  const extents = data.formatSpecific?.extents;
  if (actual !== undefined && Array.isArray(extents)) {
    for (const e of extents as Array<{ filename?: unknown }>) {
      if (typeof e.filename !== 'string' || e.filename === '' || e.filename === path) continue;
      actual += await stat(e.filename).then(
        (st) => st.blocks * 512,
        () => 0,
      );
    }
  }
  // An export is named as qemu names it, whichever spelling opened it (nbd:unix:PATH is nbd+unix://?socket=PATH).
  const shown = isNbdUri(path) ? qemuNbdFilename(parseNbdUri(path), imageOptsFor(path)?.exportNamed ?? false) : path;
  return { data, actual, path: shown, ...(unresolved ? { backingUnresolved: true } : {}) };
}

/** img info. */
export const info: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'info', args: argv, options: { ...common, ...shareOption, 'backing-chain': { type: 'boolean' }, disk: { type: 'string' } }, allowPositionals: true });
  if (values.help) {
    io.stdout('Usage: img info [-f fmt] [-U] [--backing-chain] [--output=human|json] [--untrusted] [--disk n] <file>\n\n  --disk n  with an ova: describe disk n of its OVF (from 0; default 0)\n\nExample:\n  img info --backing-chain disk.qcow2\n  img info --disk 1 vm.ova\n');
    return 0;
  }
  let registry;
  if (values.disk !== undefined) {
    if (!/^\d+$/.test(values.disk)) throw new UsageError(`--disk takes a disk number counted from 0, not "${values.disk}"`);
    const [{ defaultRegistry }, { ovaDriver }] = await Promise.all([import('../../formats.js'), import('../../ova-driver.js')]);
    registry = defaultRegistry().register(ovaDriver({ disk: Number(values.disk) }));
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  // Without --backing-chain the backing file is not needed: do not open it.
  // As qemu-img info, which opens an image without I/O: an encrypted image's passphrase is not tried (a wrong one does no harm).
  const { format } = imageOpenOptions(path, values.f);
  const disk = await openImageFile(path, {
    ...(format !== undefined ? { format } : {}),
    untrusted: values.untrusted ?? false,
    forceFormat: values['force-format'] ?? false,
    forceShare: values['force-share'] ?? false,
    noBacking: !values['backing-chain'],
    resolver: qemuNamesResolver(values['force-share'] ?? false),
    ...(registry ? { registry } : {}),
  });
  try {
    const layers = [await describe(disk, path)];
    // An image opened by its protocol driver alone (driver=nbd, driver=file: the bytes as they are, which img reads as
    // raw) is of that driver's format in qemu-img's report ("file format: nbd"), not raw's.
    const protocol = imageOptsFor(path)?.protocol;
    if (protocol !== undefined) layers[0]!.data.format = protocol;
    if (values['backing-chain']) {
      // Each layer is named as the one above names it, as in qemu-img's list.
      // A json: name is shown as the file it names, as qemu-img shows the image it opened.
      for (let b = backingOf(disk); b; b = backingOf(b)) {
        const full = layers[layers.length - 1]!.data.fullBackingFile;
        layers.push(await describe(b, full !== undefined && !isJsonName(full) ? full : b.storage.name));
      }
    }
    if (mode === 'json') {
      const objects = layers.map((l) => infoJson(l.path, l.data, l.actual));
      io.stdout(qemuJson(qdictSorted(values['backing-chain'] ? objects : objects[0])) + '\n');
    } else {
      io.stdout(layers.map(humanInfo).join('\n'));
    }
    return 0;
  } finally {
    await disk.close();
  }
};
