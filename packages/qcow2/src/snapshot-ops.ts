/**
 * Internal snapshots (spec: "Snapshots"): create, apply (revert the active
 * layer to a snapshot) and delete, as qemu-img snapshot -c / -a / -d.
 *
 * Each operation says what changes (which L1 trees gain or lose their
 * references, the new active L1 entries, the new snapshot table) and
 * snapshot-commit.ts applies it with one header switch, so that a crash at
 * any point leaves the old state or the new one (leaks at worst) on
 * version 2 and version 3 alike, without relying on the dirty bit.
 *
 * - create: the active L1 table becomes the snapshot's, a copy becomes the
 *   active one; everything it reaches gains a reference and the active
 *   entries that become shared lose their COPIED flags.
 * - delete: the snapshot's entry goes; what only it reached is freed and
 *   active entries left with one reference get their COPIED flags back.
 * - apply: a copy of the snapshot's L1 table becomes the active one; the
 *   old active layer's references go.
 */
import { corrupt, hex, invalidArg, readOnlyError, utf8Encode, writeU64Be } from '@img/block';
import type { SnapshotInfo } from '@img/block';
import { MAX_SNAPSHOTS } from './constants.js';
import { snapshotInfo, type Qcow2Snapshot } from './snapshot.js';
import { commitChange, refuseUntrustedRefcounts } from './snapshot-commit.js';
import { readL1 } from './reader.js';
import { entryHex, l1FlagsWithoutOffset, l2TableOffsets } from './l2-walk.js';
import { OVERLAP } from './overlap.js';
import type { MappingView } from './mapping-view.js';
import type { Qcow2Image } from './core.js';
import type { Refcounts } from './refcount.js';
import { exclusiveQcow2 } from './io.js';

const FORMAT = 'qcow2';

function refcountsOf(s: Qcow2Image): Refcounts {
  const rc = s.writer?.allocator.refcounts;
  if (!rc) throw readOnlyError(FORMAT, s.file);
  return rc;
}

/** Refusals that must come before exclusiveQcow2, whose guard sets the corrupt bit on ERR_IMG_CORRUPT (seed 1107 case 65). */
function refuseBeforeExclusive(core: Qcow2Image): void {
  core.assertOpen();
  const rc = core.writer?.allocator.refcounts;
  if (!core.readOnly && rc) refuseUntrustedRefcounts(core, rc);
}

/**
 * Takes an internal snapshot of the active layer (qemu-img snapshot -c).
 * Writes started before it finish first; writes started after wait.
 */
export async function createQcow2Snapshot(core: Qcow2Image, name: string, options: SnapshotCreateOptions = {}): Promise<SnapshotInfo> {
  refuseBeforeExclusive(core);
  return exclusiveQcow2(core, async () => snapshotInfo(await createSnapshot(core, core.active, name, options), core.header.size), { refreshOverlap: true });
}

/**
 * Refuses a snapshot whose L1 table holds an entry of flags without an L2
 * table offset: as the active layer's it would make every later writable
 * open refuse the image, and qemu-img check count more corruptions through
 * the header it reads as that table (qemu-img snapshot -a stops on an
 * assertion).
 */
function refuseFlagsOnlyEntries(s: Qcow2Image, snap: Qcow2Snapshot, l1: Uint8Array): void {
  for (let i = 0; i < snap.l1Size; i++) {
    if (!l1FlagsWithoutOffset(l1, i)) continue;
    const at = snap.l1TableOffset + i * 8;
    throw corrupt(FORMAT, s.file, `refusing to apply snapshot ${snap.id}: its L1 entry ${i} at ${hex(at)} has flags (0x${entryHex(l1, i * 8)}) but no L2 table offset`, { field: 'snapshot L1 entry', offset: at });
  }
}

/**
 * Refuses a snapshot whose L1 table points at another kind of metadata as
 * an L2 table (the refcount table, a refcount block, an L1 table, the
 * snapshot table, the header, bitmaps). As the active layer's table it
 * would take guest writes, and the commit, which moves the refcount
 * structures and the active L1 table, would free a cluster the new active
 * layer still uses (qemu-img check counted more corruptions afterwards).
 */
function refuseTablesOnMetadata(s: Qcow2Image, snap: Qcow2Snapshot, l1: Uint8Array): void {
  const overlap = s.overlap;
  if (!overlap) return;
  const cs = s.geom.clusterSize;
  const tables = l2TableOffsets({ l1, offset: snap.l1TableOffset, entries: snap.l1Size }, cs, s.file, 'strict');
  for (let i = 0; i < tables.length; i++) {
    const at = tables[i]!;
    const hit = at ? overlap.find(at, cs, OVERLAP.L2) : undefined;
    if (!hit) continue;
    const entry = snap.l1TableOffset + i * 8;
    throw corrupt(FORMAT, s.file, `refusing to apply snapshot ${snap.id}: its L1 entry ${i} at ${hex(entry)} points at ${hex(at)}, inside the ${hit.name} at ${hex(hit.offset)}`, { field: 'snapshot L1 entry', offset: entry });
  }
}

/** Reverts the active layer to internal snapshot `idOrName` (qemu-img snapshot -a); the disk takes its size. */
export async function applyQcow2Snapshot(core: Qcow2Image, idOrName: string): Promise<void> {
  refuseBeforeExclusive(core);
  if (!core.readOnly) {
    // Before the exclusive section: a refusal there writes the corrupt bit (and the dirty bit may go first), header
    // writes that change what qemu-img check reads through such an entry.
    const snap = core.findSnapshot(idOrName);
    const l1 = await readL1(core.storage, snap.l1TableOffset, snap.l1Size);
    refuseFlagsOnlyEntries(core, snap, l1);
    refuseTablesOnMetadata(core, snap, l1);
  }
  // Switching snapshots changes every byte as far as dirty bitmaps know.
  return exclusiveQcow2(core, () => applySnapshot(core, core.active, idOrName), { refreshOverlap: true, changesEverything: true });
}

/** Deletes internal snapshot `idOrName` (qemu-img snapshot -d). */
export async function deleteQcow2Snapshot(core: Qcow2Image, idOrName: string): Promise<void> {
  refuseBeforeExclusive(core);
  return exclusiveQcow2(core, () => deleteSnapshot(core, core.active, idOrName), { refreshOverlap: true });
}

/** The L1 table, size and description of internal snapshot `idOrName`, for a read-only view of it. */
export async function snapshotView(core: Qcow2Image, idOrName: string): Promise<{ view: MappingView; info: SnapshotInfo }> {
  const snap = core.findSnapshot(idOrName);
  const size = snap.diskSize ?? core.header.size;
  const l1 = await readL1(core.storage, snap.l1TableOffset, snap.l1Size);
  return { view: { l1, l1Offset: snap.l1TableOffset, size }, info: snapshotInfo(snap, core.header.size) };
}

/** Options of createSnapshot. */
export interface SnapshotCreateOptions {
  /** Unique id (default: one more than the largest numeric id). */
  id?: string;
  /** Time of the snapshot (default: now). */
  date?: Date;
}

async function createSnapshot(s: Qcow2Image, view: MappingView, name: string, options: SnapshotCreateOptions = {}): Promise<Qcow2Snapshot> {
  const rc = refcountsOf(s);
  const id = validateNew(s, name, options);
  const h = s.header;
  const date = options.date ?? new Date();
  const extra = new Uint8Array(24);
  writeU64Be(extra, 8, h.size); // disk_size
  // icount (bytes 16-23) is 0, as qemu-img snapshot -c records it (a VM's savevm outside record/replay writes -1).
  const snap: Qcow2Snapshot = {
    // The active L1 table becomes the snapshot's as it is; the active layer moves to a copy.
    l1TableOffset: view.l1Offset,
    l1Size: h.l1Size,
    id,
    name,
    dateSec: Math.floor(date.getTime() / 1000),
    dateNsec: (date.getTime() % 1000) * 1_000_000,
    vmClockNsec: 0,
    vmStateSize: 0,
    diskSize: h.size,
    icount: 0,
    vmStateSize32: 0,
    extra,
    entryOffset: 0,
  };
  await commitChange(s, view, rc, {
    leaving: [],
    active: { l1: view.l1.slice(0, h.l1Size * 8), entries: h.l1Size, size: view.size },
    oldL1: 'adopt',
    snapshots: [...s.snapshots, snap],
    release: [],
    verb: 'a snapshot adds',
  });
  return s.snapshots[s.snapshots.length - 1]!;
}

function validateNew(s: Qcow2Image, name: string, options: SnapshotCreateOptions): string {
  if (s.entryGeom.dataFile) throw invalidArg(FORMAT, 'images with an external data file cannot have internal snapshots', { field: 'snapshot' });
  // As qemu-img 7.2: any name, the empty one and one already taken included (only ids are unique), up to 255 bytes:
  // qemu keeps at most 255 (it cuts longer names), so a longer one stored whole could not be deleted by qemu-img or libvirt.
  const bytes = utf8Encode(name).length;
  if (bytes > 255) throw invalidArg(FORMAT, `a snapshot name is at most 255 bytes, as qemu stores them (this one is ${bytes}; qemu-img cuts longer names short)`, { field: 'name', actual: bytes, expected: 255 });
  if (s.snapshots.length >= MAX_SNAPSHOTS) throw invalidArg(FORMAT, `at most ${MAX_SNAPSHOTS} snapshots`, { field: 'snapshot' });
  const id = options.id ?? String(s.snapshots.reduce((m, x) => Math.max(m, Number(x.id) || 0), 0) + 1);
  if (s.snapshots.some((x) => x.id === id)) throw invalidArg(FORMAT, `a snapshot with id "${id}" exists already`, { field: 'id' });
  return id;
}

async function deleteSnapshot(s: Qcow2Image, view: MappingView, idOrName: string): Promise<void> {
  const rc = refcountsOf(s);
  const snap = s.findSnapshot(idOrName);
  const cs = s.geom.clusterSize;
  const l1 = await readL1(s.storage, snap.l1TableOffset, snap.l1Size);
  await commitChange(s, view, rc, {
    // The active tree leaves and comes back (possibly with copied tables): only the snapshot's references go.
    leaving: [
      { l1: view.l1, offset: view.l1Offset, entries: s.header.l1Size },
      { l1, offset: snap.l1TableOffset, entries: snap.l1Size },
    ],
    active: { l1: view.l1.slice(0, s.header.l1Size * 8), entries: s.header.l1Size, size: view.size },
    oldL1: 'release',
    snapshots: s.snapshots.filter((x) => x !== snap),
    release: snap.l1Size ? [{ offset: snap.l1TableOffset, bytes: Math.ceil((snap.l1Size * 8) / cs) * cs }] : [],
    verb: 'deleting a snapshot leaves',
  });
}

async function applySnapshot(s: Qcow2Image, view: MappingView, idOrName: string): Promise<void> {
  const rc = refcountsOf(s);
  const snap = s.findSnapshot(idOrName);
  const h = s.header;
  // applyQcow2Snapshot refused an L1 entry of flags without an offset before the exclusive section.
  const snapL1 = await readL1(s.storage, snap.l1TableOffset, snap.l1Size);
  const size = snap.diskSize ?? h.size;
  const entries = Math.max(snap.l1Size, Math.ceil(size / s.geom.l2Coverage));
  const l1 = new Uint8Array(entries * 8);
  l1.set(snapL1);
  await commitChange(s, view, rc, {
    leaving: [{ l1: view.l1, offset: view.l1Offset, entries: h.l1Size }],
    active: { l1, entries, size },
    oldL1: 'release',
    release: [],
    verb: 'applying a snapshot adds',
  });
}
