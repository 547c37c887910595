/**
 * img-convert <src-format> <dst-format> <input> <output> [options]
 */
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '@img/block';
import { progressPrinter, runCommand, UsageError, version, type Io } from './common.js';

export const CONVERT_HELP = `Usage: img-convert [options] <src-format> <dst-format> <input> <output>

Copies any image format into any other, sparsely: only allocated data is
read and written, so the cost follows the data, not the virtual size.

Formats: FORMATS

Options:
  -o key=value[,...]  options for the new image ('-o help' lists the output format's)
  -c                  compress the output (qcow2; deflate, or zstd with -o compression_type=zstd)
  -S <size>           minimum run of zeros left sparse (default 4k; 0 writes everything)
  -B <backing>        make the output an overlay of <backing>, storing only what differs
  -F <fmt>            format of the -B backing file
  -l <snapshot>       convert this internal snapshot (id or name) of the input
  -p                  show progress on stderr
  --json-progress     progress as one JSON line per update on stderr
  --force-format      accept an input whose bytes look like another format
  --untrusted         never open files named inside the input image
  --keep-partial      keep the output after a failure
  --debug             print stack traces
  -h, --help          this help
  --version           print the version

Input "-" reads the image from stdin (raw; qcow2 and vhd whose metadata comes
before the data); output "-" writes it to stdout (its length is known up front).

Examples:
  img-convert raw qcow2 disk.img disk.qcow2 -o cluster_size=64k
  img-convert qcow2 vhd disk.qcow2 - | ssh host 'cat > disk.vhd'
  cat disk.img | img-convert raw qcow2 - disk.qcow2
`;

export function convertOptions() {
  return {
    o: { type: 'string', multiple: true },
    c: { type: 'boolean' },
    S: { type: 'string' },
    B: { type: 'string' },
    F: { type: 'string' },
    l: { type: 'string' },
    p: { type: 'boolean' },
    'json-progress': { type: 'boolean' },
    'force-format': { type: 'boolean' },
    untrusted: { type: 'boolean' },
    'keep-partial': { type: 'boolean' },
    debug: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
  } as const;
}

/** The body of img-convert (and `img convert`), given its arguments after the command name. */
export async function convertMain(prog: string, argv: string[], io: Io): Promise<number> {
  return runCommand(prog, argv, io, async () => {
    const { values, positionals } = parseArgs({ args: argv, options: convertOptions(), allowPositionals: true, strict: true });
    if (values.version && !values.help) {
      io.stdout(`${prog} ${version()}\n`);
      return 0;
    }
    if (!values.help && positionals.length !== 4) {
      throw new UsageError(`expected <src-format> <dst-format> <input> <output>, got ${positionals.length} argument${positionals.length === 1 ? '' : 's'}`);
    }
    // The formats and the file-level copy load here, not at start-up: --version and a usage error do without them.
    const [{ defaultRegistry }, { convertFile }, { createOptionsFromCli, printOptionHelp, readOptionText }] = await Promise.all([import('../formats.js'), import('../node.js'), import('./options.js')]);
    const registry = defaultRegistry();
    if (values.help) {
      io.stdout(CONVERT_HELP.replace('FORMATS', registry.names().join(', ')));
      return 0;
    }
    const [srcFormat, dstFormat, input, output] = positionals as [string, string, string, string];
    registry.require(srcFormat);
    const dstDriver = registry.require(dstFormat);
    const optionText = readOptionText(values.o);
    if (optionText.help) {
      printOptionHelp(io, `Supported ${dstDriver.name} options:`, dstDriver.createOptionTable ?? []);
      return 0;
    }
    const createOptions = createOptionsFromCli(io, prog, dstDriver, optionText.text);
    if (values.F !== undefined && values.B === undefined) throw new UsageError('-F needs -B');
    const minZeroRun = values.S === undefined ? 4096 : parseSize(values.S, '-S');
    const json = values['json-progress'] ?? false;
    // -p asks for progress; on a terminal it appears anyway once a run takes more than a second.
    const printer = values.p || json ? progressPrinter(io, json) : io.isTTY && output !== '-' ? progressPrinter(io, false, 1000) : undefined;
    const controller = new AbortController();
    const onSignal = () => controller.abort(new Error('interrupted'));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let result;
    try {
      result = await convertFile({
      srcFormat,
      dstFormat,
      input,
      output,
      registry,
      minZeroRun,
      createOptions,
      compress: values.c ?? false,
      forceFormat: values['force-format'] ?? false,
      untrusted: values.untrusted ?? false,
      keepPartial: values['keep-partial'] ?? false,
      signal: controller.signal,
      ...(values.B !== undefined ? { backingFile: values.B } : {}),
      ...(values.F !== undefined ? { backingFormat: values.F } : {}),
      ...(values.l !== undefined ? { snapshot: values.l } : {}),
      ...(printer ? { onProgress: printer } : {}),
      });
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    const secs = (result.durationMs / 1000).toFixed(2);
    io.stderr(
      `${prog}: converted ${srcFormat} ${input} -> ${dstFormat} ${output}: ${formatSize(result.virtualSize)} virtual, ` +
        `${formatSize(result.bytesRead)} read, ${formatSize(result.bytesWritten)} written, ${formatSize(result.bytesSkipped)} left sparse, ${secs} s\n`,
    );
    return 0;
  });
}
