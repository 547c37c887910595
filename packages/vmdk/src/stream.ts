/**
 * streamVmdk: any Disk as a streamOptimized VMDK byte stream, produced
 * front to back with no seek (a pipe, an HTTP upload, an OVA member). The
 * source's extents say which grains hold data; each such grain is read,
 * skipped when all zero, compressed and emitted; a grain table follows the
 * last grain it covers; the directory, footer and end-of-stream marker end
 * the stream (stream-layout.ts). Compression makes the length unknown
 * until the end: the ImageStream's length is -1.
 */
import { alignDown, alignUp, driverOptions, isAllZero, startedAhead, unsupported, type Disk, type ImageStream } from '@img/block';
import { FORMAT } from './image.js';
import { deflateGrains } from './compression.js';
import { serializeDescriptor } from './descriptor.js';
import { DEFAULT_GRAIN_SECTORS, vmdkCreateOptionsFrom, VMDK_CREATE_OPTIONS, type VmdkCreateOptions } from './create.js';
import { ADAPTER_TYPES, DEFAULT_HW_VERSION, DEFAULT_TOOLS_VERSION, newDescriptor, type AdapterType } from './new-descriptor.js';
import { SECTOR } from './sparse-header.js';
import { STREAM_GTES_PER_GT, StreamLayout } from './stream-layout.js';

/** Options of streamVmdk: the descriptor fields of createVmdk. */
export type VmdkStreamOptions = Omit<VmdkCreateOptions, 'size' | 'subformat' | 'zeroedGrain' | 'resolver'> & {
  /** The file name the descriptor's extent line names (default "disk.vmdk"). */
  fileName?: string;
  /** Called once the last chunk is produced: how many grains (of `grainBytes`) hold data. */
  onFinish?: (stats: { grains: number; grainBytes: number }) => void;
};

/** Bytes read from the source at once (whole grains). */
const READ_CHUNK = 1 << 20;

/**
 * A streamOptimized image of `source`, as chunks. The caller drains
 * `chunks` once.
 *
 * @example
 * ```ts
 * const s = await streamVmdk(disk, { fileName: 'disk1.vmdk' });
 * for await (const chunk of s.chunks) out.write(chunk);
 * ```
 */
export async function streamVmdk(source: Disk, options: VmdkStreamOptions = {}): Promise<ImageStream> {
  const sectors = Math.ceil(source.size / SECTOR);
  const adapterType: AdapterType = options.adapterType && (ADAPTER_TYPES as readonly string[]).includes(options.adapterType) ? options.adapterType : 'ide';
  const descriptor = newDescriptor({
    createType: 'streamOptimized',
    sectors,
    extentFile: options.fileName ?? 'disk.vmdk',
    adapterType,
    hwVersion: options.hwVersion ?? DEFAULT_HW_VERSION,
    toolsVersion: options.toolsVersion ?? DEFAULT_TOOLS_VERSION,
  });
  const layout = new StreamLayout(sectors, DEFAULT_GRAIN_SECTORS, new TextEncoder().encode(serializeDescriptor(descriptor)));
  return { length: -1, chunks: emit(source, layout, options.onFinish) };
}

/** One chunk of grains read from the source: their numbers and their compressed streams (all-zero grains left out). */
interface Batch {
  grains: number[];
  compressed: Promise<Uint8Array[]>;
}

/** Reads whole grains of the source's data extents, in order, a chunk at a time. */
async function* chunks(source: Disk, grainBytes: number): AsyncGenerator<{ grains: number[]; data: Uint8Array }> {
  let done = 0; // grains before this are emitted (extents may share a grain)
  for await (const e of source.extents()) {
    if (e.kind !== 'data') continue;
    let pos = Math.max(alignDown(e.offset, grainBytes), done);
    const end = Math.min(source.size, alignUp(e.offset + e.length, grainBytes));
    while (pos < end) {
      const n = Math.min(READ_CHUNK, end - pos);
      const buf = new Uint8Array(alignUp(n, grainBytes));
      await source.readInto(pos, buf.subarray(0, n));
      const grains: number[] = [];
      const keep: Uint8Array[] = [];
      for (let at = 0; at < n; at += grainBytes) {
        const g = buf.subarray(at, at + grainBytes);
        if (isAllZero(g)) continue;
        grains.push((pos + at) / grainBytes);
        keep.push(g);
      }
      pos += n;
      done = pos;
      if (grains.length === 0) continue;
      const data = keep.length * grainBytes === buf.length ? buf : concat(keep, grainBytes);
      yield { grains, data };
    }
  }
}

function concat(parts: Uint8Array[], grainBytes: number): Uint8Array {
  const out = new Uint8Array(parts.length * grainBytes);
  parts.forEach((p, i) => out.set(p, i * grainBytes));
  return out;
}

/**
 * Batches compressed ahead of the one being emitted, so reading and
 * compressing overlap: 4 MiB of grains keeps every core busy (each batch
 * is 16 grains for the thread pool), and bounds the memory in flight.
 */
const AHEAD = 4;

async function* emit(source: Disk, layout: StreamLayout, onFinish: VmdkStreamOptions['onFinish']): AsyncGenerator<Uint8Array> {
  yield layout.head();
  let grains = 0;
  const grainBytes = layout.grainBytes;
  let table = 0;
  const queue: Batch[] = [];
  const it = chunks(source, grainBytes);
  let ended = false;
  const fill = async () => {
    while (!ended && queue.length < AHEAD) {
      const r = await it.next();
      if (r.done) {
        ended = true;
        break;
      }
      // Awaited in order below.
      queue.push({ grains: r.value.grains, compressed: startedAhead(deflateGrains(r.value.data, grainBytes)) });
    }
  };
  try {
    await fill();
    while (queue.length) {
      const batch = queue.shift()!;
      const streams = await batch.compressed;
      await fill();
      for (const [i, grain] of batch.grains.entries()) {
        // Tables whose span lies wholly before this grain are complete.
        for (const t = Math.floor(grain / STREAM_GTES_PER_GT); table < t; table++) {
          const bytes = layout.table(table);
          if (bytes) yield bytes;
        }
        grains++;
        yield layout.grain(grain, streams[i]!);
      }
    }
  } finally {
    await it.return(undefined);
  }
  for (const chunk of layout.finish()) yield chunk;
  onFinish?.({ grains, grainBytes });
}

/**
 * streamVmdk's options from what the registry passes: typed keys or `-o`
 * names (`adapter_type`), and `detectZeroes` (a stream never stores zero
 * grains anyway) and `fileName`; subformat must be streamOptimized.
 */
export function vmdkStreamOptionsFrom(options: Record<string, unknown> = {}): VmdkStreamOptions {
  const table = VMDK_CREATE_OPTIONS.filter((o) => o.key !== 'size');
  const { detectZeroes: _ignored, detect_zeroes: _ignoredToo, fileName, size: _size, ...rest } = options;
  const typed = vmdkCreateOptionsFrom({ ...driverOptions(FORMAT, table, rest, { what: 'stream option' }), size: 1 });
  const out: VmdkStreamOptions = {};
  if (typed.adapterType) out.adapterType = typed.adapterType;
  if (typed.hwVersion) out.hwVersion = typed.hwVersion;
  if (typed.toolsVersion) out.toolsVersion = typed.toolsVersion;
  if (typeof fileName === 'string') out.fileName = fileName;
  if (typed.subformat !== undefined && typed.subformat !== 'streamOptimized') {
    throw unsupported(FORMAT, undefined, `only subformat=streamOptimized can be written as a stream (got ${typed.subformat})`, { field: 'subformat' });
  }
  return out;
}
