/**
 * checkVmdk: a consistency check of every sparse extent from its metadata,
 * as `qemu-img check` does for VMDK and a little more: each grain table
 * lies in the file and clear of the header, descriptor and directories;
 * each grain table entry points into the file, clear of that metadata, and
 * no two entries share a grain; the redundant directory's tables agree
 * with the primary ones. Problems are typed; nothing is repaired.
 *
 * qemu-img 7.2's own VMDK check (vmdk_co_check) is replayed beside it, for
 * its verdict: it walks the disk grain by grain in guest order and stops at
 * the first grain whose cluster offset lies at or after the end of its
 * file ("ERROR: cluster offset for sector N points after EOF") or that it
 * cannot look up (a seSparse entry of no known type: "ERROR: could not get
 * cluster_offset for sector N"), and then the check *fails* (qemu-img
 * prints "Check failed: Invalid argument" or "...: Operation not
 * permitted" and exits 1), rather than counting corruptions (exit 2). Such
 * a stop is a check error here too, with qemu's line first in `messages`
 * and its reason in `checkFailed`; what img finds beyond it (grains
 * overlapping metadata or each other, a grain table past the end of the
 * file, which qemu reads as zeros) stays a counted corruption.
 */
import { ImageError, corrupt, hex, lentStorage, wrongFormat, type CheckResult, type Storage } from '@img/block';
import { decodeDescriptorBytes, looksLikeDescriptor, MAX_DESCRIPTOR_BYTES, parseDescriptor } from './descriptor.js';
import { GTE_UNALLOCATED, GTE_ZEROED, parseEntries, ENTRY_BYTES } from './grain-table.js';
import { FORMAT, type VmdkImage } from './image.js';
import { openVmdkImage, type VmdkOpenOptions } from './open.js';
import { hasSparseMagic, SECTOR } from './sparse-header.js';
import type { GrainMap } from './grain-map.js';
import { parseSeSparseEntries, SE_INVALID, SE_ZERO } from './sesparse-header.js';
import { LayoutSpans } from './layout-spans.js';

/** What a check found wrong, in one word. */
export type VmdkProblemCode = 'entry-invalid' | 'table-out-of-bounds' | 'table-overlap' | 'table-shared' | 'grain-out-of-bounds' | 'grain-overlap' | 'grain-shared' | 'redundant-mismatch' | 'open-failed' | 'check-failed';

/** One problem a check found. */
export interface VmdkProblem {
  code: VmdkProblemCode;
  /** The file it is in. */
  file: string;
  /** Byte offset of the bad entry or structure. */
  offset?: number;
  message: string;
}

/** The verdict of checkVmdk: qemu-img check's counters plus the typed problems. */
export interface VmdkCheckResult extends CheckResult {
  /** The first 1000 problems found (`corruptions` counts them all; `messages` says how many more). */
  problems: VmdkProblem[];
  /** Grains allocated in all sparse extents, and grains they could hold (qemu-img check prints neither for VMDK). */
  allocatedGrains: number;
  totalGrains: number;
  /** End of the last grain or table of the image's own file. */
  dataEnd?: number;
  /**
   * Set where qemu-img check's VMDK check would stop and fail (exit 1)
   * instead of counting: the reason it prints after "Check failed: "
   * ("Invalid argument" for a cluster offset after the end of the file,
   * "Operation not permitted" for an entry it cannot look up). A
   * `check-failed` problem holds qemu's line; `checkErrors` is 1.
   */
  checkFailed?: string;
}

/** Where qemu-img 7.2's vmdk_co_check stops, and why. */
interface QemuStop {
  /** The guest sector it was looking at. */
  sector: number;
  /** `eof`: a cluster offset at or past the end of the extent's file (-EINVAL); `lookup`: get_cluster_offset failed (VMDK_ERROR, -1). */
  kind: 'eof' | 'lookup';
  file: string;
}

/** Grain tables a replay keeps read (qemu keeps 16). */
const REPLAY_TABLES = 64;

/**
 * Replays qemu-img 7.2's vmdk_co_check over the open image: guest sector
 * by sector a grain at a time, each sparse extent's grain directory, its
 * grain table read where the directory says (bytes past the end of the
 * file read as zeros, as qemu reads them; a table over other metadata is
 * read all the same), and the entry's cluster offset compared with the
 * length of the extent's file. Answers the first stop, or undefined when
 * qemu would find the image clean. Flat extents cannot stop it once the
 * image opened (openVmdk refuses a flat extent its file does not hold).
 */
async function qemuReplay(core: VmdkImage): Promise<QemuStop | undefined> {
  for (const e of core.extents) {
    if (e.kind !== 'sparse') continue;
    const map = e.map;
    const file = map.storage.name;
    const sesparse = map.layout === 'sesparse';
    const cs = map.header.grainSize;
    const n = map.header.numGTEsPerGT;
    const tableSectors = cs * n;
    const start = e.start / SECTOR;
    const sectors = e.length / SECTOR;
    const tables = new Map<number, Uint32Array | Float64Array>();
    for (let off = 0; off < sectors;) {
      const l1 = Math.floor(off / tableSectors);
      if (l1 >= map.gd.length) return { sector: start + off, kind: 'lookup', file };
      const gde = map.gd[l1]!;
      if (gde === GTE_UNALLOCATED) {
        // Every grain of the table is unallocated: to the first grain step past it.
        off += Math.ceil(((l1 + 1) * tableSectors - off) / cs) * cs;
        continue;
      }
      let table = tables.get(gde);
      if (!table) {
        const bytes = new Uint8Array(n * map.entryBytes);
        if (gde * SECTOR < map.fileSize) bytes.set(await map.storage.read(gde * SECTOR, bytes.length));
        table = sesparse ? parseSeSparseEntries(bytes, n) : parseEntries(bytes, n);
        if (tables.size >= REPLAY_TABLES) tables.clear();
        tables.set(gde, table);
      }
      const gte = table[Math.floor(off / cs) % n]!;
      let at: number | undefined;
      if (sesparse) {
        if (gte === SE_INVALID) return { sector: start + off, kind: 'lookup', file };
        if (gte !== GTE_UNALLOCATED && gte !== SE_ZERO) at = (map.grainsSector + (gte - 1) * cs) * SECTOR;
      } else if (gte !== GTE_UNALLOCATED && !(gte === GTE_ZEROED && map.zeroedGrains)) at = gte * SECTOR;
      if (at !== undefined && at >= map.fileSize) return { sector: start + off, kind: 'eof', file };
      off += cs;
    }
  }
  return undefined;
}

/** Checks one sparse extent's tables; returns its allocated grain count and end of data. */
/**
 * The problems a check keeps in full. Past this many it only counts them: a hostile image names millions (a
 * 32 MiB file whose 4 M grain table entries all point past its end made `img check` keep 4 M problems, 3.5 GB).
 */
const MAX_VMDK_PROBLEMS = 1000;

/** Where a check puts its problems: the first MAX_VMDK_PROBLEMS kept, all counted. */
class ProblemSink {
  readonly kept: VmdkProblem[] = [];
  /** Every problem added, and those of them that are no corruption (a redundant table that lags the primary). */
  total = 0;
  lagging = 0;

  add(p: VmdkProblem): void {
    this.total++;
    if (p.code === 'redundant-mismatch') this.lagging++;
    if (this.kept.length < MAX_VMDK_PROBLEMS) this.kept.push(p);
  }
}

async function checkMap(map: GrainMap, problems: ProblemSink): Promise<{ allocated: number; end: number }> {
  const file = map.storage.name;
  const n = map.header.numGTEsPerGT;
  const tables = new Set<number>();
  let allocated = 0;
  let end = map.fileSize;
  // Grains and tables by their start: a grain sharing sectors with a table or another grain (two entries naming one grain among them).
  const spans = new LayoutSpans(map.grainBytes, map.tableBytes);
  for (let t = 0; t < map.gd.length; t++) {
    const sector = map.gd[t]!;
    if (sector === GTE_UNALLOCATED) continue;
    const at = sector * SECTOR;
    if (at + map.tableBytes > map.fileSize) {
      problems.add({ code: 'table-out-of-bounds', file, offset: map.gdOffset + t * map.entryBytes, message: `grain directory entry ${t} points to ${hex(at)}, past the end of the file` });
      continue;
    }
    const hit = map.overlap(at, at + map.tableBytes);
    if (hit && hit.what !== 'grain tables') {
      problems.add({ code: 'table-overlap', file, offset: map.gdOffset + t * map.entryBytes, message: `grain table ${t} at ${hex(at)} overlaps the ${hit.what}` });
      continue;
    }
    if (tables.has(sector)) {
      problems.add({ code: 'table-shared', file, offset: map.gdOffset + t * map.entryBytes, message: `grain table ${t} at ${hex(at)} is also another directory entry's table` });
      continue;
    }
    tables.add(sector);
    spans.addTable(at, false);
    const sesparse = map.layout === 'sesparse';
    const table = sesparse ? parseSeSparseEntries(await map.storage.read(at, n * 8), n) : parseEntries(await map.storage.read(at, n * ENTRY_BYTES), n);
    if (map.redundant && map.rgd && map.rgd[t]) {
      const rat = map.rgd[t]! * SECTOR;
      const rhit = map.overlap(rat, rat + map.tableBytes);
      if (rhit) problems.add({ code: 'table-overlap', file, offset: map.rgdOffset + t * map.entryBytes, message: `redundant grain table ${t} at ${hex(rat)} overlaps the ${rhit.what}` });
      else if (rat + map.tableBytes <= map.fileSize) {
        const copy = parseEntries(await map.storage.read(rat, n * ENTRY_BYTES), n);
        const differ = table.findIndex((v, i) => v !== copy[i]);
        if (differ >= 0) problems.add({ code: 'redundant-mismatch', file, offset: rat + differ * ENTRY_BYTES, message: `redundant grain table ${t} differs from the primary at entry ${differ}` });
        spans.addTable(rat, true);
      } else problems.add({ code: 'table-out-of-bounds', file, offset: map.rgdOffset + t * map.entryBytes, message: `redundant grain directory entry ${t} points past the end of the file` });
    }
    for (let i = 0; i < n; i++) {
      const gte = table[i]!;
      if (gte === GTE_UNALLOCATED || (sesparse ? gte === SE_ZERO : gte === GTE_ZEROED && map.zeroedGrains)) continue;
      const grain = t * n + i;
      const entryAt = at + i * map.entryBytes;
      if (sesparse && gte === SE_INVALID) {
        problems.add({ code: 'entry-invalid', file, offset: entryAt, message: `grain table entry for grain ${grain} has an unknown type` });
        continue;
      }
      const g = sesparse ? (map.grainsSector + (gte - 1) * map.header.grainSize) * SECTOR : gte * SECTOR;
      const span = map.compressed ? SECTOR : map.grainBytes;
      if (g + span > map.fileSize) {
        problems.add({ code: 'grain-out-of-bounds', file, offset: entryAt, message: `grain ${grain} at ${hex(g)} lies past the end of the file (${hex(map.fileSize)})` });
        continue;
      }
      const hit = map.overlap(g, g + span);
      if (hit) {
        problems.add({ code: 'grain-overlap', file, offset: entryAt, message: `grain ${grain} at ${hex(g)} overlaps the ${hit.what}` });
        continue;
      }
      if (!map.compressed) spans.addGrain(g);
      allocated++;
      end = Math.max(end, g + span);
    }
  }
  for (const o of spans.overlaps(100)) problems.add({ code: o.shared ? 'grain-shared' : o.what === 'grain' ? 'grain-overlap' : 'table-overlap', file, offset: o.offset, message: o.message });
  return { allocated, end };
}

/**
 * Checks the VMDK in `storage` (extent files through the resolver in
 * `options`, each sparse extent as a monolithicSparse file is; without a
 * resolver, a descriptor file is checked alone). Never throws for a
 * damaged image: what keeps it from opening (a missing extent file, a
 * descriptor with no extent) is an `open-failed` problem counted in
 * `checkErrors`, as qemu-img check exits 1 for an image it cannot open.
 * `storage` is left open (the extent files the check opened are closed):
 * the caller closes it.
 *
 * @example
 * ```ts
 * const storage = await FileStorage.open('a.vmdk');
 * const r = await checkVmdk(storage, { resolver: fileResolver });
 * await storage.close();
 * if (r.corruptions) console.log(r.messages.join('\n'));
 * ```
 */
export async function checkVmdk(storage: Storage, options: VmdkOpenOptions = {}): Promise<VmdkCheckResult> {
  const sink = new ProblemSink();
  const problems = sink.kept;
  const result: VmdkCheckResult = { format: FORMAT, corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, messages: [], problems, allocatedGrains: 0, totalGrains: 0 };
  let core: VmdkImage;
  const lent = lentStorage(storage);
  try {
    // A descriptor file checked without a resolver: only the descriptor itself is this file (as qemu-img check reads it).
    const head = await storage.read(0, Math.min(await storage.size(), SECTOR));
    if (!options.resolver && !hasSparseMagic(head)) {
      const text = decodeDescriptorBytes(await storage.read(0, Math.min(await storage.size(), MAX_DESCRIPTOR_BYTES)));
      if (!looksLikeDescriptor(text)) throw wrongFormat(FORMAT, storage.name);
      const descriptor = parseDescriptor(text, storage.name);
      if (descriptor.extents.length === 0) throw corrupt(FORMAT, storage.name, 'the descriptor lists no extent', { field: 'extents' });
      return result;
    }
    core = await openVmdkImage(lent, { ...options, readOnly: true, noBacking: true });
  } catch (e) {
    if (!ImageError.isInstance(e)) throw e;
    // An image that does not open (a missing extent file, a descriptor with no extent, a header out of bounds) could not
    // be checked at all: a check error, as qemu-img check's exit status 1 ("Could not open"), not a counted corruption.
    problems.push({ code: 'open-failed', file: storage.name, message: e.message });
    result.checkErrors = 1;
    result.messages.push(e.message);
    return result;
  }
  let stop: QemuStop | undefined;
  try {
    let allocated = 0;
    let total = 0;
    for (const map of core.grainMaps()) {
      const r = await checkMap(map, sink);
      allocated += r.allocated;
      total += Math.ceil(map.capacityBytes / map.grainBytes);
      if (map.storage === lent) result.dataEnd = r.end;
    }
    result.allocatedGrains = allocated;
    result.totalGrains = total;
    stop = await qemuReplay(core);
  } finally {
    await core.close();
  }
  // A redundant table that lags the primary is what a crash between the two entry writes leaves: the primary decides, nothing is lost.
  result.corruptions = sink.total - sink.lagging;
  result.messages = problems.map((p) => `${p.file}: ${p.message}`);
  if (sink.total > problems.length) result.messages.push(`... and ${sink.total - problems.length} more problems of the same kinds (the first ${problems.length} are listed)`);
  if (stop) {
    // qemu-img's line as it prints it (no file name), before img's own account of the same image.
    const message = stop.kind === 'eof' ? `ERROR: cluster offset for sector ${stop.sector} points after EOF` : `ERROR: could not get cluster_offset for sector ${stop.sector}`;
    problems.unshift({ code: 'check-failed', file: stop.file, message });
    result.messages.unshift(message);
    result.checkErrors = 1;
    result.checkFailed = stop.kind === 'eof' ? 'Invalid argument' : 'Operation not permitted';
  }
  return result;
}
