/**
 * img dd: copy a byte range of an image into a new image, with qemu-img dd's
 * operands (if= of= bs= count= skip=) and options (-f -O -U). Unlike qemu-img
 * dd, what the input does not hold is left sparse in the output instead of
 * written as zeros: the output reads the same and costs only its data.
 */
import { imageOpenOptions } from '../qemu-objects.js';
import { parseArgs } from '../parse-args.js';
import { formatSize, parseSize, type Disk } from '@img/block';
import { UsageError } from '../common.js';
import { progressPrinter } from '../progress.js';
import { abortOnSignals } from '../interrupt.js';
import { defaultRegistry } from '../../formats.js';
import { convertFile } from '../../node.js';
import { warnIfRawReadInFull } from '../native-notice.js';
import { type Handler, commonNoOutput, refuseWithoutSecret, shareOption } from './shared.js';

/** The largest bs qemu-img dd takes (INT_MAX). */
const MAX_BLOCK = 2 ** 31 - 1;

const DD_HELP = `Usage: img dd [-f fmt] [-O output_fmt] [-U] [-p] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output

Copies the input image from block skip up to block count (to the end by default) into a new
image of the output format (raw by default). As in qemu-img dd, count counts from the start of the
input, skipped blocks included. Sizes take k, M, G, T, P, E suffixes; bs is 512 by default.
Unlike qemu-img dd, ranges the input does not hold stay sparse in the output.

Example:
  img dd -O qcow2 bs=1M skip=1 count=100 if=disk.img of=part.qcow2
`;

interface DdOperands {
  input?: string;
  output?: string;
  bs: number;
  count?: number;
  skip: number;
}

function number(text: string, what: string): number {
  try {
    return parseSize(text, what);
  } catch {
    throw new UsageError(`invalid number for ${what}: '${text}'`);
  }
}

/** Parses dd's key=value operands as qemu-img dd does: each once at most, unknown keys refused. */
export function parseDdOperands(operands: readonly string[]): DdOperands {
  const out: DdOperands = { bs: 512, skip: 0 };
  const seen = new Set<string>();
  for (const operand of operands) {
    const eq = operand.indexOf('=');
    const key = eq < 0 ? operand : operand.slice(0, eq);
    const value = eq < 0 ? '' : operand.slice(eq + 1);
    if (!['if', 'of', 'bs', 'count', 'skip'].includes(key) || eq < 0) throw new UsageError(`unrecognized operand ${operand}`);
    if (seen.has(key)) throw new UsageError(`${key}= given twice`);
    seen.add(key);
    if (key === 'if') out.input = value;
    else if (key === 'of') out.output = value;
    else if (key === 'bs') {
      let bs: number;
      try {
        bs = parseSize(value, 'bs');
      } catch {
        throw new UsageError('Invalid bs specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
      }
      if (bs < 1 || bs > MAX_BLOCK) throw new UsageError(`Invalid bs specified. Must be between 1 and ${MAX_BLOCK}.`);
      out.bs = bs;
    } else if (key === 'count') out.count = number(value, 'count');
    else out.skip = number(value, 'skip');
  }
  if (!out.input || !out.output) throw new UsageError('Must specify both input and output files');
  return out;
}

/** img dd. */
export const dd: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'dd', args: argv, options: { ...commonNoOutput, ...shareOption, O: { type: 'string' }, p: { type: 'boolean' } }, allowPositionals: true });
  if (values.help) {
    io.stdout(DD_HELP);
    return 0;
  }
  const ops = parseDdOperands(positionals);
  const input = ops.input!;
  const output = ops.output!;
  if (input === '-' || output === '-') throw new UsageError('img dd reads and writes image files: not "-" (img convert handles streams)');
  const registry = defaultRegistry();
  const dstFormat = registry.require(values.O ?? 'raw').name;
  const untrusted = values.untrusted ?? false;
  const forceShare = values['force-share'] ?? false;
  const forceFormat = values['force-format'] ?? false;
  const opened = imageOpenOptions(input, values.f);
  const offset = ops.skip * ops.bs;
  // As qemu-img dd: count= bounds the input read from its start, skipped blocks included (GNU dd counts after
  // the skip), so the output is min(count * bs, size) - skip * bs bytes, at least 0.
  const rangeOf = (size: number) => {
    if (!Number.isSafeInteger(offset) || offset > size) throw new UsageError(`${input}: cannot skip to specified offset (${ops.skip} blocks of ${ops.bs} bytes is past the end of the ${size}-byte image)`);
    const end = ops.count === undefined ? size : Math.min(size, ops.count * ops.bs);
    return { offset, length: Math.max(0, end - offset) };
  };
  // Opened once, by the conversion (an NBD export too: a qemu-nbd started without --persistent serves one
  // connection), with its chain as qemu-img dd opens it: an encrypted image (or backing file) given no passphrase is
  // refused before anything is written, whatever the range holds; the range follows from its size.
  const onSourceOpen = async (source: Disk) => {
    await refuseWithoutSecret(source, input, opened);
    warnIfRawReadInFull(io, 'img', source.format, input);
  };
  const controller = new AbortController();
  const removeSignalHandlers = abortOnSignals(controller);
  try {
    const result = await convertFile({
      ...(opened.format !== undefined ? { srcFormat: opened.format } : {}),
      onSourceOpen,
      dstFormat,
      input,
      output,
      registry,
      untrusted,
      forceShare,
      forceFormat,
      range: rangeOf,
      ...(opened.passphrase ? { passphrase: opened.passphrase } : {}),
      ...(opened.backing ? { backing: opened.backing } : {}),
      signal: controller.signal,
      ...(values.p ? { onProgress: progressPrinter(io, false) } : {}),
    });
    if (values.p) io.stderr(`img dd: ${formatSize(result.bytesWritten)} written, ${formatSize(result.bytesSkipped)} left sparse\n`);
  } finally {
    removeSignalHandlers();
  }
  return 0;
};
