/**
 * img compact: shrink an image file in place to what it holds, by moving
 * the data nearest the end into free space lower down and cutting the file
 * (VHD now; qcow2 later). Run `img sparsify` first to release zero data.
 */
import { parseArgs } from 'node:util';
import { ImageError, unsupported, type Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { isNbdUri, NbdStorage } from '@img/nbd';
import { compactVhd } from '@img/vhd';
import { ExitCode, progressPrinter, type Io } from '../common.js';
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
    if (format === 'qcow2') throw unsupported(format, path, `img ${verb} is not yet available for qcow2 images (VHD only for now)`);
    if (format !== 'vhd') throw unsupported(format, path, `img ${verb} works on VHD images; ${format} images have no blocks to ${verb === 'compact' ? 'move' : 'release'}`);
    return { storage, format };
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

/** SIGINT/SIGTERM abort the run between blocks; the image stays consistent and a second run finishes. */
export async function interruptible<T>(verb: string, body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = () => controller.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await body(controller.signal);
  } catch (e) {
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') throw new ExitCode(130, `interrupted; the image is consistent: run img ${verb} again to finish`);
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The progress bar of -p, fed (bytes done, bytes in all). */
export function bytesProgress(io: Io): (done: number, total: number) => void {
  const print = progressPrinter(io, false);
  return (bytesDone, bytesTotal) => print({ bytesDone, bytesTotal });
}

/** img compact. */
export const compact: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ args: argv, options: { ...common, ...quietOption, p: { type: 'boolean' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      'Usage: img compact [-q] [-f fmt] [-p] [--output=human|json] <file>\n\n' +
        'Shrinks the file in place to the space the image holds: blocks nearest the end move into free space lower down,\n' +
        'the footer follows, the file is cut. Crash-safe at every step; run it again to finish an interrupted run.\n' +
        'VHD (dynamic, differencing); qcow2 not yet. Run img sparsify first to release blocks that hold only zeros.\n\n' +
        'Example:\n  img sparsify disk.vhd && img compact -p disk.vhd\n',
    );
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  const { storage } = await openInPlace(path, values, 'compact');
  let result;
  try {
    result = await interruptible('compact', (signal) => compactVhd(storage, { signal, ...(values.p ? { onProgress: bytesProgress(io) } : {}) }));
  } finally {
    await storage.close();
  }
  if (mode === 'json') {
    io.stdout(JSON.stringify({ filename: path, format: 'vpc', ...result }, null, 4) + '\n');
  } else if (result.nothingToDo) {
    io.stdout(`Nothing to compact: ${result.nothingToDo}. File size: ${result.sizeAfter} bytes.\n`);
  } else {
    io.stdout(`Moved ${result.blocksMoved} blocks (${result.bytesMoved} bytes); file size ${result.sizeBefore} -> ${result.sizeAfter} bytes (${result.sizeBefore - result.sizeAfter} released).\n`);
  }
  return 0;
};
