/**
 * img-convert <src-format> <dst-format> <input> <output> [options], and
 * qemu-img's spelling: img convert [-f fmt] [-O fmt] ... <input> <output>.
 */
import { imageOpenOptions, takeQemuObjects, targetImageOptsPath } from './qemu-objects.js';
import { parseArgs } from './parse-args.js';
import { formatSize, ImageError, invalidUsage, parseSize, unsupported, type Disk } from '@img/block';
import { isNbdUri } from '@img/nbd';
import { statSync } from 'node:fs';
import { isPipePath, isStdinStream, isStdoutStream } from '../node/pipe-output.js';
import { qemuFormatName } from './info-human.js';
import type { SalvageEvent } from '../salvage.js';
import { isCacheMode } from '../cache-mode.js';
import { refuseWithoutSecret, storedBackingFormat } from './commands/shared.js';
import { checkCacheModes, describeErrno, ExitCode, rateLimitOption, runCommand, UsageError, version, type Io } from './common.js';
import { progressPrinter, qemuProgressPrinter } from './progress.js';
import { abortOnSignals, interruptedStatus } from './interrupt.js';

/** The `img-convert --help` text. */
export const CONVERT_HELP = `Usage: PROG [options] <src-format> <dst-format> <input> <output>
       PROG [-f fmt] [-O fmt] [options] <input> <output>     (qemu-img convert's spelling)

Copies any image format into any other, sparsely: only allocated data is
read and written, so the cost follows the data, not the virtual size.
In the second form the input's format is probed unless -f names it, and
the output format is raw unless -O names another, as with qemu-img.

Formats: FORMATS (vpc is another name for vhd)

Options (qemu-img 7.2's letters; 10.1's long names):
  -f, --source-format <fmt>   format of the input (probed when absent)
  -O, --target-format <fmt>   format of the output (default raw)
  -o, --target-format-options key=value[,...]
                      options for the new image ('-o help' lists the output format's)
  -c, --compress      compress the output (qcow2; deflate, or zstd with -o compression_type=zstd)
  -S, --sparse-size <size>    minimum run of zeros left sparse (default 4k; a multiple of 512 up to 16M;
                      0 writes everything)
  -b, --backing <backing>     make the output an overlay of <backing>, storing only what differs
                      (-B is qemu-img 7.2's spelling of -b and is accepted too)
  -F, --backing-format <fmt>  format of the backing file
  -l, --snapshot <snapshot>   convert this internal snapshot (id or name) of the input
  -n, --no-create     do not create the output: write into the existing image <output>
                      (of -O's format; at least as large as the input; zeros are written too)
  --target-is-zero    with -n: the existing output reads as zeros, so zeros are not written
  --salvage           write what cannot be read as zeros, say each unreadable sector on
                      stderr, and go on (exit 0)
  -U, --force-share   open the input without image locks (an image a running VM uses)
  -p, --progress      show progress on stderr
  -q, --quiet         print no summary line and no progress (errors are still printed)
  --json-progress     progress as one JSON line per update on stderr
  --force-format      accept an input whose bytes look like another format
  --untrusted         never open files named inside the input image
  --disk <n>          with an ova input: convert disk n of its OVF (from 0; default 0)
                      (an ova output takes -o name=,cpus=,memory=,os=,network=,manifest=;
                      '-O ova -o help' lists them)
  -r, --rate-limit <rate>  move at most <rate> bytes of data per second (k, M, G suffixes; 0: no
                      limit); holes and zeros left sparse cost nothing
  -t, --target-cache <cache>  the output's cache mode, as qemu-img's: unsafe (default) leaves it in the
                      page cache; writeback, writethrough: synced before img exits; none,
                      directsync: synced, and its data written around the page cache (O_DIRECT)
  -T, --source-cache <cache>, -W (--oob-writes), -m (--parallel) <n>, -C (--copy-range-offloading)
                      qemu-img's source cache mode, out-of-order writes, coroutines and copy
                      offloading: accepted (values checked) for qemu-img's command lines; img picks its own
  --keep-partial      keep the output after a failure
  --bitmaps           copy the persistent bitmaps of a qcow2 input to the qcow2 output
  --skip-broken-bitmaps  with --bitmaps: skip inconsistent (in-use) bitmaps with a warning
  --debug             print stack traces
  -h, --help          this help
  --version           print the version
  --object secret,id=ID,data=TEXT|file=PATH[,format=raw|base64]
                      a secret: the passphrase of an encrypted qcow2 input (LUKS or AES)
  --image-opts        the input is an option string: driver=qcow2,file.filename=PATH,encrypt.key-secret=ID
  --target-image-opts the output is an option string (with -n: an existing image, such as an encrypted one)

Input "-" reads the image from stdin (raw; qcow2 and vhd whose metadata comes
before the data; vmdk streamOptimized; an ova whose .ovf comes before its
streamOptimized disk; -f is needed); output "-" writes it to stdout (its
length known up front, except vmdk streamOptimized's). A pipe whose other end
is open is taken the same way: <(zcat disk.raw.gz), >(gzip > disk.qcow2.gz),
/dev/stdin, /dev/stdout, a FIFO; a FIFO with nobody at the other end is
refused. Ctrl-C ends the command at once (status 130).

Examples:
  PROG raw qcow2 disk.img disk.qcow2 -o cluster_size=64k
  PROG -O qcow2 -c disk.img disk.qcow2
  PROG -n -O raw disk.qcow2 /dev/vg0/disk
  PROG qcow2 vhd disk.qcow2 - | ssh host 'cat > disk.vhd'
  PROG qcow2 ova disk.qcow2 vm.ova -o name=web,cpus=2,memory=2048,os=ubuntu64Guest
  cat disk.img | PROG raw qcow2 - disk.qcow2
`;

/** img convert's options for parseArgs: 10.1's long names with 7.2's short letters. */
export function convertOptions() {
  // Long names are qemu-img 10.1's; the short letters are 7.2's and 10.1's alike (-B is 7.2's -b).
  return {
    'source-format': { type: 'string', short: 'f' },
    'target-format': { type: 'string', short: 'O' },
    'target-format-options': { type: 'string', short: 'o', multiple: true },
    compress: { type: 'boolean', short: 'c' },
    'sparse-size': { type: 'string', short: 'S' },
    B: { type: 'string' },
    backing: { type: 'string', short: 'b' },
    'backing-format': { type: 'string', short: 'F' },
    snapshot: { type: 'string', short: 'l' },
    'no-create': { type: 'boolean', short: 'n' },
    'target-is-zero': { type: 'boolean' },
    salvage: { type: 'boolean' },
    'force-share': { type: 'boolean', short: 'U' },
    progress: { type: 'boolean', short: 'p' },
    quiet: { type: 'boolean', short: 'q' },
    'json-progress': { type: 'boolean' },
    'force-format': { type: 'boolean' },
    untrusted: { type: 'boolean' },
    disk: { type: 'string' },
    'keep-partial': { type: 'boolean' },
    bitmaps: { type: 'boolean' },
    'skip-broken-bitmaps': { type: 'boolean' },
    // qemu-img's I/O knobs (cache modes, out-of-order writes, coroutines, copy offloading): checked as qemu-img
    // checks them, then left to img, which picks its own (the image written is the same); -t picks the output's
    // cache mode and -r limits the rate.
    'target-cache': { type: 'string', short: 't' },
    'source-cache': { type: 'string', short: 'T' },
    'oob-writes': { type: 'boolean', short: 'W' },
    parallel: { type: 'string', short: 'm' },
    'copy-range-offloading': { type: 'boolean', short: 'C' },
    'rate-limit': { type: 'string', short: 'r' },
    debug: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
  } as const;
}

/**
 * qemu-img convert's I/O options, which change how it writes but not what:
 * their values are checked with qemu-img's words, and img goes on with its
 * own choices.
 */
export function checkQemuIoOptions(values: { t?: string; T?: string; m?: string }): void {
  checkCacheModes(values.t, values.T);
  if (values.m !== undefined && !/^(?:[1-9]|1[0-6])$/.test(values.m)) throw new UsageError('Invalid number of coroutines. Allowed number of coroutines is between 1 and 16');
}

/** The most -S takes, as qemu-img convert: 32768 sectors. */
const MAX_SPARSE_SIZE = 16 * 2 ** 20;

/**
 * convert's -S value as qemu-img reads it: a size with an optional suffix,
 * a multiple of 512 up to 16 MiB, or 0 (write everything); refused in
 * qemu-img's words otherwise.
 */
export function sparseSize(text: string): number {
  let bytes: number;
  try {
    bytes = parseSize(text, '-S');
  } catch {
    throw new UsageError('Invalid buffer size for sparse output specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
  if (bytes % 512 !== 0 || bytes > MAX_SPARSE_SIZE) {
    throw new UsageError(`Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to ${MAX_SPARSE_SIZE}. Select 0 to disable sparse detection (fully allocates output).`);
  }
  return bytes;
}

/** How {@link convertMain} ends a successful run. */
export interface ConvertMainOptions {
  /** Print the summary line on stderr (img-convert). `img convert` prints nothing, as qemu-img convert. */
  summary?: boolean;
}

/** The body of img-convert (and `img convert`), given its arguments after the command name. */
export async function convertMain(prog: string, argv: string[], io: Io, options: ConvertMainOptions = {}): Promise<number> {
  const summary = options.summary ?? true;
  return runCommand(prog, argv, io, async () => {
    const parsed = parseArgs({ args: await takeQemuObjects(argv, { targetImageOpts: true }), options: convertOptions(), allowPositionals: true, strict: true });
    const { positionals } = parsed;
    const long = parsed.values;
    // The 7.2 short letters, whatever spelling the user chose.
    const values = {
      ...long,
      t: long['target-cache'],
      T: long['source-cache'],
      m: long.parallel,
      r: long['rate-limit'],
      f: long['source-format'],
      O: long['target-format'],
      o: long['target-format-options'],
      c: long.compress,
      S: long['sparse-size'],
      b: long.backing,
      F: long['backing-format'],
      l: long.snapshot,
      n: long['no-create'],
      p: long.progress,
    };
    checkQemuIoOptions(values);
    const rateLimit = values.r === undefined ? undefined : rateLimitOption(values.r);
    if (values.version && !values.help) {
      io.stdout(`${prog} ${version()}\n`);
      return 0;
    }
    const qemuForm = positionals.length === 2;
    // As qemu-img: `-O fmt -o help` lists the output format's options, with no files named.
    const optionHelp = positionals.length === 0 && !values.help && values.o !== undefined;
    // qemu-img convert concatenates several inputs into one output; img does not (README: differences from qemu-img).
    const severalInputs = 'several inputs, which qemu-img convert concatenates, are not supported';
    if (prog === 'img convert' && !values.help && !optionHelp && (positionals.length > 4 || (positionals.length > 2 && (values.f !== undefined || values.O !== undefined)))) {
      throw new UsageError(`${severalInputs}: ${prog} converts one input into one output`);
    }
    if (!values.help && !optionHelp && !qemuForm && positionals.length !== 4) {
      throw new UsageError(`expected <src-format> <dst-format> <input> <output>, or [-f fmt] [-O fmt] <input> <output>; got ${positionals.length} argument${positionals.length === 1 ? '' : 's'}${positionals.length > 2 ? ` (${severalInputs})` : ''}`);
    }
    if (!qemuForm && !optionHelp && (values.f !== undefined || values.O !== undefined)) {
      throw new UsageError('-f and -O go with the two-argument form: [-f fmt] [-O fmt] <input> <output>');
    }
    if (values.B !== undefined && values.b !== undefined) throw new UsageError('-B and -b (--backing) are the same option: give one');
    if (values['target-is-zero'] && !values.n) throw new UsageError('--target-is-zero requires use of -n flag');
    if (targetImageOptsPath() !== undefined && !values.n) throw new UsageError('--target-image-opts requires use of -n flag');
    if (values['target-is-zero'] && (values.B ?? values.b) !== undefined) throw new UsageError('--target-is-zero cannot be used with a backing file (-b)');
    const backing = values.B ?? values.b;
    // The formats and the file-level copy load here, not at start-up: --version and a usage error do without them.
    const [{ defaultRegistry }, { convertFile, openImageFile }, { createOptionsFromCli, createOptionsTitle, printOptionHelp, readOptionText }] = await Promise.all([import('../formats.js'), import('../node.js'), import('./options.js')]);
    const registry = defaultRegistry();
    if (values.disk !== undefined && !/^\d+$/.test(values.disk)) throw new UsageError(`--disk takes a disk number counted from 0, not "${values.disk}"`);
    // The ova driver of the CLI: --disk for reading, a temporary file for the disk of an OVA being written.
    const [{ ovaDriver }, { ovaTempSpool }] = await Promise.all([import('../ova-driver.js'), import('../node/ova-spool.js')]);
    registry.register(ovaDriver({ ...(values.disk !== undefined ? { disk: Number(values.disk) } : {}), spool: ovaTempSpool }));
    if (values.help) {
      io.stdout(CONVERT_HELP.replaceAll('PROG', prog).replace('FORMATS', registry.names().join(', ')));
      return 0;
    }
    if (optionHelp) {
      const driver = registry.require(values.O ?? 'raw');
      if (!readOptionText(values.o).help) throw new UsageError('expected <input> <output>');
      printOptionHelp(io, createOptionsTitle(driver), driver.createOptionTable ?? []);
      return 0;
    }
    const [input, output] = (qemuForm ? positionals : positionals.slice(2)) as [string, string];
    const forceShare = values['force-share'] ?? false;
    const untrusted = values.untrusted ?? false;
    // --image-opts: the input's driver (unless -f names one), its passphrase and its backing files'.
    const opened = imageOpenOptions(input, qemuForm ? values.f : positionals[0]!);
    const passphrase = { ...(opened.passphrase ? { passphrase: opened.passphrase } : {}), ...(opened.backing ? { backing: opened.backing } : {}), ...(opened.noBacking ? { noBacking: true } : {}) };
    let srcFormat = opened.format;
    // --target-image-opts (with -n): the output's driver (probed when neither it nor -O names one) and its passphrase.
    const target = targetImageOptsPath() !== undefined ? imageOpenOptions(output, qemuForm ? values.O : positionals[1]!) : undefined;
    let dstFormat = target ? target.format : qemuForm ? (values.O ?? 'raw') : positionals[1]!;
    if (dstFormat === undefined) {
      const probe = await openImageFile(output, { registry, noBacking: true });
      dstFormat = probe.format;
      await probe.close();
    }
    // An NBD export is connected to once, as qemu-img connects to it (a qemu-nbd started without --persistent serves
    // one connection, then exits): its format is probed by the conversion's own open. -n and --bitmaps look at the
    // input first, and connect twice.
    if (srcFormat === undefined && !(isNbdUri(input) && !values.n && !values.bitmaps)) {
      if (input === '-' || (!isNbdUri(input) && isStdinStream(input))) throw new UsageError('-f is needed to read an image from stdin');
      if (!isNbdUri(input) && isPipePath(input)) throw new UsageError(`-f is needed to read an image from a pipe (${input})`);
      // Probed as qemu-img does (raw when nothing else matches); an untrusted input is inspected first.
      const probe = await openImageFile(input, { registry, untrusted, forceShare, noBacking: true, ...passphrase });
      srcFormat = probe.format;
      await probe.close();
    }
    if (srcFormat !== undefined) {
      registry.require(srcFormat);
      (await import('./native-notice.js')).warnIfRawReadInFull(io, prog.split(' ')[0]!, srcFormat, input);
    }
    const dstDriver = registry.require(dstFormat);
    // As qemu-img convert, which opens the input with its chain: an encrypted image or backing file given no
    // passphrase is refused (status 1) before anything is created, whatever it holds.
    const onSourceOpen = (source: Disk) => refuseWithoutSecret(source, input, opened);
    const optionText = readOptionText(values.o);
    if (optionText.help) {
      printOptionHelp(io, createOptionsTitle(dstDriver), dstDriver.createOptionTable ?? []);
      return 0;
    }
    // As qemu-img: a format that cannot name a backing file is said so, before its options are looked at.
    if (backing !== undefined && !['qcow2', 'vhd', 'vmdk'].includes(dstDriver.name)) {
      throw unsupported(dstDriver.name, output, `Backing file not supported for file format '${qemuFormatName(dstDriver.name)}'`, { field: 'backing_file' });
    }
    const createOptions = createOptionsFromCli(io, prog, dstDriver, optionText.text);
    if (values.F !== undefined && backing === undefined) throw new UsageError('-F needs -B');
    // As qemu-img 7.2: an overlay names its backing file's format, or its reader would have to guess it from the bytes.
    if (backing !== undefined && values.F === undefined && ['qcow2', 'vmdk'].includes(dstDriver.name)) {
      throw invalidUsage(`${output}: use of a backing file (-B) requires its format (-F)`, { file: output, field: 'backing format' });
    }
    // As gzip: a disk image is not written onto a terminal.
    if (output === '-' && io.stdoutTTY) throw new UsageError('refusing to write a disk image to a terminal: redirect standard output to a file or a pipe');
    if (values.n) {
      if (output === '-' || input === '-') throw new UsageError('-n writes into an existing image file: not with "-"');
      if (backing !== undefined || values.c || (values.o?.length ?? 0) > 0) throw new UsageError('-n writes into an existing image: -B, -c and -o apply to a new one');
    }
    if (values['skip-broken-bitmaps'] && !values.bitmaps) throw new UsageError('Use of --skip-broken-bitmaps requires --bitmaps');
    let bitmapCopy: import('./convert-bitmaps.js').BitmapCopy | undefined;
    if (values.bitmaps) {
      if (output === '-' || pipeOutput(output) !== undefined) throw new UsageError(`--bitmaps needs an output file, not ${output === '-' ? '"-"' : 'a pipe'}`);
      const { planBitmapCopy } = await import('./convert-bitmaps.js');
      const compat = (createOptions as { compat?: unknown }).compat;
      bitmapCopy = await planBitmapCopy({ input, srcFormat: registry.require(srcFormat!).name, dstFormat: dstDriver.name, ...(compat !== undefined ? { dstCompat: String(compat) } : {}), skipBroken: values['skip-broken-bitmaps'] ?? false, forceShare, io, prog });
    }
    const minZeroRun = values.S === undefined ? 4096 : sparseSize(values.S);
    const json = values['json-progress'] ?? false;
    // -p asks for progress; on a terminal it appears anyway once a run takes more than a second. As qemu-img,
    // -q wins over -p (--json-progress, for programs, stays).
    const quiet = values.quiet ?? false;
    // img convert -p prints qemu-img's percentage lines on stdout; img-convert -p its bar on stderr.
    const printer = json ? progressPrinter(io, true) : quiet ? undefined : values.p ? (prog === 'img convert' ? qemuProgressPrinter(io) : progressPrinter(io, false)) : io.isTTY && output !== '-' ? progressPrinter(io, false, 1000) : undefined;
    // --salvage: each unreadable sector is written as zeros and said on stderr, as qemu-img says it.
    const salvage = values.salvage
      ? {
          salvage: true,
          onSalvage: (e: SalvageEvent) => {
            const why = ImageError.isInstance(e.error) ? `${e.error.code}: ${e.error.message}` : describeErrno(e.error);
            io.stderr(e.stage === 'read' ? `${prog}: warning: error while reading offset ${e.offset}: ${why}\n` : `${prog}: warning: error while reading block status at offset ${e.offset}: ${why}; reading the rest as data\n`);
          },
        }
      : {};
    const controller = new AbortController();
    const removeSignalHandlers = abortOnSignals(controller);
    let result;
    try {
      if (values.n) {
        const { convertIntoExisting } = await import('./convert-into.js');
        result = await convertIntoExisting({
          input,
          output,
          srcFormat: srcFormat!,
          onSourceOpen,
          ...passphrase,
          dstFormat,
          ...(target?.passphrase ? { dstPassphrase: target.passphrase } : {}),
          registry,
          minZeroRun,
          forceFormat: values['force-format'] ?? false,
          untrusted,
          forceShare,
          signal: controller.signal,
          ...(rateLimit ? { rateLimit } : {}),
          targetIsZero: values['target-is-zero'] ?? false,
          ...salvage,
          ...(values.t !== undefined && isCacheMode(values.t) ? { cache: values.t } : {}),
          ...(values.l !== undefined ? { snapshot: values.l } : {}),
          ...(printer ? { onProgress: printer } : {}),
        });
      } else {
        result = await convertFile({
          srcFormat,
          onSourceOpen,
          ...passphrase,
          dstFormat,
          input,
          output,
          registry,
          minZeroRun,
          createOptions,
          compress: values.c ?? false,
          forceFormat: values['force-format'] ?? false,
          untrusted,
          forceShare,
          keepPartial: values['keep-partial'] ?? false,
          signal: controller.signal,
          ...(rateLimit ? { rateLimit } : {}),
          ...salvage,
          ...(values.t !== undefined && isCacheMode(values.t) ? { cache: values.t } : {}),
          ...(backing !== undefined ? { backingFile: backing } : {}),
          ...(values.F !== undefined ? { backingFormat: storedBackingFormat(registry, values.F) } : {}),
          ...(values.l !== undefined ? { snapshot: values.l } : {}),
          ...(printer ? { onProgress: printer } : {}),
        });
      }
      if (bitmapCopy) {
        const { applyBitmapCopy } = await import('./convert-bitmaps.js');
        try {
          await applyBitmapCopy(output, bitmapCopy);
        } catch (e) {
          // A new output without its bitmaps is a failed conversion, as any other (-n leaves the image as it was).
          if (!values.n && !values['keep-partial']) await (await import('../node.js')).removeOutputFile(output);
          throw e;
        }
      }
    } catch (e) {
      // Nothing can be taken back from a pipe: say what the reader holds instead of "removed".
      if (ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') {
        // A pipe keeps what it was given: nothing to remove.
        const pipe = output === '-' ? 'stdout' : pipeOutput(output);
        if (pipe !== undefined) throw new ExitCode(interruptedStatus(), `interrupted; the image written to ${pipe === 'stdout' ? 'standard output' : output} is incomplete`);
      }
      // -n writes into an image that was there before: it stays, whatever the copy reached.
      if (values.n && ImageError.isInstance(e) && e.code === 'ERR_IMG_ABORTED') throw new ExitCode(interruptedStatus(), `interrupted; ${output} (an existing image, -n) was written only in part, and is kept`);
      throw e;
    } finally {
      removeSignalHandlers();
    }
    if (quiet || !summary) return 0;
    const secs = (result.durationMs / 1000).toFixed(2);
    io.stderr(
      `${prog}: converted ${srcFormat !== undefined ? `${srcFormat} ` : ''}${input} -> ${dstFormat} ${output}: ${formatSize(result.virtualSize)} virtual, ` +
        `${formatSize(result.bytesRead)} read, ${formatSize(result.bytesWritten)} written, ${formatSize(result.bytesSkipped)} left sparse, ${secs} s\n`,
    );
    return 0;
  });
}

/** An output named by a path that is a pipe (written as "-" is, see convertFile): 'stdout' for standard output as one, 'fifo' for another named pipe. */
function pipeOutput(output: string): 'stdout' | 'fifo' | undefined {
  if (isNbdUri(output)) return undefined;
  if (isStdoutStream(output)) return 'stdout';
  return statSync(output, { throwIfNoEntry: false })?.isFIFO() ? 'fifo' : undefined;
}
