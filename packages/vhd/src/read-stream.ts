/**
 * readVhdStream: the guest data of a dynamic or fixed VHD arriving as a
 * byte stream (a pipe, an HTTP body), with no seeking and without
 * buffering the stream.
 *
 * Dynamic disks are readable this way when their metadata comes first:
 * footer copy, dynamic header, BAT, then the blocks (what streamVhd and
 * qemu-img convert write). Blocks are decoded in file order, whatever
 * their block numbers; a block that lies before the end of the BAT (the
 * stream has passed it) is ERR_IMG_UNSUPPORTED, as is a differencing disk
 * (it needs its parent). Fixed disks are their guest data followed by the
 * footer: the size is known only at the end (`size` is -1 until then).
 */
import { ByteStreamReader, corrupt, hex, ImageError, readU32Be, unsafe, unsupported, type OpenOptions, type StreamSource } from '@img/block';
import { BAT_UNUSED, MAX_BAT_ENTRIES, batBytes } from './bat.js';
import { bitRuns, bitmapSize } from './bitmap.js';
import { DYNAMIC_HEADER_COOKIE, DYNAMIC_HEADER_SIZE, dynamicHeaderChecksum, parseDynamicHeader } from './dynamic-header.js';
import { CHECKSUM_OFFSET, COALESCE_COOKIE, DISK_TYPE, FOOTER_COOKIE, FOOTER_SIZE, footerChecksum, parseFooter, readCookie, type VhdFooter } from './footer.js';
import { VHD_MAX_SIZE, VHD_SECTOR, vhdVirtualSize, type VhdSizeMode } from './geometry.js';
import { FORMAT, MAX_BLOCK_SIZE } from './state.js';

/** Largest piece yielded (block data is cut into pieces of at most this). */
const PIECE = 1024 * 1024;
const NAME = 'stream';

export interface VhdReadStreamOptions extends OpenOptions {
  /** How the virtual size is derived (see openVhd). */
  sizeMode?: VhdSizeMode;
}

function isFooter(b: Uint8Array): boolean {
  const c = readCookie(b, 0);
  return (c === FOOTER_COOKIE || c === COALESCE_COOKIE) && b.length === FOOTER_SIZE;
}

/**
 * Decodes the VHD arriving as `input`. Resolves once the metadata has been
 * read (dynamic disks) or the first sector seen (fixed disks); the data
 * comes through `pieces`, in stream order, each piece at its guest offset.
 * Sectors whose bitmap bit is clear and unallocated blocks yield nothing
 * (they read as zeros). Every size and count is validated before anything
 * is allocated; memory use is bounded by the allocated blocks of the BAT
 * bytes received and one input chunk.
 *
 * @example
 * ```ts
 * const { size, pieces } = await readVhdStream(Readable.from(req));
 * for await (const p of pieces) await disk.write(p.offset, p.data);
 * ```
 */
export async function readVhdStream(input: AsyncIterable<Uint8Array>, options: VhdReadStreamOptions = {}): Promise<StreamSource> {
  const reader = new ByteStreamReader(input, FORMAT, NAME);
  const first = await reader.exact(FOOTER_SIZE, 'the footer copy').catch((e: unknown) => {
    if (ImageError.isInstance(e)) throw corrupt(FORMAT, NAME, `the stream is shorter than a VHD footer (${reader.position} bytes)`, { field: 'footer' });
    throw e;
  });
  const type = isFooter(first) ? readU32Be(first, 0x3c) : DISK_TYPE.fixed;
  if (type === DISK_TYPE.differencing) {
    throw unsupported(FORMAT, NAME, 'a differencing VHD cannot be read as a stream: its unallocated sectors come from its parent; save it to a file and open it with its parent');
  }
  if (type === DISK_TYPE.dynamic) return readDynamic(reader, first, options);
  return readFixed(reader, first.slice(), options);
}

function checkedFooter(bytes: Uint8Array, at: number): VhdFooter {
  if (footerChecksum(bytes) !== readU32Be(bytes, CHECKSUM_OFFSET)) {
    throw corrupt(FORMAT, NAME, `footer checksum at ${hex(at + CHECKSUM_OFFSET)} is wrong (a stream has no second copy to fall back on)`, { field: 'footer checksum', offset: at + CHECKSUM_OFFSET });
  }
  if (readCookie(bytes, 0) === COALESCE_COOKIE) {
    throw unsafe(FORMAT, NAME, 'a coalesce into this image was interrupted; its content is only valid under its child', { field: 'footer cookie', offset: at });
  }
  try {
    return parseFooter(bytes);
  } catch (e) {
    if (ImageError.isInstance(e)) throw corrupt(FORMAT, NAME, e.message.replace(/^vhd: /, ''), { field: e.data.field, offset: at });
    throw e;
  }
}

function virtualSize(f: VhdFooter, at: number, options: VhdReadStreamOptions): number {
  const size = vhdVirtualSize(f.creatorApp, f.geometry, f.currentSize, options.sizeMode ?? 'auto');
  if (size > VHD_MAX_SIZE) throw corrupt(FORMAT, NAME, `disk size ${size} is larger than the VHD maximum of 2040 GiB`, { field: 'current size', offset: at + 0x30, actual: size });
  return size;
}

async function readDynamic(reader: ByteStreamReader, first: Uint8Array, options: VhdReadStreamOptions): Promise<StreamSource> {
  const footer = checkedFooter(first, 0);
  const size = virtualSize(footer, 0, options);
  // 0x10: data offset (spec, Hard Disk Footer): where the dynamic header is.
  if (footer.dataOffset < BigInt(FOOTER_SIZE) || footer.dataOffset > BigInt(VHD_MAX_SIZE)) {
    throw corrupt(FORMAT, NAME, `footer data offset ${hex(Number(footer.dataOffset))} does not point at a dynamic header after the footer copy`, { field: 'data offset', offset: 0x10 });
  }
  const at = Number(footer.dataOffset);
  await reader.skipTo(at, 'the dynamic header');
  const hb = await reader.exact(DYNAMIC_HEADER_SIZE, 'the dynamic header');
  const h = parseDynamicHeader(hb.slice());
  if (h.cookie !== DYNAMIC_HEADER_COOKIE) throw corrupt(FORMAT, NAME, `no dynamic disk header ("cxsparse") at ${hex(at)}`, { field: 'dynamic header cookie', offset: at });
  if (dynamicHeaderChecksum(hb) !== h.checksum) throw corrupt(FORMAT, NAME, `dynamic header checksum at ${hex(at + 0x24)} is wrong`, { field: 'dynamic header checksum', offset: at + 0x24 });
  const bs = h.blockSize;
  if (bs < VHD_SECTOR || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
    throw corrupt(FORMAT, NAME, `block size ${bs} at ${hex(at + 0x20)} is not a power of two between 512 and ${MAX_BLOCK_SIZE}`, { field: 'block size', offset: at + 0x20, actual: bs });
  }
  const entries = h.maxTableEntries;
  if (entries > MAX_BAT_ENTRIES || entries * bs > VHD_MAX_SIZE + bs) {
    throw corrupt(FORMAT, NAME, `max table entries ${entries} at ${hex(at + 0x1c)} describes more than 2040 GiB or exceeds ${MAX_BAT_ENTRIES}`, { field: 'max table entries', offset: at + 0x1c, actual: entries });
  }
  if (entries * bs < size) {
    throw corrupt(FORMAT, NAME, `BAT of ${entries} entries of ${bs} bytes cannot cover a disk of ${size} bytes`, { field: 'max table entries', offset: at + 0x1c, actual: entries });
  }
  const tableOffset = h.tableOffset;
  if (tableOffset < reader.position) {
    const tableEnd = tableOffset + batBytes(entries);
    if (tableOffset < FOOTER_SIZE || (tableOffset < at + DYNAMIC_HEADER_SIZE && tableEnd > at)) {
      throw corrupt(FORMAT, NAME, `the BAT at ${hex(tableOffset)} overlaps the footer copy or the dynamic header`, { field: 'table offset', offset: at + 0x10 });
    }
    throw unsupported(FORMAT, NAME, `the BAT at ${hex(tableOffset)} comes before the dynamic header at ${hex(at)}: this VHD cannot be read as a stream; save it to a file and open it`, {
      field: 'table offset',
      offset: at + 0x10,
    });
  }
  await reader.skipTo(tableOffset, 'the BAT');
  // The BAT is read a piece at a time and only its allocated entries are
  // kept: memory grows with the bytes that actually arrive, not with the
  // entry count the header claims.
  const batEnd = tableOffset + entries * 4;
  let count = 0;
  let blockOf = new Uint32Array(1024);
  let sectorOf = new Uint32Array(1024);
  for (let first = 0; first < entries;) {
    const n = Math.min(entries - first, 256 * 1024);
    const raw = await reader.exact(n * 4, 'the BAT');
    for (let j = 0; j < n; j++) {
      const e = readU32Be(raw, j * 4);
      if (e === BAT_UNUSED) continue;
      const i = first + j;
      const start = e * VHD_SECTOR;
      if (start < batEnd) {
        const inMeta = start < FOOTER_SIZE || (start < at + DYNAMIC_HEADER_SIZE && start + VHD_SECTOR > at) || start + VHD_SECTOR > tableOffset;
        if (inMeta) throw corrupt(FORMAT, NAME, `BAT entry ${i} points into the metadata (${hex(start)})`, { field: `BAT entry ${i}`, offset: tableOffset + i * 4, actual: e });
        throw unsupported(FORMAT, NAME, `BAT entry ${i} points backwards, to ${hex(start)}, before the end of the BAT at ${hex(batEnd)}: this VHD's blocks are not in stream order; save it to a file and open it`, {
          field: `BAT entry ${i}`,
          offset: tableOffset + i * 4,
          actual: e,
        });
      }
      if (count === blockOf.length) {
        const grow = (a: Uint32Array) => {
          const b = new Uint32Array(a.length * 2);
          b.set(a);
          return b;
        };
        blockOf = grow(blockOf);
        sectorOf = grow(sectorOf);
      }
      blockOf[count] = i;
      sectorOf[count] = e;
      count++;
    }
    first += n;
  }
  // Allocated blocks in file order.
  const byOffset = new Uint32Array(count);
  for (let k = 0; k < count; k++) byOffset[k] = k;
  byOffset.sort((x, y) => sectorOf[x]! - sectorOf[y]!);
  const order = new Uint32Array(count);
  const sectors = new Uint32Array(count);
  for (let k = 0; k < count; k++) {
    order[k] = blockOf[byOffset[k]!]!;
    sectors[k] = sectorOf[byOffset[k]!]!;
  }
  const bitmapBytes = bitmapSize(bs);
  const span = bitmapBytes + bs;
  for (let k = 1; k < count; k++) {
    if (sectors[k - 1]! * VHD_SECTOR + span > sectors[k]! * VHD_SECTOR) {
      const a = order[k - 1]!;
      const b = order[k]!;
      throw corrupt(FORMAT, NAME, `BAT entries ${a} and ${b} point at overlapping blocks (${hex(sectors[k - 1]! * VHD_SECTOR)}, ${hex(sectors[k]! * VHD_SECTOR)})`, {
        field: `BAT entry ${b}`,
        offset: tableOffset + b * 4,
      });
    }
  }
  const sectorsPerBlock = bs / VHD_SECTOR;
  async function* pieces(): AsyncGenerator<{ offset: number; data: Uint8Array }> {
    for (let k = 0; k < count; k++) {
      const block = order[k]!;
      const start = sectors[k]! * VHD_SECTOR;
      const guest = block * bs;
      if (guest >= size) {
        // A block past the end of the disk (a BAT larger than needed): nothing to read.
        continue;
      }
      await reader.skipTo(start, `block ${block}`);
      const bitmap = (await reader.exact(bitmapBytes, `the sector bitmap of block ${block}`)).slice();
      const valid = Math.min(sectorsPerBlock, Math.ceil((size - guest) / VHD_SECTOR));
      let pos = 0; // bytes of the block's data consumed
      for (const run of bitRuns(bitmap, 0, sectorsPerBlock)) {
        const from = run.start * VHD_SECTOR;
        const to = from + run.count * VHD_SECTOR;
        if (!run.set || run.start >= valid) continue;
        await reader.skipTo(start + bitmapBytes + from, `block ${block}`);
        pos = from;
        const stop = Math.min(to, valid * VHD_SECTOR, size - guest);
        while (pos < stop) {
          const piece = await reader.some(Math.min(PIECE, stop - pos));
          if (!piece) throw corrupt(FORMAT, NAME, `the stream ends at ${hex(reader.position)}, inside block ${block} (${hex(start)})`, { field: `BAT entry ${block}`, offset: reader.position });
          // Pieces may share memory with the input: hand out copies the consumer may keep.
          yield { offset: guest + pos, data: piece.slice() };
          pos += piece.length;
        }
      }
    }
    const tail = await reader.drain(FOOTER_SIZE);
    // openVhd trusts a fixed disk's footer at the end first; a stream sees the start first. A fixed disk whose
    // data begins with another VHD would decode as that inner VHD: its footer at the end gives it away.
    if (tail.length === FOOTER_SIZE && isFooter(tail) && footerChecksum(tail) === readU32Be(tail, CHECKSUM_OFFSET) && readU32Be(tail, 0x3c) === DISK_TYPE.fixed) {
      throw unsupported(FORMAT, NAME, 'the stream ends with the footer of a fixed disk whose data starts with another VHD; it cannot be told apart as a stream: save it to a file and open it', {
        field: 'footer',
        offset: reader.position - FOOTER_SIZE,
      });
    }
  }
  return { size, pieces: pieces() };
}

async function readFixed(reader: ByteStreamReader, first: Uint8Array, options: VhdReadStreamOptions): Promise<StreamSource> {
  const state = { size: -1 };
  async function* pieces(): AsyncGenerator<{ offset: number; data: Uint8Array }> {
    // The last 512 (or 511) bytes are the footer: hold back 512 bytes at all times.
    let held = first;
    let offset = 0;
    for (;;) {
      const piece = await reader.some(PIECE);
      if (!piece) break;
      const all = new Uint8Array(held.length + piece.length);
      all.set(held);
      all.set(piece, held.length);
      const out = all.length - FOOTER_SIZE;
      if (out > 0) {
        yield { offset, data: all.subarray(0, out) };
        offset += out;
      }
      held = all.slice(Math.max(0, out));
    }
    let footerBytes = held;
    let dataEnd = offset;
    if (!isFooter(footerBytes) || footerChecksum(footerBytes) !== readU32Be(footerBytes, CHECKSUM_OFFSET)) {
      // An old Virtual PC disk ends with a 511-byte footer.
      const short = new Uint8Array(FOOTER_SIZE);
      short.set(held.subarray(1));
      if (held.length === FOOTER_SIZE && readCookie(short, 0) === FOOTER_COOKIE && footerChecksum(short) === readU32Be(short, CHECKSUM_OFFSET)) {
        footerBytes = short;
        yield { offset, data: held.slice(0, 1) };
        dataEnd = offset + 1;
      } else {
        throw corrupt(FORMAT, NAME, `no valid VHD footer at the end of the stream (${hex(offset)}): not a fixed VHD, or truncated`, { field: 'footer', offset });
      }
    }
    const footer = checkedFooter(footerBytes, dataEnd);
    if (footer.diskType !== DISK_TYPE.fixed) {
      throw corrupt(FORMAT, NAME, `the footer at the end of the stream says disk type ${footer.diskType}, but no footer copy starts the stream (a dynamic disk needs one)`, { field: 'disk type', offset: dataEnd + 0x3c });
    }
    const size = virtualSize(footer, dataEnd, options);
    if (size > dataEnd) throw corrupt(FORMAT, NAME, `fixed disk of ${size} bytes does not fit in a stream of ${dataEnd + FOOTER_SIZE} bytes`, { field: 'current size', offset: dataEnd + 0x30 });
    state.size = size;
  }
  return {
    get size() {
      return state.size;
    },
    pieces: pieces(),
  };
}
