/**
 * The file-level API the commands use: open an image file by format,
 * convert a file into a new one. Node only (uses the file system).
 */
import type { Writable } from 'node:stream';
import { lstat, open, rm, stat, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import {
  abortError,
  concatBytes,
  findSignatures,
  ImageError,
  invalidArg,
  invalidUsage,
  ioError,
  SIGNATURE_TAIL_BYTES,
  streamLengthError,
  unsafe,
  unsupported,
  untrustedReferenceError,
  type BackingOpenOptions,
  type Disk,
  type FormatRegistry,
  type Resolver,
  type Storage,
} from '@img/block';
import { FileStorage, fileResolver, fsError, resolveRelative } from '@img/block/node';
import { convertInto, type ConvertDiskOptions, type ConvertResult } from './convert.js';
import { defaultRegistry } from './formats.js';
import { checkDeclaredFormat, detectFormat } from './probe.js';
import { inspectImage, unsafeSummary } from './inspect.js';
import { salvagingDisk } from './salvage.js';
import { diskWindow } from './disk-window.js';
import { parseSnapshotSelector, selectSnapshotId } from './snapshot-select.js';
import { isNbdUri, NbdStorage } from '@img/nbd';
import { VMDK_SUBFORMATS, vmdkExtentFileNames, type VmdkSubformat } from '@img/vmdk';
import { copyStreamToDisk, fromStream, pipeImageStream, toStream, untilAborted, type NodeWritableLike } from './streams.js';
import { assertChainDistinct, assertNotRead, filesOf, identityOfFd, identityOfPath, recordingResolver, rememberFiles, type FileIdentity } from './node/same-file.js';
import { cacheModeNames, isCacheMode, type CacheMode } from './cache-mode.js';
import { checkNbdOutput, convertIntoNbdExport } from './node/nbd-output.js';
import { checkDeviceFormat, convertOntoDevice, isBlockDevicePath } from './node/device-output.js';
import { nbdAwareResolver } from './node/nbd-backing.js';
import { isJsonName, jsonNameOptions, qemuImageSpec, qemuResolverWith } from './node/qemu-names.js';
import { sourceOpened } from './node/source-hook.js';
import { isPipePath, isStdinStream, isStdoutStream, openPipeOutput, readPipe } from './node/pipe-output.js';

/**
 * How conversion outputs are opened: `unsafe`, as `qemu-img convert`
 * (cache=unsafe): flush barriers return at once and the page cache writes
 * the file back in its own time. A conversion that fails removes its output
 * (unless --keep-partial), so the per-allocation barriers a format writer
 * needs for crash safety of a live image buy nothing here, and cost one
 * fdatasync per chunk. No fdatasync at the end either (qemu-img has none):
 * the file is complete and consistent in the page cache when img-convert
 * exits; `sync` it if it must survive a power cut.
 */
const OUTPUT_CACHE = 'unsafe' as const;

/** A resolver for untrusted images: any name inside the image is refused. */
export const refusingResolver: Resolver = async (request) => {
  throw untrustedReferenceError(request.from.name, request.kind, request.name);
};

export interface OpenImageOptions {
  /** Declared format; when omitted the format is probed (and reported). */
  format?: string;
  readOnly?: boolean;
  registry?: FormatRegistry;
  /** Accept bytes that look like another format than the declared one. */
  forceFormat?: boolean;
  untrusted?: boolean;
  resolver?: Resolver;
  /** Do not open backing files or parents. */
  noBacking?: boolean;
  /** Open backing files / parents writable (commit). */
  backingWritable?: boolean;
  /** The passphrase of an encrypted image (qcow2 with LUKS or AES): without it the image opens, but its data does not read. */
  passphrase?: string | Uint8Array;
  /** The backing file's own passphrase, where it differs (qemu's backing.encrypt.key-secret); nested for deeper ones. */
  backing?: BackingOpenOptions;
  /** Take no image locks, so an image a running qemu holds can be read (qemu-img -U); read-only opens only. */
  forceShare?: boolean;
  /**
   * A writable open's data copied by the native copy loop goes around the
   * page cache (O_DIRECT; `FileStorageOptions.direct` of `@img/block/node`,
   * what `img convert -n -t none` asks for). Ignored for read-only opens and
   * NBD exports.
   */
  direct?: boolean;
  /**
   * A writable open's flushes (`FileStorageOptions.cache` of
   * `@img/block/node`): `writeback` (the default) makes each flush an
   * fdatasync; `unsafe` makes them return at once (qemu's cache=unsafe, what
   * `img convert -n` uses unless `-t` asks for more). Ignored for NBD exports.
   */
  cache?: 'writeback' | 'unsafe';
}

/**
 * The format an image file is opened as, from its bytes alone (head and
 * tail; nothing else is parsed, no other file is opened): the declared one,
 * refused when the bytes are plainly another format (unless `forceFormat`),
 * or the probed one. `untrusted` inspects first and refuses anything
 * unsafe, whatever `forceFormat` says.
 */
export async function imageFormatOf(storage: Storage, options: Pick<OpenImageOptions, 'format' | 'registry' | 'forceFormat' | 'untrusted'> = {}): Promise<string> {
  const registry = options.registry ?? defaultRegistry();
  const format = options.format;
  // A name no format has is that, not a file of the wrong format.
  if (format !== undefined) registry.require(format);
  if (options.untrusted) {
    const report = await inspectImage(storage, { registry, ...(format !== undefined ? { format } : {}) });
    if (!report.safe) {
      throw unsafe(report.format ?? format ?? 'raw', storage.name, `refusing an untrusted image: ${unsafeSummary(report)}`, { findings: report.findings });
    }
    return report.format ?? format ?? 'raw';
  }
  if (format === undefined) return detectFormat(registry, storage);
  if (!options.forceFormat) await checkDeclaredFormat(registry, storage, format);
  return format;
}

/**
 * Opens an image file. With no format given, probes it (raw only if nothing else matches).
 * `path` may also be an NBD URI or a `json:{...}` name (qemu's options:
 * the file or export it names, in its format; secrets by id are the
 * command line's, so the API takes `passphrase` instead).
 * A writable open refuses an image whose chain reaches its own file again
 * (ERR_IMG_SAME_FILE): writing it would change what it reads.
 */
export async function openImageFile(path: string, options: OpenImageOptions = {}): Promise<Disk> {
  if (isJsonName(path)) {
    const spec = qemuImageSpec(jsonNameOptions(path), path);
    if (spec.secrets.size > 0) throw invalidArg('json', `${path}: secrets are named by --object ids on the command line; give the passphrase open option instead`, { field: [...spec.secrets.keys()][0]! });
    const format = spec.protocol !== undefined ? 'raw' : spec.format;
    if (format !== undefined && options.format !== undefined && format !== options.format) throw invalidArg(format, `${path}: the format ${options.format} and the driver ${format} disagree`, { field: 'format' });
    return openImageFile(spec.location, { ...options, ...(format !== undefined ? { format } : {}), ...(spec.noBacking ? { noBacking: true } : {}) });
  }
  const registry = options.registry ?? defaultRegistry();
  const readOnly = options.readOnly ?? true;
  // An NBD URI (nbd://, nbd+unix://) is an export of a server, read as qemu-img reads one: probed like a file.
  const storage: Storage = isNbdUri(path)
    ? await NbdStorage.connect(path, { writable: !readOnly })
    : await FileStorage.open(path, { readOnly, forceShare: options.forceShare ?? false, ...(options.direct ? { direct: true } : {}), ...(options.cache ? { cache: options.cache } : {}) });
  const files: Storage[] = [storage];
  try {
    const format = await imageFormatOf(storage, { ...options, registry });
    const driver = registry.require(format);
    const disk = await driver.open(storage, {
      readOnly,
      formats: registry,
      untrusted: options.untrusted ?? false,
      resolver: recordingResolver(options.untrusted ? refusingResolver : options.resolver ? nbdAwareResolver(options.resolver) : qemuResolverWith({ forceShare: options.forceShare ?? false }), files),
      noBacking: options.noBacking ?? false,
      backingWritable: options.backingWritable ?? false,
      ...(options.passphrase !== undefined ? { passphrase: options.passphrase } : {}),
      ...(options.backing !== undefined ? { backing: options.backing } : {}),
    });
    rememberFiles(disk, files);
    if (!readOnly) {
      try {
        assertChainDistinct(disk);
      } catch (e) {
        await disk.close().catch(() => undefined);
        throw e;
      }
    }
    return disk;
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

export interface ConvertFileOptions extends ConvertDiskOptions {
  /**
   * The input's format; probed from its bytes when absent, as {@link openImageFile} probes (an NBD export is then
   * connected to once). A stream input (`'-'`) needs it.
   */
  srcFormat?: string;
  dstFormat: string;
  input: string;
  output: string;
  registry?: FormatRegistry;
  forceFormat?: boolean;
  untrusted?: boolean;
  /**
   * Keep the output after a failure or an abort (default: remove it). What
   * the kept file holds depends on the writer:
   * - a new qcow2, dynamic VHD or monolithicSparse VMDK file written by the
   *   format's one-pass writer (the default for these, see `bulk`): a
   *   valid **empty** image of the full virtual size, reading as zeros.
   *   These writers write their tables (L1/L2 and refcounts, BAT, grain
   *   tables) once at the end, so the data copied before the failure is
   *   cut off the file, not kept.
   * - raw, and every image the general writer makes (`bulk: false`;
   *   qcow2 with `compress`, a backing file, preallocation or a data file;
   *   a fixed or differencing VHD; monolithicFlat and twoGbMaxExtent*
   *   VMDKs): the image as far as the copy got; it opens, and what was
   *   copied before the failure reads back (the rest as zeros, or from the
   *   backing file).
   * - a stream written to a file (streamOptimized VMDK): the bytes
   *   written so far, with no footer: not an image a reader opens.
   */
  keepPartial?: boolean;
  /** Convert this internal snapshot (id or name) of the source instead of its current state (-l). */
  snapshot?: string;
  /** Open the input without image locks (qemu-img convert -U). */
  forceShare?: boolean;
  /** The input's passphrase, if it is an encrypted qcow2 image (LUKS or AES). */
  passphrase?: string | Uint8Array;
  /** The passphrases of the input's backing files, where they differ from its own (see OpenImageOptions.backing). */
  backing?: BackingOpenOptions;
  /** Read the input without its backing file: what it does not hold reads as zeros (qemu's `"backing": null`). */
  noBacking?: boolean;
  /** Where input "-" reads from (default process.stdin). */
  stdin?: AsyncIterable<Uint8Array>;
  /** Where output "-" writes to (default process.stdout). */
  stdout?: NodeWritableLike;
  /**
   * Convert only this byte range of the source (qemu-img dd's skip= and
   * count=): the output is `length` bytes and its byte 0 is the source's
   * byte `offset`. A function is given the source's size once it is open
   * and returns the range (what it throws fails the conversion).
   */
  range?: { offset: number; length: number } | ((size: number) => { offset: number; length: number });
  /**
   * Called with the source (and its chain) once it is open, before anything
   * is created or written: what it throws fails the conversion (the CLI
   * refuses an encrypted layer no passphrase reached here, as qemu-img does).
   */
  onSourceOpen?: (source: Disk) => void | Promise<void>;
  /**
   * The output's cache mode, in qemu-img convert's words (-t). `unsafe`
   * (the default, as qemu-img's): the output is left to the page cache,
   * complete but not yet on disk when the call returns. `writeback` and
   * `writethrough`: the same, then the output is synced before the call
   * returns. `none` and `directsync`: also synced, and the data copied is
   * written around the page cache (O_DIRECT, see FileStorageOptions.direct):
   * for outputs bigger than the memory one wants to spend on them, or a VM
   * whose host takes back freed memory, where a buffered copy pays a fault
   * per page and the direct one runs at the disk's speed.
   */
  cache?: CacheMode;
}

export type { CacheMode } from './cache-mode.js';

/** Writes `path`'s data and size to disk (fdatasync through a descriptor of its own). */
async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

/** The source a conversion copies: the disk, or the window of it that `range` names. */
function sourceView(disk: Disk, range: ConvertFileOptions['range']): Disk {
  if (!range) return disk;
  const { offset, length } = typeof range === 'function' ? range(disk.size) : range;
  return diskWindow(disk, offset, length);
}

interface SnapshotCapable extends Disk {
  openSnapshot(idOrName: string): Promise<Disk>;
}

/**
 * Opens snapshot `name` of `disk` (formats with internal snapshots): an id or a name, or as qemu-img's -l
 * `snapshot.id=ID,snapshot.name=NAME`, which must match every field given (see snapshot-select.ts).
 */
export async function openDiskSnapshot(disk: Disk, name: string): Promise<Disk> {
  const s = disk as Partial<SnapshotCapable>;
  if (typeof s.openSnapshot !== 'function') {
    throw unsupported(disk.format, disk.storage.name, 'this format has no internal snapshots');
  }
  const selector = parseSnapshotSelector(name);
  if (!selector) return s.openSnapshot.call(disk, name);
  // An id matches one snapshot only, whatever other snapshots are named.
  return s.openSnapshot.call(disk, selectSnapshotId((await disk.info?.())?.snapshots ?? [], selector, disk.storage.name));
}

/**
 * Removes the output of a failed conversion, if it is a regular file: a
 * device, a FIFO or whatever else the user named is never removed (a
 * failed conversion onto /dev/loop0 once removed the device's node).
 */
export async function removeOutputFile(path: string): Promise<void> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) return;
  await rm(path, { force: true }).catch(() => undefined);
}

/**
 * Refuses (ERR_IMG_IO, EEXIST, as the exclusive create of the extent would) a new VMDK whose extent files exist
 * already, before anything is created or truncated. qemu-img overwrites them; img does not overwrite a file the
 * user did not name (an extent name is made from the output's, and the file may be another image's data).
 */
async function refuseExistingExtents(output: string, size: number, createOptions: Record<string, unknown> | undefined): Promise<void> {
  const subformat = createOptions?.subformat;
  if (typeof subformat !== 'string' || !(VMDK_SUBFORMATS as readonly string[]).includes(subformat)) return;
  for (const name of vmdkExtentFileNames(output, size, subformat as VmdkSubformat)) {
    const path = resolveRelative({ name, from: { name: output } as Storage });
    if (await lstat(path).catch(() => undefined)) throw ioError(path, `exists already, and the new VMDK's extent file would be written over it: img does not overwrite a file it was not named (remove it, or choose another output name) (EEXIST)`, { errno: 'EEXIST' });
  }
}

/** The default file resolver, noting in `created` the path of every file it creates (the extent files of a new VMDK). */
function creationRecordingResolver(created: string[]): Resolver {
  return async (request) => {
    const storage = await fileResolver(request);
    if (request.create) created.push(resolveRelative(request));
    return storage;
  };
}

/**
 * Converts `input` (of `srcFormat`) into a new file `output` of `dstFormat`.
 * A failed conversion removes the output unless `keepPartial`. An `output`
 * that is an NBD URI names an export that exists already: as qemu-img does,
 * the source is written into it (raw only; an export smaller than the
 * source is refused, ERR_IMG_INVALID_ARG, before anything is written).
 */
export async function convertFile(options: ConvertFileOptions): Promise<ConvertResult> {
  const registry = options.registry ?? defaultRegistry();
  const dstDriver = registry.require(options.dstFormat);
  // Pipes: "-", /dev/stdin and /dev/stdout when they are pipes or sockets, another named pipe (a process substitution's
  // /dev/fd/63, a FIFO) are read or written front to back as streams (see node/pipe-output.ts).
  const stdinPath = options.input !== '-' && !isNbdUri(options.input) && options.stdin === undefined && isStdinStream(options.input);
  const inPipe = options.input !== '-' && !stdinPath && !isNbdUri(options.input) && isPipePath(options.input);
  const stdoutPath = options.output !== '-' && !isNbdUri(options.output) && options.stdout === undefined && isStdoutStream(options.output);
  const outPipe = options.output !== '-' && !stdoutPath && !isNbdUri(options.output) && isPipePath(options.output);
  if ((options.input === '-' || stdinPath || inPipe) && (options.output === '-' || stdoutPath || outPipe)) {
    throw invalidUsage('input and output cannot both be streams: convert into a file, or from one', { field: 'input' });
  }
  if (options.input === '-' || stdinPath) return convertFromStream(options, registry);
  if (inPipe) return convertFromStream(options, registry, options.input);
  if (options.output === '-' || stdoutPath) return convertToStream(options, registry);
  if (outPipe) {
    if (options.compress && !dstDriver.streamOnly?.(options.createOptions ?? {})) throw unsupported(dstDriver.name, options.output, '-c needs the output in a file, not a pipe');
    return convertToStream(options, registry, options.output);
  }
  // An NBD URI names an export that exists already: written into as it is (see node/nbd-output.ts), as qemu-img does.
  const intoExport = isNbdUri(options.output);
  // A block device exists with its size, as an export: written into, never created, truncated or removed.
  const intoDevice = !intoExport && isBlockDevicePath(options.output);
  // An image format onto a device or into an export (qcow2, as an LVM volume holds one) is laid out there: see node/device-output.ts.
  const existing = intoExport || intoDevice;
  if (existing) checkDeviceFormat(registry, options.dstFormat, options.output, intoExport ? 'nbd' : 'device');
  const imageOnDevice = existing && dstDriver.name !== 'raw';
  if (existing && !imageOnDevice) checkNbdOutput({ ...options, registry }, intoDevice ? 'device' : 'nbd');
  else if (!imageOnDevice && dstDriver.stream && dstDriver.streamOnly?.(options.createOptions ?? {})) return convertToStream(options, registry, options.output);
  const src = await openImageFile(options.input, {
    format: options.srcFormat,
    registry,
    forceFormat: options.forceFormat ?? false,
    untrusted: options.untrusted ?? false,
    forceShare: options.forceShare ?? false,
    ...(options.passphrase !== undefined ? { passphrase: options.passphrase } : {}),
    ...(options.backing !== undefined ? { backing: options.backing } : {}),
    ...(options.noBacking ? { noBacking: true } : {}),
  });
  await sourceOpened(src, options.onSourceOpen);
  let target: FileStorage | undefined;
  let snapshot: Disk | undefined;
  // Files the writer creates beside the output through the default resolver (a VMDK's extents): this
  // conversion made them (created exclusively), so a failure removes them with the output.
  const besides: string[] = [];
  try {
    if (intoExport) {
      if (options.snapshot !== undefined) snapshot = await openDiskSnapshot(src, options.snapshot);
      if (imageOnDevice) return await convertOntoDevice(sourceView(snapshot ?? src, options.range), { ...options, registry }, 'nbd');
      return await convertIntoNbdExport(sourceView(snapshot ?? src, options.range), { ...options, registry });
    }
    await guardOutput(options, registry, filesOf(src));
    if (options.snapshot !== undefined) snapshot = await openDiskSnapshot(src, options.snapshot);
    if (intoDevice && !imageOnDevice) return await convertIntoNbdExport(sourceView(snapshot ?? src, options.range), { ...options, registry }, 'device');
    // As qemu-img convert (cache=unsafe): the output is removed if the conversion fails, so the
    // format writer's ordering barriers need not reach the disk; see OUTPUT_CACHE.
    const cache = options.cache ?? 'unsafe';
    if (!isCacheMode(cache)) throw invalidUsage(`invalid cache mode ${JSON.stringify(cache)}: one of ${cacheModeNames()}`, { field: 'cache' });
    if (imageOnDevice) {
      // Written through the page cache (the format's own writer, not the copy loop); synced as a file is.
      const result = await convertOntoDevice(sourceView(snapshot ?? src, options.range), { ...options, registry });
      if (cache !== 'unsafe') await syncFile(options.output);
      return result;
    }
    // cache=none and directsync write the data around the page cache; writeback and unsafe let the copy loop pick per piece.
    const direct = cache === 'none' || cache === 'directsync' ? true : cache === 'writethrough' ? false : 'auto';
    // A VMDK's extent files are created exclusively; one that exists fails the create, and that must happen before
    // the output (perhaps the image that extent belongs to) is truncated, not after.
    if (dstDriver.name === 'vmdk' && options.resolver === undefined) await refuseExistingExtents(options.output, sourceView(snapshot ?? src, options.range).size, options.createOptions);
    target = await FileStorage.create(options.output, { cache: OUTPUT_CACHE, direct });
    // Closed by convertInto: a one-pass writer commits its metadata without opening the image again.
    const { result } = await convertInto(
      sourceView(snapshot ?? src, options.range),
      dstDriver,
      target,
      {
        ...options,
        resolver: options.resolver ?? creationRecordingResolver(besides),
        formats: options.formats ?? registry,
      },
      false,
    );
    if (cache !== 'unsafe') await syncFile(options.output);
    return result;
  } catch (e) {
    // convertInto closes the target once a writer holds it; a format that refused to create leaves it to us.
    await target?.close().catch(() => undefined);
    if (target && !options.keepPartial) {
      await removeOutputFile(options.output);
      for (const file of besides) await removeOutputFile(file);
    }
    throw e;
  } finally {
    await snapshot?.close().catch(() => undefined);
    await src.close().catch(() => undefined);
  }
}

/**
 * Refuses (ERR_IMG_SAME_FILE, before anything is created or truncated) an
 * output that is a file the conversion reads: the input or any member of
 * its chain, or the -B backing file and its chain.
 */
async function guardOutput(options: ConvertFileOptions, registry: FormatRegistry, read: FileIdentity[]): Promise<void> {
  const target = identityOfPath(options.output);
  if (!target) return;
  assertNotRead(target, read, 'output');
  if (options.backingFile === undefined) return;
  const backingPath = resolveRelative({ name: options.backingFile, from: { name: options.output } as Storage });
  if (!identityOfPath(backingPath)) return; // creating the overlay reports the missing file
  const backing = await openImageFile(backingPath, {
    registry,
    ...(options.backingFormat !== undefined ? { format: options.backingFormat } : {}),
    forceFormat: options.forceFormat ?? false,
  });
  try {
    assertNotRead(target, filesOf(backing), 'output');
  } finally {
    await backing.close();
  }
}

/**
 * A raw stream whose bytes are an image container (a qcow2 header, a VHD
 * footer, ...) is refused, as a raw file is: the head is looked at before
 * any byte is passed on, the tail (footers) when the stream ends, which
 * fails the conversion and removes its output.
 */
async function* refuseContainers(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const HEAD = 4096;
  const held: Uint8Array[] = [];
  let heldBytes = 0;
  let checkedHead = false;
  let tail: Uint8Array = new Uint8Array(0);
  let total = 0;
  const judge = (head: Uint8Array, size: number, end?: Uint8Array) => {
    const found = findSignatures(head, size, end)[0];
    if (found) {
      throw unsafe('raw', 'standard input', `the bytes are ${found.description} (${found.evidence}), not a raw disk; refusing to read it as raw (pass --force-format to override)`, {
        field: 'format',
        offset: found.offset,
        actual: found.format,
      });
    }
  };
  const keepTail = (chunk: Uint8Array) => {
    const joined = new Uint8Array(Math.min(SIGNATURE_TAIL_BYTES, tail.length + chunk.length));
    const fromChunk = Math.min(chunk.length, joined.length);
    joined.set(tail.subarray(tail.length - (joined.length - fromChunk)), 0);
    joined.set(chunk.subarray(chunk.length - fromChunk), joined.length - fromChunk);
    tail = joined;
  };
  for await (const chunk of input) {
    total += chunk.length;
    keepTail(chunk);
    if (checkedHead) {
      yield chunk;
      continue;
    }
    held.push(chunk);
    heldBytes += chunk.length;
    if (heldBytes < HEAD) continue;
    const head = concatBytes(held);
    judge(head.subarray(0, HEAD), Number.MAX_SAFE_INTEGER);
    checkedHead = true;
    held.length = 0;
    yield head;
  }
  const rest = held.length ? concatBytes(held) : undefined;
  judge(rest ?? new Uint8Array(0), total, tail);
  if (rest && rest.length) yield rest;
}

async function convertFromStream(options: ConvertFileOptions, registry: FormatRegistry, pipe?: string): Promise<ConvertResult> {
  const started = Date.now();
  const named = pipe ?? 'standard input';
  if (options.srcFormat === undefined) throw invalidUsage(`an image read from a stream (${named}) needs its format (srcFormat, -f)`, { field: 'srcFormat' });
  if (options.compress || options.backingFile !== undefined || options.snapshot !== undefined || options.range !== undefined) {
    throw unsupported(options.srcFormat ?? 'raw', named, '-c, -B, -l and a range need the input in a file, not a stream');
  }
  const srcDriver = registry.require(options.srcFormat);
  if (options.untrusted && srcDriver.name !== 'raw') {
    throw unsafe(srcDriver.name, undefined, `an untrusted ${srcDriver.name} image cannot be inspected as a stream; save it to a file first`);
  }
  if (options.stdin === undefined && pipe === undefined)
    assertNotRead(
      identityOfPath(options.output),
      [identityOfFd(0, 'standard input')].filter((x) => x !== undefined),
      'output',
    );
  // Read until the signal aborts: a writer that has stopped writing must not keep a Ctrl-C from ending the conversion.
  const what = `conversion of ${named} to ${options.output}`;
  const input = untilAborted(pipe !== undefined ? readPipe(pipe, options.signal) : ((options.stdin ?? process.stdin) as AsyncIterable<Uint8Array>), options.signal, what);
  const source = await fromStream(srcDriver.name === 'raw' && (options.untrusted || !options.forceFormat) ? refuseContainers(input) : input, srcDriver.name, { registry });
  const target = await FileStorage.create(options.output, { cache: OUTPUT_CACHE });
  try {
    const disk = await registry.require(options.dstFormat).create(target, { ...(options.createOptions ?? {}), size: Math.max(0, source.size) });
    try {
      const copy = await copyStreamToDisk(source, disk, {
        ...(options.minZeroRun !== undefined ? { minZeroRun: options.minZeroRun } : {}),
        ...(options.rateLimit !== undefined ? { rateLimit: options.rateLimit } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      });
      await disk.flush();
      return { ...copy, bytesSkipped: copy.bytesDone - copy.bytesWritten, virtualSize: disk.size, durationMs: Date.now() - started };
    } finally {
      await disk.close();
    }
  } catch (e) {
    await target.close().catch(() => undefined);
    if (!options.keepPartial) await removeOutputFile(options.output);
    throw e;
  }
}

/** A failed write of a stream writer's file as the error a FileStorage write gives: ERR_IMG_IO, naming the file and the errno. */
function streamWriteError(file: string, e: unknown): unknown {
  const err = e as NodeJS.ErrnoException | undefined;
  if (ImageError.isInstance(e) || typeof err?.code !== 'string') return e;
  // A pipe whose reader went away, said as "-" says it.
  if (err.code === 'EPIPE') return ioError(file, 'the pipe was closed before the image was complete (EPIPE)', { errno: 'EPIPE' }, e);
  return fsError(file, 'write', e);
}

/**
 * Opens (creates or truncates) the file a stream writer writes into. A failure is said as FileStorage.create says it
 * for the other outputs ("x.vmdk: create failed: permission denied (EACCES)"), not as Node's error.
 */
async function openStreamOutput(file: string): Promise<FileHandle> {
  try {
    return await open(file, 'w');
  } catch (e) {
    throw typeof (e as NodeJS.ErrnoException | undefined)?.code === 'string' ? fsError(file, 'create', e) : e;
  }
}

/** Writes the output through the format's stream writer: to stdout, or (`file`) to a new file written front to back. */
async function convertToStream(options: ConvertFileOptions, registry: FormatRegistry, file?: string): Promise<ConvertResult> {
  const started = Date.now();
  // A file written through a stream-only format (vmdk streamOptimized) has every grain compressed: -c asks for
  // nothing more, and qemu-img accepts it there. -B has no place in a stream.
  if ((options.compress && file === undefined) || options.backingFile !== undefined) {
    throw unsupported(options.dstFormat, file, file === undefined ? '-c and -B need the output in a file, not a stream' : '-B does not apply to an image written as a stream');
  }
  const src = await openImageFile(options.input, {
    format: options.srcFormat,
    registry,
    forceFormat: options.forceFormat ?? false,
    untrusted: options.untrusted ?? false,
    forceShare: options.forceShare ?? false,
    ...(options.passphrase !== undefined ? { passphrase: options.passphrase } : {}),
    ...(options.backing !== undefined ? { backing: options.backing } : {}),
    ...(options.noBacking ? { noBacking: true } : {}),
  });
  await sourceOpened(src, options.onSourceOpen);
  let snapshot: Disk | undefined;
  let created = false;
  let locked: FileStorage | undefined;
  try {
    if (file !== undefined) await guardOutput(options, registry, filesOf(src));
    else if (options.stdout === undefined) assertNotRead(identityOfFd(1, 'standard output'), filesOf(src), 'output');
    if (options.snapshot !== undefined) snapshot = await openDiskSnapshot(src, options.snapshot);
    // A stream cannot seek back to leave holes: all-zero blocks are detected up front unless -S 0 says otherwise.
    // A file's descriptor names the file itself as its extent (qemu-img and img create use the base name); a stream
    // keeps the writer's default name.
    const given = options.createOptions ?? {};
    // The caller's detect_zeroes (either spelling) wins over the one -S implies.
    const zeroes = given.detectZeroes === undefined && given.detect_zeroes === undefined ? { detectZeroes: (options.minZeroRun ?? 4096) > 0 ? 'on' : 'off' } : {};
    // A pipe is a stream too: what reads it names the file.
    const kind = file !== undefined ? await stat(file).catch(() => undefined) : undefined;
    const regular = file !== undefined && (kind === undefined || kind.isFile());
    const createOptions = { ...zeroes, ...given, ...(regular ? { fileName: basename(file) } : {}) };
    const view = sourceView(snapshot ?? src, options.range);
    const stream = await toStream(options.salvage ? salvagingDisk(view, options.onSalvage ? { onSalvage: options.onSalvage } : {}) : view, options.dstFormat, { registry, createOptions });
    let target: NodeWritableLike = options.stdout ?? process.stdout;
    let out: Writable | undefined;
    if (file !== undefined) {
      // qemu's image locks, as every other output file takes them: a file a running qemu holds is refused before it is
      // truncated, and the lock is kept while the stream is written. A FIFO or a character device has none to take.
      if (regular) {
        locked = await FileStorage.create(file, { cache: OUTPUT_CACHE });
        created = true;
      }
      const writer = kind?.isFIFO() ? await openPipeOutput(file) : (await openStreamOutput(file)).createWriteStream();
      out = writer;
      created = true;
      target = writer;
      // Kept for the whole run (the end's flush can fail too), so a full disk is this conversion's error, not the process's.
      writer.on('error', () => undefined);
    }
    let written: number;
    try {
      written = await pipeImageStream(stream, target, { ...(options.signal ? { signal: options.signal } : {}), ...(options.rateLimit !== undefined ? { rateLimit: options.rateLimit } : {}) });
      if (out) await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
    } catch (e) {
      out?.destroy(); // closes the file now, not when the stream is collected
      // pipeImageStream knows no names: its abort is said as this conversion's.
      if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED' && options.signal?.aborted) throw abortError(options.signal, `conversion of ${options.input} to ${file ?? 'standard output'}`);
      throw file !== undefined ? streamWriteError(file, e) : e;
    }
    // A compressed stream (vmdk streamOptimized) knows its length only at its end (-1).
    if (stream.length >= 0 && written !== stream.length) {
      throw streamLengthError(options.dstFormat, stream.length, written);
    }
    const size = sourceView(snapshot ?? src, options.range).size;
    return { bytesDone: size, bytesTotal: size, bytesRead: written, bytesWritten: written, bytesSkipped: 0, virtualSize: size, durationMs: Date.now() - started };
  } catch (e) {
    if (created && file !== undefined && !options.keepPartial) await removeOutputFile(file);
    throw e;
  } finally {
    await locked?.close().catch(() => undefined);
    await snapshot?.close().catch(() => undefined);
    await src.close().catch(() => undefined);
  }
}
