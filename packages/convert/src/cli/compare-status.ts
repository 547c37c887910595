/**
 * `img compare --strict`'s block status comparison, as qemu-img 7.2's
 * img_compare does it: both images are walked in the pieces their block
 * status answers come in, and at each piece's start the two status words
 * must be equal, or the images differ ("Strict mode: Offset N block status
 * mismatch!"). A status word is what qemu-img map prints of a range
 * (present, zero, data, whether it has an offset in a file) plus the flag
 * that says the answer reaches the end of the image (BDRV_BLOCK_EOF).
 *
 * That last flag makes the pieces matter: qemu asks a qcow2 image about at
 * most one L2 table (and under 2 GiB) at a time, a sparse VMDK about one
 * grain, a dynamic VHD about one allocated block. An image whose last
 * answer starts earlier than the other's differs there, even where the
 * flags agree, and qemu-img says so; so does this walk.
 */
import type { Disk } from '@img/block';
import { fileHoleStorages, mapExtents, type MapExtent } from './file-holes.js';
import { backingOf } from './commands/shared.js';

/** qcow2_co_block_status asks about at most INT_MAX bytes. */
const QCOW2_MAX_ANSWER = 2 ** 31 - 1;

/** The end of the answer a layer gives for a query at `pos` (its own limit; the extent's end and the image's end are applied apart). */
type AnswerEnd = (pos: number, extent: MapExtent) => number;

const nextMultiple = (pos: number, unit: number): number => (Math.floor(pos / unit) + 1) * unit;

/** Where one layer's block status answers stop, whatever the extents say. */
async function layerAnswerEnd(layer: Disk): Promise<AnswerEnd | undefined> {
  const info = await layer.info?.();
  const specific = info?.formatSpecific;
  if (layer.format === 'qcow2') {
    const cluster = info?.clusterSize ?? 65536;
    // One L2 table per answer (qcow2's L2 cache entries are a cluster by default), compressed clusters one by one.
    const table = cluster * (cluster / (specific?.['extended-l2'] === true ? 16 : 8));
    return (pos, e) => Math.min(nextMultiple(pos, table), pos + QCOW2_MAX_ANSWER, e.kind === 'data' && e.hostOffset === undefined ? nextMultiple(pos, cluster) : Infinity);
  }
  if (layer.format === 'vmdk') {
    const extents = (specific?.extents ?? []) as Array<{ 'virtual-size'?: unknown; 'cluster-size'?: unknown }>;
    // Each extent answers alone: a sparse one grain by grain, a flat one to its end.
    const spans: Array<{ start: number; end: number; grain?: number }> = [];
    let start = 0;
    for (const x of extents) {
      const size = typeof x['virtual-size'] === 'number' ? x['virtual-size'] : 0;
      spans.push({ start, end: start + size, ...(typeof x['cluster-size'] === 'number' ? { grain: x['cluster-size'] } : {}) });
      start += size;
    }
    return (pos) => {
      const span = spans.find((s) => pos >= s.start && pos < s.end);
      if (!span) return Infinity;
      return span.grain ? Math.min(span.end, span.start + nextMultiple(pos - span.start, span.grain)) : span.end;
    };
  }
  if (layer.format === 'vhd') {
    // A dynamic VHD answers for one allocated block at a time (a bitmap lies between two); free blocks run on.
    const block = typeof specific?.['block-size'] === 'number' && specific.type !== 'fixed' ? specific['block-size'] : undefined;
    return block ? (pos, e) => (e.kind === 'data' ? nextMultiple(pos, block) : Infinity) : undefined;
  }
  return undefined;
}

/**
 * One image as img_compare walks it: the status word and answer length at a
 * position, positions only going up. Extents are pulled as the walk needs
 * them (a list of them took ~100 bytes an extent: gigabytes for an image of
 * tens of millions).
 */
class StatusWalk {
  #extent: MapExtent | undefined;
  #done = false;

  private constructor(
    private readonly extents: AsyncIterator<MapExtent>,
    private readonly limits: readonly AnswerEnd[],
    private readonly size: number,
    readonly close: () => Promise<void>,
  ) {}

  static async open(disk: Disk): Promise<StatusWalk> {
    const { storages, close } = await fileHoleStorages(disk);
    try {
      const limits: AnswerEnd[] = [];
      for (let layer: Disk | undefined = disk; layer; layer = backingOf(layer)) {
        const limit = await layerAnswerEnd(layer);
        if (limit) limits.push(limit);
      }
      const extents = mapExtents(disk, storages, { offset: 0, length: disk.size });
      return new StatusWalk(extents, limits, disk.size, async () => {
        await extents.return(undefined);
        await close();
      });
    } catch (e) {
      await close();
      throw e;
    }
  }

  /** The status word at `pos`, and where that answer ends. */
  async at(pos: number): Promise<{ status: string; end: number }> {
    // The extent that holds `pos`, or the last one (extents cover the disk).
    while (!this.#done && (this.#extent === undefined || this.#extent.offset + this.#extent.length <= pos)) {
      const next = await this.extents.next();
      if (next.done) this.#done = true;
      else this.#extent = next.value;
    }
    const e = this.#extent!;
    let end = Math.min(e.offset + e.length, this.size);
    for (const limit of this.limits) end = Math.min(end, limit(pos, e));
    const present = e.kind !== 'hole';
    const zero = e.kind !== 'data' || e.inHole === true;
    const status = `${present ? 'P' : '-'}${zero ? 'Z' : '-'}${e.kind === 'data' ? 'D' : '-'}${e.hostOffset !== undefined ? 'O' : '-'}${end === this.size ? 'E' : '-'}`;
    return { status, end };
  }
}

/**
 * The first offset where two images of the same size differ in block
 * status as qemu-img compare --strict sees it, or undefined if they agree
 * everywhere. Reads metadata only.
 */
export async function firstStatusMismatch(a: Disk, b: Disk): Promise<number | undefined> {
  const size = Math.min(a.size, b.size);
  if (size === 0) return undefined;
  const wa = await StatusWalk.open(a);
  try {
    const wb = await StatusWalk.open(b);
    try {
      for (let pos = 0; pos < size;) {
        const sa = await wa.at(pos);
        const sb = await wb.at(pos);
        if (sa.status !== sb.status) return pos;
        pos = Math.max(pos + 1, Math.min(sa.end, sb.end));
      }
      return undefined;
    } finally {
      await wb.close();
    }
  } finally {
    await wa.close();
  }
}
