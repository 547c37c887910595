/**
 * img compact: shrink an image file in place to what it holds, by moving
 * the data nearest the end into free space lower down and cutting the file
 * (VHD and qcow2). Run `img sparsify` first to release zero data.
 */
import { qemuJson, qemuStyleKeys } from '../info-human.js';
import { parseArgs } from '../parse-args.js';
import { ImageError, unsupported, type Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { isNbdUri, NbdStorage } from '@img/nbd';
import { compactQcow2, type Qcow2CompactResult } from '@img/qcow2';
import { compactVhd, type VhdCompactResult } from '@img/vhd';
import { ExitCode } from '../common.js';
import { bytesProgress } from '../progress.js';
import { abortOnSignals, interruptedStatus } from '../interrupt.js';
import { defaultRegistry } from '../../formats.js';
import { imageFormatOf } from '../../node.js';
import { type Handler, common, onePath, outputMode, quietOption, quietIo } from './shared.js';

/** The image of an in-place maintenance command (compact, sparsify), opened writable with qemu's write lock, and its format. */
export async function openInPlace(path: string, values: { f?: string | undefined; untrusted?: boolean | undefined; 'force-format'?: boolean | undefined }, verb: string): Promise<{ storage: Storage; format: string }> {
  const storage = isNbdUri(path) ? await NbdStorage.connect(path, { writable: true }) : await FileStorage.open(path, { readOnly: false });
  try {
    const registry = defaultRegistry();
    // The driver's own name: "vpc" is the VHD driver's alias.
    const format = registry.require(
      await imageFormatOf(storage, {
        registry,
        untrusted: values.untrusted ?? false,
        forceFormat: values['force-format'] ?? false,
        ...(values.f !== undefined ? { format: values.f } : {}),
      }),
    ).name;
    if (format !== 'vhd' && format !== 'qcow2') throw unsupported(format, path, `img ${verb} works on VHD and qcow2 images; ${format} images have no blocks to ${verb === 'compact' ? 'move' : 'release'}`);
    return { storage, format };
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

/** SIGINT/SIGTERM abort the run between blocks; the image stays consistent and a second run finishes. */
export async function interruptible<T>(verb: string, body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  try {
    return await body(controller.signal);
  } catch (e) {
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') throw new ExitCode(interruptedStatus(), `interrupted; the image is consistent: run img ${verb} again to finish`);
    throw e;
  } finally {
    removeSignalHandlers();
  }
}

/** img compact. */
export const compact: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'compact', args: argv, options: { ...common, ...quietOption, p: { type: 'boolean' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      'Usage: img compact [-q] [-f fmt] [-p] [--output=human|json] <file>\n\n' +
        'Shrinks the file in place to the space the image holds: what lies nearest the end (VHD blocks; qcow2 data\n' +
        'clusters and every table) moves into free space lower down, the file is cut. Crash-safe at every step; run it\n' +
        'again to finish an interrupted run. VHD (dynamic, differencing) and qcow2 (v2, v3, snapshots, bitmaps,\n' +
        'compressed clusters; with an external data file only metadata moves). Run img sparsify first to release data\n' +
        'that holds only zeros.\n\n' +
        'Example:\n  img sparsify disk.qcow2 && img compact -p disk.qcow2\n',
    );
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  const { storage, format } = await openInPlace(path, values, 'compact');
  let result: Qcow2CompactResult | VhdCompactResult;
  try {
    const options = { ...(values.p && !values.quiet ? { onProgress: bytesProgress(io) } : {}) };
    result = await interruptible<Qcow2CompactResult | VhdCompactResult>('compact', (signal) => (format === 'qcow2' ? compactQcow2(storage, { signal, ...options }) : compactVhd(storage, { signal, ...options })));
  } finally {
    await storage.close();
  }
  if (mode === 'json') {
    io.stdout(qemuJson(qemuStyleKeys({ filename: path, format: format === 'vhd' ? 'vpc' : format, ...result })) + '\n');
  } else if (result.nothingToDo) {
    io.stdout(`Nothing to compact: ${result.nothingToDo}. File size: ${result.sizeAfter} bytes.\n`);
  } else {
    const moved = 'blocksMoved' in result ? `${result.blocksMoved} blocks` : `${result.dataClustersMoved} data and ${result.metadataClustersMoved} metadata clusters`;
    io.stdout(`Moved ${moved} (${result.bytesMoved} bytes); file size ${result.sizeBefore} -> ${result.sizeAfter} bytes (${result.sizeBefore - result.sizeAfter} released).\n`);
  }
  return 0;
};
