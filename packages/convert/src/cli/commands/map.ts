/**
 * img map: the extent map, as qemu-img map prints it.
 */
import { stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { detectMetadataPreallocation } from '@img/qcow2';
import { FileStorage } from '@img/block/node';
import { parseArgs } from '../parse-args.js';
import { hex, parseSize, unsupported, type Disk, type Extent, type Storage } from '@img/block';
import { type Handler, common, shareOption, outputMode, onePath, openForCommand, combinePath, backingOf } from './shared.js';

/**
 * An extent as qemu-img map sees it: `inHole` marks data the format
 * stores in a hole of its file (a cluster allocated but written only in
 * part), which qemu-img map reports as data that reads as zeros.
 */
export type MapExtent = Extent & { inHole?: boolean };

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
 * The extents of `disk` with the data that lies in holes of its layer's
 * file split off and marked, as qemu-img map asks the file below the
 * format (file system holes, by SEEK_DATA/SEEK_HOLE where the storage can
 * tell), and neighbours that then look alike merged again, as qemu-img
 * map merges them.
 */
async function* mapExtents(disk: Disk, storages: ReadonlyMap<string, Storage>, range: { offset: number; length: number }): AsyncGenerator<MapExtent> {
  let pending: MapExtent | undefined;
  const alike = (a: MapExtent, b: MapExtent): boolean =>
    a.kind === b.kind && (a.depth ?? 0) === (b.depth ?? 0) && a.inHole === b.inHole && a.file === b.file && a.offset + a.length === b.offset && (a.hostOffset === undefined ? b.hostOffset === undefined : b.hostOffset === a.hostOffset + a.length);
  for await (const e of disk.extents({ ...range, hostOffsets: true })) {
    for (const piece of await splitAtFileHoles(e, storages)) {
      if (pending && alike(pending, piece)) pending = { ...pending, length: pending.length + piece.length };
      else {
        if (pending) yield pending;
        pending = piece;
      }
    }
  }
  if (pending) yield pending;
}

/** The files of a VMDK layer's flat extents (FLAT, VMFS: raw files), as its info lists them. */
async function flatExtentFiles(layer: Disk): Promise<string[]> {
  const extents = (await layer.info?.())?.formatSpecific?.extents;
  if (!Array.isArray(extents)) return [];
  return (extents as Array<{ format?: unknown; filename?: unknown }>).filter((e) => (e.format === 'FLAT' || e.format === 'VMFS') && typeof e.filename === 'string').map((e) => resolve(e.filename as string));
}

/**
 * Whether qemu-img map asks the file below this layer where its holes are:
 * it does for a fixed VHD (read as raw), and for the data clusters of a
 * qcow2 image that looks preallocated with metadata (more clusters counted
 * in its refcounts than its file occupies); not for a dynamic VHD's blocks
 * or a VMDK's grains.
 */
async function asksFileBelow(layer: Disk): Promise<boolean> {
  if (layer.format === 'qcow2') {
    const allocated = await stat(layer.storage.name).then(
      (st) => st.blocks * 512,
      () => undefined,
    );
    return allocated !== undefined && (await detectMetadataPreallocation(layer.storage, allocated));
  }
  if (layer.format !== 'vhd') return false;
  return (await layer.info?.())?.formatSpecific?.type === 'fixed';
}

/** `e` cut where its bytes lie in a hole of its file (or past its end): those pieces are marked `inHole`. */
async function splitAtFileHoles(e: Extent, storages: ReadonlyMap<string, Storage>): Promise<MapExtent[]> {
  const storage = e.kind === 'data' && e.hostOffset !== undefined && e.file !== undefined ? storages.get(resolve(e.file)) : undefined;
  if (!storage?.ranges || e.hostOffset === undefined) return [e];
  const start = e.hostOffset;
  const end = start + e.length;
  const pieces: MapExtent[] = [];
  let pos = start;
  const push = (from: number, to: number, inHole: boolean) => {
    if (to <= from) return;
    const last = pieces.at(-1);
    if (last && (last.inHole === true) === inHole) last.length += to - from;
    else pieces.push({ ...e, offset: e.offset + from - start, length: to - from, hostOffset: from, ...(inHole ? { inHole: true } : {}) });
  };
  for (const r of await storage.ranges(start, e.length)) {
    const from = Math.max(pos, r.offset);
    const to = Math.min(end, r.offset + r.length);
    if (from > pos) push(pos, from, false);
    push(from, to, !r.data);
    pos = Math.max(pos, to);
  }
  // What the answer does not cover lies past the end of the file: it reads as zeros.
  push(pos, end, true);
  return pieces;
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
  const opened: Storage[] = [];
  try {
    const storages = new Map<string, Storage>();
    for (let layer: Disk | undefined = disk; layer; layer = backingOf(layer)) {
      if (await asksFileBelow(layer)) {
        // The file below a qcow2's data clusters is its external data file when it has one: that one is asked.
        const dataFile = layer.format === 'qcow2' ? (await layer.info?.())?.formatSpecific?.['data-file'] : undefined;
        if (typeof dataFile === 'string') {
          const file = resolve(dirname(resolve(layer.storage.name)), dataFile);
          const st = await FileStorage.open(file, { readOnly: true, forceShare: true });
          opened.push(st);
          storages.set(file, st);
        } else storages.set(resolve(layer.storage.name), layer.storage);
      }
      // A VMDK's flat extents (monolithicFlat, twoGbMaxExtentFlat, vmfs) are raw files: qemu-img map asks them for holes.
      if (layer.format === 'vmdk') {
        // Sparse extents keep grains: not asked, as qemu-img does not ask them.
        for (const file of await flatExtentFiles(layer)) {
          const st = await FileStorage.open(file, { readOnly: true, forceShare: true });
          opened.push(st);
          storages.set(file, st);
        }
      }
    }
    const offset = Math.min(start, disk.size);
    const range = { offset, length: Math.min(maxLength ?? Infinity, disk.size - offset) };
    if (mode === 'json') {
      const rows: string[] = [];
      for await (const e of mapExtents(disk, storages, range)) rows.push(mapEntryText(mapEntry(e)));
      // An empty disk: qemu-img map prints one entry of length 0 with every flag false.
      if (rows.length === 0) rows.push(mapEntryText({ start, length: 0, depth: 0, present: false, zero: false, data: false }));
      io.stdout(`[${rows.join(',\n')}]\n`);
    } else {
      // qemu-img's columns: 16 wide, offsets in printf's %#x (plain 0 for zero).
      const hex16 = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`).padEnd(16);
      const names = await layerNames(disk, path);
      io.stdout(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
      for await (const e of mapExtents(disk, storages, range)) {
        // As qemu-img: only data that does not read as zeros is listed.
        if (e.kind !== 'data' || e.inHole) continue;
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
    for (const st of opened) await st.close();
    await disk.close();
  }
};
