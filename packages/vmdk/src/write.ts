/**
 * Writing guest bytes: flat extents in place; sparse extents grain by
 * grain under each grain's lock: an allocated plain grain in place, a new
 * grain through the allocator (whole grains only: the rest of a partly
 * written grain comes from the parent, or zeros); a streamOptimized image
 * being created through its append writer. The first write of an open
 * changes the CID, as VMware and qemu do, so children made from the old
 * content notice.
 */
import { startedAhead, unsupported } from '@img/block';
import { allocateGrain, allocateGrains } from './allocator.js';
import { CID_NO_PARENT, descriptorField, formatCid, serializeDescriptor, setDescriptorField } from './descriptor.js';
import { FORMAT, grainKey, type SparseExtent, type VmdkImage } from './image.js';
import { newCid } from './new-descriptor.js';
import { readBelow } from './read.js';
import { assertParentCurrent } from './stale-parent.js';
import { SECTOR } from './sparse-header.js';

const ZERO_CHUNK = 4 * 1024 * 1024;

/** Writes `data` (or zeros, when undefined) over guest [offset, offset + length). The caller checked the range and the mode. */
export async function writeRange(core: VmdkImage, offset: number, length: number, data: Uint8Array | undefined): Promise<void> {
  if (!core.cidUpdated && !core.appendWriter) await updateCid(core);
  const pieces = new StartedWrites();
  let done = 0;
  let index = core.extentIndexAt(offset);
  try {
    while (done < length) {
      const e = core.extents[index]!;
      const pos = offset + done;
      const n = Math.min(e.start + e.length - pos, length - done);
      const piece = data?.subarray(done, done + n);
      if (e.kind === 'zero') {
        if (piece && piece.some((b) => b !== 0)) throw unsupported(FORMAT, core.storage.name, `extent ${index + 1} is a ${e.type} extent: it holds no data`, { field: `extent ${index + 1}` });
      } else if (e.kind === 'flat') {
        pieces.add(writeFlat(e.storage, e.fileOffset + (pos - e.start), n, piece));
      } else {
        pieces.add(writeSparse(core, index, e, pos - e.start, pos, n, piece));
      }
      done += n;
      index++;
    }
  } catch (error) {
    await pieces.settle(error);
  }
  await pieces.settle();
}

/**
 * Writes started and not yet waited for. Each one's rejection is handled
 * when it starts: the loop that starts them may still be awaiting (a grain
 * table read) or stop on an error of its own, and a rejection nobody
 * handled yet ends a Node process (seed 1024 case 291 of the hostile
 * campaign: a copy-on-write read refused by a stale parent while the loop
 * looked at the next grains). {@link settle} waits for all of them and
 * throws the first error.
 */
class StartedWrites {
  #list: Promise<void>[] = [];

  add(write: Promise<void>): void {
    this.#list.push(startedAhead(write));
  }

  /** Waits for every started write; throws `error` when given, else the first rejection. */
  async settle(error?: unknown): Promise<void> {
    const results = await Promise.allSettled(this.#list);
    this.#list = [];
    if (error !== undefined) throw error;
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }
}

async function writeFlat(storage: VmdkImage['storage'], at: number, length: number, data: Uint8Array | undefined): Promise<void> {
  if (data) return storage.write(at, data);
  const zeros = new Uint8Array(Math.min(ZERO_CHUNK, length));
  for (let pos = 0; pos < length; pos += zeros.length) await storage.write(at + pos, zeros.subarray(0, Math.min(zeros.length, length - pos)));
}

/**
 * How many whole, unallocated grains from `grain` on (in one grain table)
 * `data` covers from byte `done`: those are allocated as one run.
 */
async function wholeGrainRun(core: VmdkImage, e: SparseExtent, grain: number, inGrain: number, remaining: number): Promise<number> {
  const map = e.map;
  if (inGrain !== 0 || core.appendWriter || map.compressed) return 0;
  const n = map.header.numGTEsPerGT;
  const room = Math.min(Math.floor(remaining / map.grainBytes), n - (grain % n));
  let count = 0;
  while (count < room && (await map.entry(grain + count)).kind !== 'data') count++;
  return count;
}

async function writeSparse(core: VmdkImage, index: number, e: SparseExtent, inExtent: number, guest: number, length: number, data: Uint8Array | undefined): Promise<void> {
  const map = e.map;
  const writes = new StartedWrites();
  let done = 0;
  try {
    while (done < length) {
      const at = inExtent + done;
      const grain = Math.floor(at / map.grainBytes);
      const inGrain = at - grain * map.grainBytes;
      // Whole new grains in a row: one data write and one entry write per table copy. Every other write to
      // them overlaps this one, so the call order (the facade's) keeps them apart without grain locks.
      const run = data ? await wholeGrainRun(core, e, grain, inGrain, length - done) : 0;
      if (run > 1) {
        assertParentCurrent(core, 'a new grain of this image would be stacked on');
        const bytes = data!.subarray(done, done + run * map.grainBytes);
        writes.add(core.allocation.run(() => allocateGrains(map, grain, run, bytes)).then(() => undefined));
        done += run * map.grainBytes;
        continue;
      }
      const n = Math.min(map.grainBytes - inGrain, length - done);
      const piece = data ? data.subarray(done, done + n) : undefined;
      const g = guest + done;
      const w = core.grainLocks.run(grainKey(index, grain), () => writeGrain(core, index, e, grain, inGrain, g, n, piece));
      if (data) writes.add(w);
      else await w;
      done += n;
    }
  } catch (error) {
    await writes.settle(error);
  }
  await writes.settle();
}

/** Writes n bytes (piece, or zeros) at inGrain of grain `grain`; runs under the grain's lock. */
async function writeGrain(core: VmdkImage, index: number, e: SparseExtent, grain: number, inGrain: number, guest: number, n: number, piece: Uint8Array | undefined): Promise<void> {
  const map = e.map;
  if (core.appendWriter) return core.appendWriter.write(grain, inGrain, piece ?? new Uint8Array(n));
  if (map.compressed) throw unsupported(FORMAT, e.storage.name, 'a compressed (streamOptimized) extent cannot be written in place', { field: 'flags' });
  const entry = await map.entry(grain);
  if (entry.kind === 'data') {
    await writeSectors(e.storage, entry.hostOffset, inGrain, piece ?? new Uint8Array(n));
    return;
  }
  // Zeros over a grain that already reads as zeros need no allocation.
  if (!piece && (entry.kind === 'zeroed' || !core.parent)) return;
  const grainStart = guest - inGrain;
  const grainLength = Math.min(map.grainBytes, e.start + e.length - grainStart);
  const bytes = new Uint8Array(map.grainBytes);
  if (inGrain > 0 || n < grainLength) {
    // The rest of the grain: what it reads as now (the parent's bytes: copy-on-write), zeros for a zeroed grain.
    if (entry.kind === 'unallocated') await readBelow(core, grainStart, bytes.subarray(0, grainLength));
  }
  if (piece) bytes.set(piece, inGrain);
  else bytes.fill(0, inGrain, inGrain + n);
  assertParentCurrent(core, 'a new grain of this image would be stacked on');
  await core.allocation.run(() => allocateGrain(map, grain, bytes));
  core.dropGrain(grainKey(index, grain));
}

/**
 * Writes `data` at `inGrain` of the grain at `grainAt` in whole sectors (a
 * partial sector is read, patched and written back), so that no write ever
 * leaves a sector half old and half new after a crash.
 */
async function writeSectors(storage: VmdkImage['storage'], grainAt: number, inGrain: number, data: Uint8Array): Promise<void> {
  const first = Math.floor(inGrain / SECTOR) * SECTOR;
  const end = Math.ceil((inGrain + data.length) / SECTOR) * SECTOR;
  if (first === inGrain && end === inGrain + data.length) return storage.write(grainAt + inGrain, data);
  const sectors = new Uint8Array(end - first);
  const n = await storage.readInto(grainAt + first, sectors);
  if (n < sectors.length) sectors.fill(0, n);
  sectors.set(data, inGrain - first);
  await storage.write(grainAt + first, sectors);
}

/**
 * Gives the image a new CID before its first write (VMware's rule: a
 * changed disk gets a new content id, which its children check). The
 * descriptor is rewritten in place: in its embedded area, or as the whole
 * descriptor file.
 */
export async function updateCid(core: VmdkImage): Promise<void> {
  await core.allocation.run(async () => {
    if (core.cidUpdated) return;
    setDescriptorField(core.descriptor, 'CID', formatCid(newCid()), false);
    // The rewrite below keeps only the fields the parser kept. An embedded descriptor is told from a split image's
    // empty area by the word parentCID in its text (open.ts, as qemu); if that word sat in a line the parser skips
    // ("=parentCID=...", a comment), the rewritten image would no longer open. An absent field means no parent.
    if (descriptorField(core.descriptor, 'parentCID') === undefined) setDescriptorField(core.descriptor, 'parentCID', formatCid(CID_NO_PARENT), false);
    const bytes = new TextEncoder().encode(serializeDescriptor(core.descriptor));
    const home = core.home;
    if (home.capacity !== undefined) {
      if (home.capacity === 0) {
        core.cidUpdated = true;
        return;
      }
      if (bytes.length > home.capacity) throw unsupported(FORMAT, core.storage.name, `the descriptor no longer fits its embedded area (${bytes.length} > ${home.capacity} bytes)`, { field: 'descriptorSize' });
      const area = new Uint8Array(home.capacity);
      area.set(bytes);
      await home.storage.write(home.offset, area);
    } else {
      await home.storage.write(0, bytes);
      await home.storage.truncate(bytes.length);
    }
    await home.storage.flush();
    core.cidUpdated = true;
  });
}
