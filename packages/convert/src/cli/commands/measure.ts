/**
 * img measure: the file size a conversion or a new image needs.
 */
import { parseArgs } from '../parse-args.js';
import { parseSize, unsupported, type Disk } from '@img/block';
import { UsageError } from '../common.js';
import { createOptionsFromCli, createOptionsTitle, printOptionHelp, readOptionText } from '../options.js';
import { qdictSorted } from '../info-human.js';
import { measureBitmaps, measureRaw } from '../measure.js';
import { defaultRegistry } from '../../formats.js';
import { openDiskSnapshot } from '../../node.js';
import { type Handler, common, shareOption, outputMode, onePath, openForCommand } from './shared.js';
import { fileHoleStorages, withFileHoles } from '../file-holes.js';

/** img measure. */
export const measure: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'measure', args: argv, options: { ...common, ...shareOption, O: { type: 'string' }, o: { type: 'string', multiple: true }, size: { type: 'string' }, l: { type: 'string' } }, allowPositionals: true });
  if (values.help) {
    io.stdout(
      'Usage: img measure [-O fmt] [-o key=value,...] [-f fmt] [-U] [-l snapshot] (--size N | <file>) [--output=human|json]\n\n' +
        '  -O fmt       the output format to measure for (default raw, as qemu-img)\n' +
        '  -l snapshot  measure an internal snapshot (an id or a name, or snapshot.id=ID,snapshot.name=NAME, as convert -l)\n\n' +
        'Example:\n  img measure -O qcow2 --size 10G\n  img measure -O qcow2 disk.img\n',
    );
    return 0;
  }
  const mode = outputMode(values.output);
  if ((values.size === undefined) === (positionals.length === 0)) throw new UsageError('expected either --size <size> or <file>');
  const registry = defaultRegistry();
  // As qemu-img: without -O the output format is raw.
  const driver = registry.require(values.O ?? 'raw');
  if (!driver.measure && driver.name !== 'raw') throw unsupported(driver.name, undefined, 'this format cannot be measured');
  const optionText = readOptionText(values.o);
  if (optionText.help) {
    printOptionHelp(io, createOptionsTitle(driver), driver.createOptionTable ?? []);
    return 0;
  }
  const options = createOptionsFromCli(io, 'img measure', driver, optionText.text);
  if (values.l !== undefined && values.size !== undefined) throw new UsageError('-l names a snapshot of <file>: it cannot be used with --size');
  let source: Disk | undefined;
  let snapshot: Disk | undefined;
  let closeHoles = async () => {};
  try {
    if (positionals.length) source = await openForCommand(onePath(positionals), values, true, io);
    // -l: the snapshot's data is measured (the bitmaps, below, stay the image's, as qemu-img counts them).
    if (source && values.l !== undefined) snapshot = await openDiskSnapshot(source, values.l);
    const measured = snapshot ?? source;
    const size = measured?.size ?? parseSize(values.size!);
    // As qemu-img measure: data in holes of the file below the source's format (a fixed VHD, a preallocated qcow2, flat VMDK extents) needs no space.
    let counted = measured;
    if (source && measured) {
      const holes = await fileHoleStorages(source);
      closeHoles = holes.close;
      counted = withFileHoles(measured, holes.storages);
    }
    const result = driver.measure ? await driver.measure({ size, options, ...(counted ? { source: counted } : {}) }) : measureRaw(size);
    // qemu-img gives the bitmaps figure for a qcow2 output measured from an image that can hold bitmaps.
    const bitmaps = source && driver.name === 'qcow2' ? await measureBitmaps(source, options) : undefined;
    if (mode === 'json') {
      io.stdout(JSON.stringify(qdictSorted({ ...(bitmaps !== undefined ? { bitmaps } : {}), required: result.required, 'fully-allocated': result.fullyAllocated }), null, 4) + '\n');
    } else {
      io.stdout(`required size: ${result.required}\nfully allocated size: ${result.fullyAllocated}\n${bitmaps !== undefined ? `bitmaps size: ${bitmaps}\n` : ''}`);
    }
    return 0;
  } finally {
    await closeHoles();
    await snapshot?.close();
    await source?.close();
  }
};
