/**
 * img map: the extent map, as qemu-img map prints it.
 */
import { dirname, resolve } from 'node:path';
import { parseArgs } from '../parse-args.js';
import { hex, unsupported, type Disk, type Extent } from '@img/block';
import { type Handler, common, shareOption, outputMode, onePath, openForCommand, combinePath, backingOf } from './shared.js';

/** One entry of qemu-img map --output=json for an extent. */
export function mapEntry(e: Extent): Record<string, unknown> {
  const out: Record<string, unknown> = {
    start: e.offset,
    length: e.length,
    depth: e.depth ?? 0,
    present: e.kind !== 'hole',
    zero: e.kind !== 'data',
    data: e.kind === 'data',
  };
  if (e.hostOffset !== undefined) out.offset = e.hostOffset;
  return out;
}

/**
 * The names qemu-img gives the files of a chain: the image as the command
 * line names it, and each backing file and data file as the layer above
 * names it, read from that layer's directory. Keyed by resolved path (what
 * an extent's `file` resolves to).
 */
async function layerNames(disk: Disk, path: string): Promise<Map<string, string>> {
  const names = new Map<string, string>();
  let name = path;
  for (let layer: Disk | undefined = disk; layer; layer = backingOf(layer)) {
    names.set(resolve(layer.storage.name), name);
    const info = await layer.info?.();
    const dataFile = info?.formatSpecific?.['data-file'];
    if (typeof dataFile === 'string') names.set(resolve(dirname(resolve(layer.storage.name)), dataFile), combinePath(name, dataFile));
    if (info?.backingFile === undefined) break;
    name = combinePath(name, info.backingFile);
  }
  return names;
}

/** A map entry as qemu-img prints one: `{ "start": 0, "length": 512, ... }`, spaced as its JSON writer spaces it. */
function mapEntryText(entry: Record<string, unknown>): string {
  return `{ ${Object.entries(entry)
    .map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`)
    .join(', ')}}`;
}

/** img map. */
export const map: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'map', args: argv, options: { ...common, ...shareOption }, allowPositionals: true });
  if (values.help) {
    io.stdout('Usage: img map [-f fmt] [-U] [--output=human|json] <file>\n\nExample:\n  img map --output=json disk.qcow2\n');
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  const disk = await openForCommand(path, values, true, io);
  try {
    if (mode === 'json') {
      const rows: string[] = [];
      for await (const e of disk.extents({ hostOffsets: true })) rows.push(mapEntryText(mapEntry(e)));
      io.stdout(`[${rows.join(',\n')}]\n`);
    } else {
      // qemu-img's columns: 16 wide, offsets in printf's %#x (plain 0 for zero).
      const hex16 = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
      const names = await layerNames(disk, path);
      io.stdout(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
      for await (const e of disk.extents({ hostOffsets: true })) {
        if (e.kind !== 'data') continue;
        if (e.hostOffset === undefined) {
          // As qemu-img: data that is not stored as itself at an offset of a file cannot be shown in this form.
          throw unsupported(disk.format, path, `the data at guest offset ${hex(e.offset)} is compressed, encrypted or external: it has no offset in the file to show (--output=json lists it)`, { offset: e.offset });
        }
        const file = e.file === undefined ? '' : (names.get(resolve(e.file)) ?? e.file);
        io.stdout(`${hex16(e.offset)}${hex16(e.length)}${hex16(e.hostOffset)}${file}\n`);
      }
    }
    return 0;
  } finally {
    await disk.close();
  }
};
