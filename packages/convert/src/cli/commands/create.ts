/**
 * img create: a new image of a format, size and options.
 */
import { rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseArgs } from '../parse-args.js';
import { abortError, ImageError, invalidUsage, missingFileError, parseSize, sameFileError, unsupported, type Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { ExitCode, UsageError } from '../common.js';
import { abortOnSignals, interruptedStatus } from '../interrupt.js';
import { createOptionsFromCli, createOptionsTitle, printOptionHelp, readOptionText } from '../options.js';
import { formattingLine } from '../formatting-line.js';
import { qemuFormatName } from '../info-human.js';
import { defaultRegistry } from '../../formats.js';
import { openImageFile } from '../../node.js';
import { qemuLocation, qemuResolverWith } from '../../node/qemu-names.js';
import { assertNotRead, filesOf, identityOfPath } from '../../node/same-file.js';
import { checkDeviceFormat, isBlockDevicePath } from '../../node/device-output.js';
import { type Handler, commonNoOutput, quietOption, quietIo, requireBackingFormat, storedBackingFormat } from './shared.js';

/** The formats whose images can name a backing file (qcow2) or parent (VHD differencing, VMDK child). */
const FORMATS_WITH_BACKING: readonly string[] = ['qcow2', 'vhd', 'vmdk'];

/** The storage's methods that change it: each first checks the signal. */
const WRITES: ReadonlySet<PropertyKey> = new Set(['write', 'writev', 'truncate', 'allocate', 'punchHole', 'writeZeroes']);

/**
 * `storage` for a format's create, stopped at its next write once `signal` aborts (ERR_IMG_ABORTED): a preallocation
 * writes its zeros a piece at a time, so this ends it between pieces. Methods run on the storage itself.
 */
function stoppable(storage: Storage, signal: AbortSignal, path: string): Storage {
  return new Proxy(storage, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key, target);
      if (typeof value !== 'function') return value;
      const method = value as (...args: unknown[]) => unknown;
      if (!WRITES.has(key)) return method.bind(target);
      return (...args: unknown[]) => (signal.aborted ? Promise.reject(abortError(signal, `creation of ${path}`)) : method.apply(target, args));
    },
  });
}

/** img create. */
export const create: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'create', args: argv, options: { ...commonNoOutput, ...quietOption, o: { type: 'string', multiple: true }, b: { type: 'string' }, F: { type: 'string' }, u: { type: 'boolean' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      'Usage: img create [-q] -f fmt [-o key=value,...] [-b backing -F fmt [-u]] <file> [size]\n\n' +
        "Options (qemu-img 7.2's letters; 10.1's names beside them):\n" +
        '  -f, --format <fmt>              format of the new image (default raw)\n' +
        "  -o, --options key=value[,...]   the format's options ('-o help' lists them)\n" +
        '  -b, --backing <backing>         make the image an overlay of <backing> (size taken from it)\n' +
        '  -F, -B, --backing-format <fmt>  its format (qemu-img 10.1 spells it -B, 7.2 -F: both work)\n' +
        '  -u, --backing-unsafe            do not open the backing file (it need not exist yet; give the size)\n' +
        '  -q, --quiet                     print nothing on stdout\n\n' +
        'Example:\n  img create -f qcow2 -o cluster_size=64k disk.qcow2 10G\n',
    );
    return 0;
  }
  const registry = defaultRegistry();
  const format = values.f ?? 'raw';
  const driver = registry.require(format);
  const optionText = readOptionText(values.o);
  if (optionText.help) {
    printOptionHelp(io, createOptionsTitle(driver), driver.createOptionTable ?? []);
    return 0;
  }
  if (positionals.length < 1 || positionals.length > 2) throw new UsageError('expected <file> [size]');
  const path = positionals[0]!;
  const options = createOptionsFromCli(io, 'img create', driver, optionText.text);
  // As qemu-img: the size comes from -o size= or from the argument, not both (even when they agree).
  if (options.size !== undefined && positionals[1] !== undefined) throw invalidUsage(`${path}: The image size must be specified only once`, { file: path, field: 'size' });
  let size: number | undefined = positionals[1] !== undefined ? parseSize(positionals[1]) : undefined;
  if (options.size !== undefined) size = parseSize(String(options.size));
  // Files a format keeps beside the image (a vmdk monolithicFlat extent) are created through it. The backing
  // file is only read, without locks, as qemu-img create reads it: an overlay of the image a running VM
  // holds is how an external snapshot starts.
  options.resolver = qemuResolverWith({ forceShare: true });
  // The backing file and its format by -b/-F or by -o backing_file=,backing_fmt= (as qemu-img: either way,
  // the size may come from it); -b wins over -o.
  const backingName = values.b ?? (typeof options.backingFile === 'string' ? options.backingFile : undefined);
  const backingFormat = values.b !== undefined ? values.F : (values.F ?? (typeof options.backingFormat === 'string' ? options.backingFormat : undefined));
  delete options.backingFile;
  delete options.backingFormat;
  if (backingName !== undefined && !FORMATS_WITH_BACKING.includes(driver.name)) {
    throw unsupported(driver.name, path, `Backing file not supported for file format '${qemuFormatName(driver.name)}'`);
  }
  // As qemu-img: an empty name is no backing file (it would resolve to the new image's directory).
  if (backingName === '') throw invalidUsage(`${path}: Expected backing file name, got empty string`, { field: 'backingFile' });
  if (backingName !== undefined) {
    values.b = backingName;
    if (backingFormat !== undefined) values.F = storedBackingFormat(registry, backingFormat);
    options.backingFile = values.b;
    if (values.F !== undefined) options.backingFormat = values.F;
    options.formats = registry;
    const target = identityOfPath(path);
    if (values.u) {
      // -u (qemu-img's unsafe create): the backing file is not opened, so its format and the size must be given;
      // it must still not be the new image itself.
      requireBackingFormat(driver.name, path, values.b, values.F);
      const backingPath = qemuLocation(values.b, path);
      const named = identityOfPath(backingPath);
      if (named) assertNotRead(target, [named], 'new image');
      // Neither exists yet: the names are compared instead.
      else if (resolve(backingPath) === resolve(path)) throw sameFileError(path, values.b, 'new image');
      options.noBacking = true;
    } else {
      // The size comes from the backing file, opened relative to the new image; and a new image
      // must not replace a file of its own backing chain (it would be read after being truncated).
      const backingPath = qemuLocation(values.b, path);
      const backing = await openImageFile(backingPath, {
        ...(values.F !== undefined ? { format: values.F } : {}),
        registry,
        forceShare: true,
      }).catch((e: unknown) => {
        // Say which image names the missing file, as a backing file missing at open does.
        if (ImageError.isInstance(e) && e.code === 'ERR_IMG_NOT_FOUND' && e.data.file === backingPath) {
          throw missingFileError(driver.name, path, 'backing file', values.b!, backingPath, { cause: e });
        }
        throw e;
      });
      try {
        requireBackingFormat(driver.name, path, values.b, values.F, backing.format);
        assertNotRead(target, filesOf(backing), 'new image');
        size ??= backing.size;
      } finally {
        await backing.close();
      }
    }
  }
  if (size === undefined) throw new UsageError('expected a size (or a backing file to take it from)');
  // A block device is written from its start and keeps its size (qemu-img's host_device): raw and qcow2 only.
  if (isBlockDevicePath(path)) checkDeviceFormat(registry, driver.name, path);
  const existed = identityOfPath(path) !== undefined;
  const storage = await FileStorage.create(path);
  // Ctrl-C or SIGTERM stop a long create (a preallocation) before its next write: the new file is removed and the
  // command says so, as an interrupted convert does.
  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  try {
    const disk = await driver.create(stoppable(storage, controller.signal, path), { ...options, size });
    await disk.flush();
    await disk.close();
  } catch (e) {
    await storage.close().catch(() => undefined);
    // As qemu-img: a failed create leaves no file behind (one that was there is already emptied).
    if (!existed) await rm(path, { force: true }).catch(() => undefined);
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED' && controller.signal.aborted) {
      throw new ExitCode(interruptedStatus(), existed ? `interrupted; ${path} is left partly written: create it again` : `interrupted; the new image ${path} was removed`);
    }
    throw e;
  } finally {
    removeSignalHandlers();
  }
  io.stdout(formattingLine(path, driver.name, size, optionText.text, values.b !== undefined ? { file: values.b, ...(values.F !== undefined ? { format: values.F } : {}) } : undefined));
  return 0;
};
