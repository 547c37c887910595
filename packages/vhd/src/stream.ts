/**
 * streamVhd: a complete VHD as a byte stream, with no seeking (stdout, a
 * pipe, an HTTP upload). The source's extents are read first (metadata
 * only), every table is laid out, then footer copy, dynamic header, BAT,
 * blocks (bitmap + data) and footer are emitted in file order.
 */
import { checkOptionKeys, driverOptions, extentRange, invalidArg, isAllZero, parseBool, type Disk, type ImageStream, type OptionTable } from '@img/block';
import { BAT_UNUSED, MAX_BAT_ENTRIES, batBytes, serializeBat } from './bat.js';
import { bitmapSize } from './bitmap.js';
import { checkedBlockSize, newFooter, vhdCreateOptionsFrom, VHD_CREATE_OPTIONS, type VhdCreateOptions } from './create.js';
import { DYNAMIC_HEADER_COOKIE, DYNAMIC_HEADER_SIZE, DYNAMIC_HEADER_VERSION, emptyLocator, serializeDynamicHeader } from './dynamic-header.js';
import { FOOTER_SIZE, NO_DATA_OFFSET, serializeFooter } from './footer.js';
import { VHD_MAX_SIZE, VHD_SECTOR, chsForSectors } from './geometry.js';
import { FORMAT } from './state.js';
import { NIL_UUID } from './uuid.js';

export interface VhdStreamOptions extends Pick<VhdCreateOptions, 'blockSize' | 'uuid' | 'timestamp' | 'creator'> {
  /** "dynamic" (default) or "fixed". */
  type?: 'dynamic' | 'fixed';
  /** Largest piece yielded, in bytes (default 2 MiB, at least one block for dynamic images). */
  chunkSize?: number;
  /**
   * Dynamic images: read every block the extents call data once before the
   * first byte and leave blocks that hold only zeros unallocated. Costs a
   * second read of the data (the layout must be known before the first
   * byte). Default false.
   */
  detectZeroes?: boolean;
}

/** What the writer decided before the first byte. */
interface VhdStreamPlan {
  type: 'dynamic' | 'fixed';
  size: number;
  blockSize: number;
  chunk: number;
  footerBytes: Uint8Array;
  /** Dynamic: the BAT (BAT_UNUSED for blocks not emitted). */
  bat: Uint32Array;
  /** Merged [from, to) data ranges of the source. */
  ranges: Array<[number, number]>;
  /** Total bytes of the stream. */
  length: number;
}

/** The options a stream takes: typed key, `-o` name, help. `uuid`, `timestamp`, `creator` and `chunkSize` have no `-o` name. */
export const VHD_STREAM_OPTIONS: OptionTable = [...VHD_CREATE_OPTIONS.filter((o) => o.key === 'type' || o.key === 'blockSize'), { key: 'detectZeroes', name: 'detect_zeroes', kind: 'bool', help: 'on: blocks holding only zeros stay unallocated (reads the data twice)' }];

/** Typed keys of VhdStreamOptions that have no `-o` name. */
const STREAM_TYPED_ONLY = ['uuid', 'timestamp', 'creator', 'chunkSize'];

/**
 * Maps typed keys or the CLI's `-o` names (`subformat`, `block_size`,
 * `detect_zeroes`) to VhdStreamOptions (what vhdDriver.stream takes).
 * Differencing disks and force_size are refused; so is a key no stream
 * takes (the error lists those it takes).
 */
export function vhdStreamOptionsFrom(options: Record<string, unknown> = {}): VhdStreamOptions {
  const { parent, backingFile, backing_file, backingFormat: _bf, backing_fmt: _bfmt, forceSize, force_size, ...rest } = options;
  const typed = driverOptions(FORMAT, VHD_STREAM_OPTIONS, rest, { extra: STREAM_TYPED_ONLY, what: 'stream option' });
  if (typed.type === 'differencing' || parent !== undefined || backing_file !== undefined || backingFile !== undefined) {
    throw invalidArg(FORMAT, 'a stream holds a whole disk: differencing VHDs cannot be streamed (subformat=dynamic or fixed)', { field: 'subformat' });
  }
  if ((forceSize ?? force_size) !== undefined) throw invalidArg(FORMAT, 'force_size is not supported by the streaming writer (it writes the exact size, creator "win ")', { field: 'force_size' });
  const created = vhdCreateOptionsFrom({ ...typed, size: undefined });
  const out: VhdStreamOptions = {};
  if (created.type) out.type = created.type as 'dynamic' | 'fixed';
  if (created.blockSize !== undefined) out.blockSize = created.blockSize;
  if (created.uuid !== undefined) out.uuid = created.uuid;
  if (created.timestamp !== undefined) out.timestamp = created.timestamp;
  if (created.creator !== undefined) out.creator = created.creator;
  if (typeof typed.chunkSize === 'number') out.chunkSize = typed.chunkSize;
  if (typed.detectZeroes !== undefined) out.detectZeroes = parseBool(typed.detectZeroes as string | boolean, 'detect_zeroes');
  return out;
}

async function planVhdStream(source: Disk, options: VhdStreamOptions): Promise<VhdStreamPlan> {
  checkOptionKeys(FORMAT, VHD_STREAM_OPTIONS, options, STREAM_TYPED_ONLY, 'stream option');
  const type = options.type ?? 'dynamic';
  if (type !== 'dynamic' && type !== 'fixed') throw invalidArg(FORMAT, `a stream is a dynamic or fixed VHD, not ${String(type)}`, { field: 'type' });
  const size = Math.ceil(source.size / VHD_SECTOR) * VHD_SECTOR;
  if (size > VHD_MAX_SIZE) throw invalidArg(FORMAT, `size ${size} is larger than the VHD maximum of 2040 GiB`, { field: 'size' });
  const blockSize = checkedBlockSize(options.blockSize);
  const chunk = Math.max(options.chunkSize ?? 2 * 1024 * 1024, VHD_SECTOR);
  const footer = newFooter(type, size, chsForSectors(size / VHD_SECTOR), options);
  const footerBytes = serializeFooter(footer);
  const ranges = await dataRanges(source, 0, source.size);
  if (type === 'fixed') {
    return { type, size, blockSize, chunk, footerBytes, bat: new Uint32Array(0), ranges, length: size + FOOTER_SIZE };
  }
  // Which blocks hold data: from the extents (metadata), then optionally their bytes.
  const entries = Math.ceil(size / blockSize);
  if (entries > MAX_BAT_ENTRIES) {
    throw invalidArg(FORMAT, `a ${size}-byte disk of ${blockSize}-byte blocks needs ${entries} BAT entries, more than readers accept (${MAX_BAT_ENTRIES}): use larger blocks`, { field: 'blockSize' });
  }
  const used = new Uint8Array(entries);
  for (const [from, to] of ranges) {
    for (let b = Math.floor(from / blockSize); b * blockSize < to; b++) used[b] = 1;
  }
  if (options.detectZeroes) {
    for (let b = 0; b < entries; b++) {
      if (!used[b]) continue;
      const start = b * blockSize;
      const end = Math.min(start + blockSize, source.size);
      if (await rangesAreZero(source, clip(ranges, start, end), chunk)) used[b] = 0;
    }
  }
  const tableOffset = VHD_SECTOR + DYNAMIC_HEADER_SIZE;
  let next = tableOffset + batBytes(entries);
  const bat = new Uint32Array(entries).fill(BAT_UNUSED);
  for (let b = 0; b < entries; b++) {
    if (!used[b]) continue;
    bat[b] = next / VHD_SECTOR;
    next += bitmapSize(blockSize) + blockSize;
  }
  return { type, size, blockSize, chunk, footerBytes, bat, ranges, length: next + FOOTER_SIZE };
}

async function rangesAreZero(source: Disk, ranges: Array<[number, number]>, chunk: number): Promise<boolean> {
  for (const [a, b] of ranges) {
    for (let pos = a; pos < b; pos += chunk) {
      if (!isAllZero(await source.read(pos, Math.min(chunk, b - pos)))) return false;
    }
  }
  return true;
}

async function* emit(source: Disk, plan: VhdStreamPlan): AsyncGenerator<Uint8Array> {
  const { size, blockSize, chunk, footerBytes, bat, ranges } = plan;
  if (plan.type === 'fixed') {
    yield* readRange(source, 0, size, chunk, ranges);
    yield footerBytes;
    return;
  }
  const entries = bat.length;
  const header = serializeDynamicHeader({
    cookie: DYNAMIC_HEADER_COOKIE,
    dataOffset: NO_DATA_OFFSET,
    tableOffset: VHD_SECTOR + DYNAMIC_HEADER_SIZE,
    headerVersion: DYNAMIC_HEADER_VERSION,
    maxTableEntries: entries,
    blockSize,
    checksum: 0,
    parentUniqueId: NIL_UUID,
    parentTimestamp: 0,
    reserved1: 0,
    parentUnicodeName: '',
    parentLocators: Array.from({ length: 8 }, emptyLocator),
    reserved2: new Uint8Array(256),
  });
  yield footerBytes;
  yield header;
  yield serializeBat(bat);
  const bitmap = new Uint8Array(bitmapSize(blockSize)).fill(0xff);
  for (let b = 0; b < entries; b++) {
    if (bat[b] === BAT_UNUSED) continue;
    yield bitmap;
    const start = b * blockSize;
    const end = Math.min(start + blockSize, source.size);
    yield* readRange(source, start, end, chunk, clip(ranges, start, end));
    if (end < start + blockSize) yield new Uint8Array(start + blockSize - end);
  }
  yield footerBytes;
}

/**
 * A dynamic or fixed VHD holding `source`'s content as an ImageStream: the
 * layout is computed from the source's extents (and, with `detectZeroes`,
 * its data) before the first byte, so `length` can be sent ahead (an HTTP
 * Content-Length). The source must not change while the stream is read.
 *
 * @example
 * ```ts
 * const { length, chunks } = await createVhdStream(disk, { type: 'dynamic' });
 * res.setHeader('Content-Length', length);
 * for await (const c of chunks) res.write(c);
 * ```
 */
export async function createVhdStream(source: Disk, options: VhdStreamOptions = {}): Promise<ImageStream> {
  const plan = await planVhdStream(source, options);
  return { length: plan.length, chunks: emit(source, plan) };
}

/**
 * Yields the bytes of a VHD holding `source`'s content. Dynamic images
 * allocate exactly the blocks the source's extents say hold data; the
 * sizing rules are createVhd's (creator "win ", exact size).
 *
 * @example
 * ```ts
 * for await (const chunk of streamVhd(disk)) process.stdout.write(chunk);
 * ```
 */
export async function* streamVhd(source: Disk, options: VhdStreamOptions = {}): AsyncGenerator<Uint8Array> {
  yield* emit(source, await planVhdStream(source, options));
}

/** [from, to) ranges the source's extents call data, merged. */
async function dataRanges(source: Disk, offset: number, end: number): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  const range = extentRange({ offset, length: Math.min(end, source.size) - offset }, source.size);
  for await (const e of source.extents({ offset: range.start, length: range.end - range.start })) {
    if (e.kind !== 'data') continue;
    const last = out[out.length - 1];
    if (last && last[1] === e.offset) last[1] = e.offset + e.length;
    else out.push([e.offset, e.offset + e.length]);
  }
  return out;
}

function clip(ranges: Array<[number, number]>, start: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [a, b] of ranges) if (a < end && b > start) out.push([Math.max(a, start), Math.min(b, end)]);
  return out;
}

/** Yields [start, end): data ranges read from the source, the rest as zeros (never read). */
async function* readRange(source: Disk, start: number, end: number, chunk: number, ranges: Array<[number, number]>): AsyncGenerator<Uint8Array> {
  let pos = start;
  const zeros = new Uint8Array(Math.min(chunk, Math.max(end - start, 0)));
  const emitZeros = function* (to: number) {
    while (pos < to) {
      const n = Math.min(zeros.length, to - pos);
      yield n === zeros.length ? zeros : zeros.subarray(0, n);
      pos += n;
    }
  };
  for (const [a, b] of ranges) {
    if (b <= pos) continue;
    yield* emitZeros(Math.max(a, pos));
    while (pos < Math.min(b, end)) {
      const n = Math.min(chunk, Math.min(b, end) - pos, source.size - pos);
      if (n <= 0) break;
      yield await source.read(pos, n);
      pos += n;
    }
  }
  yield* emitZeros(end);
}
