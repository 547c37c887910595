/**
 * img map: the extent map, as qemu-img map prints it.
 */
import { dirname, resolve } from 'node:path';
import { parseArgs } from '../parse-args.js';
import { hex, parseSize, unsupported, type Disk } from '@img/block';
import { fileHoleStorages, mapExtentBatches, type MapExtent } from '../file-holes.js';
import { isJsonName } from '../../node/qemu-names.js';
import type { Io } from '../common.js';
import { type Handler, common, shareOption, outputMode, onePath, openForCommand, combinePath, backingOf } from './shared.js';

/** One entry of qemu-img map --output=json for an extent. */
export function mapEntry(e: MapExtent): Record<string, unknown> {
  const out: Record<string, unknown> = {
    start: e.offset,
    length: e.length,
    depth: e.depth ?? 0,
    present: e.kind !== 'hole',
    zero: e.kind !== 'data' || e.inHole === true,
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
    // A json: name is shown as the file it names, as qemu-img shows the image it opened.
    name = isJsonName(info.backingFile) ? (backingOf(layer)?.storage.name ?? info.backingFile) : combinePath(name, info.backingFile);
  }
  return names;
}

/**
 * {@link mapEntryText} of {@link mapEntry} for one extent, written out: the
 * generic form (an object, its entries, JSON.stringify of each key and
 * value) was most of the time of a map of millions of extents.
 */
function mapExtentText(e: MapExtent): string {
  const zero = e.kind !== 'data' || e.inHole === true;
  const offset = e.hostOffset !== undefined ? `, "offset": ${e.hostOffset}` : '';
  return `{ "start": ${e.offset}, "length": ${e.length}, "depth": ${e.depth ?? 0}, "present": ${e.kind !== 'hole'}, "zero": ${zero}, "data": ${e.kind === 'data'}${offset}}`;
}

/** A map entry as qemu-img prints one: `{ "start": 0, "length": 512, ... }`, spaced as its JSON writer spaces it. */
function mapEntryText(entry: Record<string, unknown>): string {
  return `{ ${Object.entries(entry)
    .map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`)
    .join(', ')}}`;
}

/** How much text is gathered before it is written. */
const MAP_CHUNK = 1 << 20;

/**
 * Stdout written a chunk at a time; `flush` writes what is left (what was
 * printed before an error too, as qemu-img's). `write` returns a promise
 * (to be awaited) when stdout has no room: a slow reader then holds the
 * walk back.
 */
function chunkedStdout(io: Io): { write: (text: string) => Promise<void> | undefined; flush: () => void } {
  let chunk = '';
  const flush = () => {
    if (chunk !== '') io.stdout(chunk);
    chunk = '';
  };
  return {
    write: (text) => {
      chunk += text;
      if (chunk.length < MAP_CHUNK) return undefined;
      flush();
      return io.stdoutRoom?.();
    },
    flush,
  };
}

/** img map. */
export const map: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'map', args: argv, options: { ...common, ...shareOption, 'start-offset': { type: 'string' }, 'max-length': { type: 'string' } }, allowPositionals: true });
  if (values.help) {
    io.stdout('Usage: img map [-f fmt] [-U] [--start-offset=offset] [--max-length=len] [--output=human|json] <file>\n\nExample:\n  img map --output=json disk.qcow2\n  img map --start-offset=1G --max-length=64M disk.qcow2\n');
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  // qemu-img map's window (7.2): sizes with suffixes; a start past the end maps nothing.
  const start = values['start-offset'] === undefined ? 0 : parseSize(values['start-offset'], '--start-offset');
  const maxLength = values['max-length'] === undefined ? undefined : parseSize(values['max-length'], '--max-length');
  const disk = await openForCommand(path, values, true, io);
  let closeHoles = async () => {};
  try {
    const { storages, close } = await fileHoleStorages(disk);
    closeHoles = close;
    const offset = Math.min(start, disk.size);
    const range = { offset, length: Math.min(maxLength ?? Infinity, disk.size - offset) };
    // Printed as the walk goes, a chunk at a time, as qemu-img prints it: an image of 20 M extents makes 2 GB of
    // JSON, past the longest string V8 holds ("Invalid string length" after 7 minutes and 4 GB when it was joined).
    const out = chunkedStdout(io);
    try {
      if (mode === 'json') {
        let rows = 0;
        for await (const batch of mapExtentBatches(disk, storages, range)) {
          for (const e of batch) {
            const room = out.write(`${rows++ === 0 ? '[' : ',\n'}${mapExtentText(e)}`);
            if (room) await room;
          }
        }
        // An empty disk: qemu-img map prints one entry of length 0 with every flag false.
        if (rows === 0) await out.write(`[${mapEntryText({ start, length: 0, depth: 0, present: false, zero: false, data: false })}`);
        await out.write(']\n');
      } else {
        // qemu-img's columns: 16 wide, offsets in printf's %#x (plain 0 for zero).
        const hex16 = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
        const names = await layerNames(disk, path);
        await out.write(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
        for await (const batch of mapExtentBatches(disk, storages, range)) {
          for (const e of batch) {
            // As qemu-img: only data that does not read as zeros is listed.
            if (e.kind !== 'data' || e.inHole) continue;
            if (e.hostOffset === undefined) {
              // As qemu-img: data that is not stored as itself at an offset of a file cannot be shown in this form.
              throw unsupported(disk.format, path, `the data at guest offset ${hex(e.offset)} is compressed, encrypted or external: it has no offset in the file to show (--output=json lists it)`, { offset: e.offset });
            }
            const file = e.file === undefined ? '' : (names.get(resolve(e.file)) ?? e.file);
            const room = out.write(`${hex16(e.offset)}${hex16(e.length)}${hex16(e.hostOffset)}${file}\n`);
            if (room) await room;
          }
        }
      }
    } finally {
      out.flush();
    }
    return 0;
  } finally {
    await closeHoles();
    await disk.close();
  }
};
