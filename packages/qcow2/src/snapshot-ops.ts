/**
 * Internal snapshots (spec: "Snapshots"): create, apply (revert the active
 * layer to a snapshot) and delete, as qemu-img snapshot -c / -a / -d.
 *
 * Creating raises the refcount of every L2 table and cluster the active L1
 * reaches, then stores a copy of the L1 table; deleting lowers them again.
 * COPIED flags of the active tables are brought in line with the new
 * refcounts afterwards (they mean "refcount is exactly one"; in a table
 * shared with a snapshot only the flags change, as qemu does).
 */
import { ImageError, ERROR_CODES, readU32Be, writeU32Be, invalidArg, utf8Encode, unsupported, hex } from '@img/block';
import { l1EntryOffset, decodeL2Entry } from './mapping.js';
import { ENTRY_COPIED_HI, INCOMPAT_DIRTY, MAX_SNAPSHOTS } from './constants.js';
import { serializeSnapshotTable, snapshotEntrySize, type Qcow2Snapshot } from './snapshot.js';
import { loadL2, type MappingView } from './reader.js';
import { writeHeader, type Qcow2State } from './state.js';
import type { Refcounts } from './refcount.js';

const FORMAT = 'qcow2';

function refcountsOf(s: Qcow2State): Refcounts {
  const rc = s.writer?.refcounts;
  if (!rc) throw new ImageError(ERROR_CODES.READ_ONLY, `${FORMAT}: ${s.file}: image is open read-only`, { data: { format: FORMAT, file: s.file } });
  return rc;
}

async function flush(s: Qcow2State): Promise<void> {
  await s.dataFile?.flush();
  await s.storage.flush();
}

/** Allocates clusters and grows the file over them (as the writer does). */
async function allocate(s: Qcow2State, count: number): Promise<number> {
  const rc = refcountsOf(s);
  const offset = await rc.allocate(count);
  const end = rc.endCluster * s.geom.clusterSize;
  if (end > s.fileSize) {
    await s.storage.truncate(end);
    s.fileSize = end;
  }
  return offset;
}

/**
 * Calls `visit` with every run of host clusters an L1 table references:
 * each cluster its L2 entries map (a compressed entry's whole span) and
 * each L2 table, in table order.
 */
async function forEachReference(
  s: Qcow2State,
  l1: Uint8Array,
  l1Offset: number,
  l1Size: number,
  visit: (first: number, count: number) => unknown,
): Promise<void> {
  const cs = s.geom.clusterSize;
  for (let i = 0; i < l1Size; i++) {
    const l2Offset = l1EntryOffset(l1, i, cs, s.file, l1Offset);
    if (!l2Offset) continue;
    const table = await loadL2(s, l2Offset, i);
    for (let j = 0; j < s.geom.l2Entries; j++) {
      const e = decodeL2Entry(table, j, s.entryGeom, s.file, l2Offset);
      if (e.type === 'compressed') await visit(Math.floor(e.host / cs), Math.floor((e.host + e.size - 1) / cs) - Math.floor(e.host / cs) + 1);
      else if ((e.type === 'normal' || e.type === 'zero' || e.type === 'subclusters') && e.host !== undefined && !s.entryGeom.dataFile) await visit(e.host / cs, 1);
    }
    await visit(l2Offset / cs, 1);
  }
}

/** Adds `delta` to the refcount of every L2 table and cluster an L1 table reaches. */
async function adjustTree(s: Qcow2State, l1: Uint8Array, l1Offset: number, l1Size: number, delta: 1 | -1): Promise<void> {
  const rc = refcountsOf(s);
  const cs = s.geom.clusterSize;
  // Drops go through the writer, which holds them back while reads are in flight.
  await forEachReference(s, l1, l1Offset, l1Size, (first, count) => (delta > 0 ? rc.add(first, count, 1) : s.writer!.release(first * cs, count * cs)));
}

/**
 * Refuses (before anything changes) a snapshot operation whose extra
 * references would overflow a refcount: narrow refcounts (refcount_bits
 * 1 to 16) count few references, and compressed clusters packed into one
 * host cluster already use several. qemu fails such an operation too.
 */
async function checkIncrement(s: Qcow2State, l1: Uint8Array, l1Offset: number, l1Size: number): Promise<void> {
  const rc = refcountsOf(s);
  if (rc.bits > 16) return;
  const cs = s.geom.clusterSize;
  const adds = new Map<number, number>();
  await forEachReference(s, l1, l1Offset, l1Size, (first, count) => {
    for (let c = first; c < first + count; c++) adds.set(c, (adds.get(c) ?? 0) + 1);
  });
  for (const [c, n] of adds) {
    const now = await rc.get(c);
    if (now + n > rc.maxRefcount) {
      throw unsupported(FORMAT, s.file, `refcount_bits ${rc.bits} cannot count the references a snapshot adds to cluster ${c} (${hex(c * cs)}): ${now} + ${n} > ${rc.maxRefcount}; use wider refcounts (qemu-img amend -o refcount_bits=16)`, {
        field: 'refcount_bits',
      });
    }
  }
}

/** Sets the COPIED flag of every active L1/L2 entry to "refcount is exactly one". */
async function fixCopied(s: Qcow2State, view: MappingView): Promise<void> {
  const rc = refcountsOf(s);
  const cs = s.geom.clusterSize;
  const es = s.geom.l2EntrySize;
  for (let i = 0; i < s.header.l1Size; i++) {
    const l2Offset = l1EntryOffset(view.l1, i, cs, s.file, view.l1Offset);
    if (!l2Offset) continue;
    const tableRc = await rc.get(l2Offset / cs);
    const hi = readU32Be(view.l1, i * 8);
    const want = tableRc === 1 ? (hi | ENTRY_COPIED_HI) >>> 0 : (hi & ~ENTRY_COPIED_HI) >>> 0;
    if (want !== hi) {
      writeU32Be(view.l1, i * 8, want);
      await s.storage.write(view.l1Offset + i * 8, view.l1.subarray(i * 8, i * 8 + 4));
    }
    // qemu-img check looks at every active table, shared ones too.
    const table = await loadL2(s, l2Offset, i);
    let changed = false;
    for (let j = 0; j < s.geom.l2Entries; j++) {
      const e = decodeL2Entry(table, j, s.entryGeom, s.file, l2Offset);
      if (!((e.type === 'normal' || e.type === 'zero' || e.type === 'subclusters') && e.host !== undefined)) continue;
      const own = s.entryGeom.dataFile || (await rc.get(e.host / cs)) === 1;
      const eh = readU32Be(table, j * es);
      const next = own ? (eh | ENTRY_COPIED_HI) >>> 0 : (eh & ~ENTRY_COPIED_HI) >>> 0;
      if (next !== eh) {
        writeU32Be(table, j * es, next);
        changed = true;
      }
    }
    if (changed) {
      s.cache.put(l2Offset, table);
      await s.storage.write(l2Offset, table);
    }
  }
}

/** Writes the snapshot table to new clusters, points the header at it and frees the old one. */
async function storeTable(s: Qcow2State, snapshots: Qcow2Snapshot[]): Promise<void> {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const bytes = serializeSnapshotTable(snapshots);
  const oldOffset = h.snapshotsOffset;
  const oldBytes = s.snapshots.reduce((n, sn) => n + snapshotEntrySize(sn), 0);
  let offset = 0;
  if (bytes.length) {
    offset = await allocate(s, Math.ceil(bytes.length / cs));
    await s.storage.write(offset, bytes);
    await flush(s);
  }
  h.snapshotsOffset = offset;
  h.nbSnapshots = snapshots.length;
  await writeHeader(s);
  await flush(s);
  let at = offset;
  s.snapshots = snapshots.map((sn) => {
    const placed = { ...sn, entryOffset: at };
    at += snapshotEntrySize(sn);
    return placed;
  });
  if (oldBytes && oldOffset) await s.writer!.release(oldOffset, oldBytes);
}

/**
 * Runs a snapshot operation with the dirty bit set (version 3): its
 * refcount changes and COPIED flag updates cannot all reach the disk at
 * once, so a crash in between leaves a dirty image, which the next
 * read-write open repairs (as qemu does), instead of one that looks
 * corrupt. Version 2 has no dirty bit: a crash there may need
 * `checkQcow2(storage, { repair: 'all' })`, as with qemu.
 */
async function dirtyDuring<T>(s: Qcow2State, fn: () => Promise<T>): Promise<T> {
  const bit = 1n << BigInt(INCOMPAT_DIRTY);
  if (s.header.version < 3 || (s.header.incompatibleFeatures & bit) !== 0n) return fn();
  s.header.incompatibleFeatures |= bit;
  await writeHeader(s);
  await flush(s);
  const result = await fn();
  await flush(s);
  s.header.incompatibleFeatures &= ~bit;
  await writeHeader(s);
  await flush(s);
  return result;
}

function find(s: Qcow2State, idOrName: string): Qcow2Snapshot {
  const snap = s.snapshots.find((x) => x.id === idOrName) ?? s.snapshots.find((x) => x.name === idOrName);
  if (!snap) throw new ImageError(ERROR_CODES.NOT_FOUND, `${FORMAT}: ${s.file}: no snapshot with id or name "${idOrName}"`, { data: { format: FORMAT, file: s.file, field: 'snapshot' } });
  return snap;
}

/** Options of createSnapshot. */
export interface SnapshotCreateOptions {
  /** Unique id (default: one more than the largest numeric id). */
  id?: string;
  /** Time of the snapshot (default: now). */
  date?: Date;
}

/** Takes an internal snapshot of the active layer (qemu-img snapshot -c). */
export async function createSnapshot(s: Qcow2State, view: MappingView, name: string, options: SnapshotCreateOptions = {}): Promise<Qcow2Snapshot> {
  validateNew(s, name, options);
  await checkIncrement(s, view.l1, view.l1Offset, s.header.l1Size);
  return dirtyDuring(s, () => createSnapshotNow(s, view, name, options));
}

function validateNew(s: Qcow2State, name: string, options: SnapshotCreateOptions): void {
  refcountsOf(s);
  if (s.entryGeom.dataFile) throw invalidArg(FORMAT, 'images with an external data file cannot have internal snapshots', { field: 'snapshot' });
  if (!name || utf8Encode(name).length > 0xffff) throw invalidArg(FORMAT, 'a snapshot needs a name of 1 to 65535 bytes', { field: 'name' });
  if (s.snapshots.length >= MAX_SNAPSHOTS) throw invalidArg(FORMAT, `at most ${MAX_SNAPSHOTS} snapshots`, { field: 'snapshot' });
  if (s.snapshots.some((x) => x.name === name)) throw invalidArg(FORMAT, `a snapshot named "${name}" exists already`, { field: 'name' });
  const id = options.id ?? String(s.snapshots.reduce((m, x) => Math.max(m, Number(x.id) || 0), 0) + 1);
  if (s.snapshots.some((x) => x.id === id)) throw invalidArg(FORMAT, `a snapshot with id "${id}" exists already`, { field: 'id' });
}

async function createSnapshotNow(s: Qcow2State, view: MappingView, name: string, options: SnapshotCreateOptions): Promise<Qcow2Snapshot> {
  const id = options.id ?? String(s.snapshots.reduce((m, x) => Math.max(m, Number(x.id) || 0), 0) + 1);
  const cs = s.geom.clusterSize;
  const h = s.header;
  await flush(s);
  // 1. Everything the active layer reaches gains the snapshot's reference.
  await adjustTree(s, view.l1, view.l1Offset, h.l1Size, 1);
  await flush(s);
  // 2. The snapshot's own copy of the L1 table.
  const l1Bytes = h.l1Size * 8;
  const l1Offset = l1Bytes ? await allocate(s, Math.ceil(l1Bytes / cs)) : 0;
  if (l1Bytes) {
    const copy = view.l1.slice(0, l1Bytes);
    for (let i = 0; i < h.l1Size; i++) writeU32Be(copy, i * 8, readU32Be(copy, i * 8) & ~ENTRY_COPIED_HI);
    await s.storage.write(l1Offset, copy);
  }
  await flush(s);
  // 3. Active entries are now shared: clear their COPIED flags.
  await fixCopied(s, view);
  const date = options.date ?? new Date();
  const extra = new Uint8Array(24);
  writeU32Be(extra, 8, Math.floor(h.size / 0x1_0000_0000)); // disk_size
  writeU32Be(extra, 12, h.size >>> 0);
  writeU32Be(extra, 16, 0xffffffff); // icount: unknown
  writeU32Be(extra, 20, 0xffffffff);
  const snap: Qcow2Snapshot = {
    l1TableOffset: l1Offset,
    l1Size: h.l1Size,
    id,
    name,
    dateSec: Math.floor(date.getTime() / 1000),
    dateNsec: (date.getTime() % 1000) * 1_000_000,
    vmClockNsec: 0,
    vmStateSize: 0,
    diskSize: h.size,
    icount: -1,
    vmStateSize32: 0,
    extra,
    entryOffset: 0,
  };
  await storeTable(s, [...s.snapshots, snap]);
  return s.snapshots[s.snapshots.length - 1]!;
}

/** Deletes an internal snapshot (qemu-img snapshot -d). */
export async function deleteSnapshot(s: Qcow2State, view: MappingView, idOrName: string): Promise<void> {
  refcountsOf(s);
  const snap = find(s, idOrName);
  await dirtyDuring(s, () => deleteSnapshotNow(s, view, snap));
}

async function deleteSnapshotNow(s: Qcow2State, view: MappingView, snap: Qcow2Snapshot): Promise<void> {
  await flush(s);
  // The table stops naming it first; its references go after.
  await storeTable(s, s.snapshots.filter((x) => x !== snap));
  const l1 = new Uint8Array(snap.l1Size * 8);
  await s.storage.readInto(snap.l1TableOffset, l1);
  await dropTree(s, view, l1, snap.l1TableOffset, snap.l1Size);
}

/**
 * Lowers the references of an L1 table's tree and frees the table, then
 * forgets cached copies (freed clusters may be reused) and fixes the active
 * layer's COPIED flags, with barriers between.
 */
async function dropTree(s: Qcow2State, view: MappingView, l1: Uint8Array, offset: number, size: number): Promise<void> {
  const cs = s.geom.clusterSize;
  await adjustTree(s, l1, offset, size, -1);
  if (size) await s.writer!.release(offset, Math.ceil((size * 8) / cs) * cs);
  s.cache.clear();
  s.decompressed.clear();
  await s.writer!.drainReleases();
  await flush(s);
  await fixCopied(s, view);
  await flush(s);
}

/** Reverts the active layer to a snapshot (qemu-img snapshot -a); the disk takes the snapshot's size. */
export async function applySnapshot(s: Qcow2State, view: MappingView, idOrName: string): Promise<void> {
  refcountsOf(s);
  const snap = find(s, idOrName);
  const snapL1 = new Uint8Array(snap.l1Size * 8);
  await s.storage.readInto(snap.l1TableOffset, snapL1);
  await checkIncrement(s, snapL1, snap.l1TableOffset, snap.l1Size);
  await dirtyDuring(s, () => applySnapshotNow(s, view, snap));
}

async function applySnapshotNow(s: Qcow2State, view: MappingView, snap: Qcow2Snapshot): Promise<void> {
  const cs = s.geom.clusterSize;
  const h = s.header;
  const snapL1 = new Uint8Array(snap.l1Size * 8);
  await s.storage.readInto(snap.l1TableOffset, snapL1);
  const size = snap.diskSize ?? h.size;
  const entries = Math.max(snap.l1Size, Math.ceil(size / s.geom.l2Coverage));
  await flush(s);
  // 1. What the snapshot reaches gains the active layer's reference.
  await adjustTree(s, snapL1, snap.l1TableOffset, snap.l1Size, 1);
  await flush(s);
  // 2. A new active L1 table, a copy of the snapshot's.
  const newL1 = new Uint8Array(Math.max(1, Math.ceil((entries * 8) / cs)) * cs);
  newL1.set(snapL1);
  const newOffset = await allocate(s, newL1.length / cs);
  await s.storage.write(newOffset, newL1);
  await flush(s);
  const old = { l1: view.l1, offset: view.l1Offset, size: h.l1Size };
  h.l1TableOffset = newOffset;
  h.l1Size = entries;
  h.size = size;
  view.l1 = newL1.subarray(0, entries * 8);
  view.l1Offset = newOffset;
  view.size = size;
  await writeHeader(s);
  await flush(s);
  // 3. The old active layer's references go.
  await dropTree(s, view, old.l1, old.offset, old.size);
}
