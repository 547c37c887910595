/**
 * The snapshot table's part of qemu-img check (qemu:
 * qcow2_check_read_snapshot_table, qcow2_check_fix_snapshot_table): every
 * entry of a version 3 image's snapshot table must hold at least 16 bytes
 * of extra data (vm_state_size_large and disk_size). An entry with less is
 * "incomplete", a corruption, and `check -r all` writes the table again
 * with every entry complete, as qemu's qcow2_write_snapshots does: the
 * known extra data filled to 24 bytes (an incomplete entry gets the
 * image's disk size and no instruction count), in newly allocated
 * clusters, flushed before one header write switches to it, the old table
 * freed after (a crash leaves the old table or a leak).
 */
import { writeU64Be } from '@img/block';
import { OVERLAP } from './overlap.js';
import type { Refcounts } from './refcount.js';
import { serializeSnapshotTable, snapshotEntrySize, type Qcow2Snapshot } from './snapshot.js';
import { writeHeader, type Qcow2Image } from './core.js';
import { checkedWrite } from './image-overlap.js';

/** Bytes of extra data a version 3 entry needs: vm_state_size_large and disk_size. */
const COMPLETE_EXTRA = 16;
/** The extra data qemu writes for every entry: vm_state_size_large, disk_size, icount. */
const KNOWN_EXTRA = 24;

/** Indexes of the snapshot table entries qemu-img check calls incomplete (version 3 only). */
export function incompleteSnapshots(s: Qcow2Image): number[] {
  if (s.header.version < 3) return [];
  const out: number[] = [];
  s.snapshots.forEach((sn, i) => {
    if (sn.extra.length < COMPLETE_EXTRA) out.push(i);
  });
  return out;
}

/** qemu-img check's line for an incomplete entry (`ERROR`, or `Repairing` in check -r all). */
export function incompleteLine(index: number, verb: 'ERROR' | 'Repairing'): string {
  return `${verb} snapshot table entry ${index} is incomplete`;
}

/**
 * qemu-img check's line for snapshots in an image with an external data
 * file (qemu: calc_refcounts), or undefined when there are none. Each is a
 * corruption no repair fixes, in qemu as here: a snapshot cannot keep the
 * data file's clusters, so neither creates one (seed 1111 case 81: a
 * snapshot table invented in the header of such an image, which check
 * called clean after check -r all while qemu-img check counted it).
 */
export function snapshotsWithDataFileLine(s: Qcow2Image): string | undefined {
  if (!s.entryGeom.dataFile || s.snapshots.length === 0) return undefined;
  return `ERROR ${s.snapshots.length} snapshots in image with data file`;
}

/** An entry with at least the 24 bytes of known extra data qemu writes (later bytes kept). */
function completed(sn: Qcow2Snapshot, diskSize: number): Qcow2Snapshot {
  if (sn.extra.length >= KNOWN_EXTRA) return sn;
  const extra = new Uint8Array(KNOWN_EXTRA);
  writeU64Be(extra, 0, sn.vmStateSize); // vm_state_size_large
  writeU64Be(extra, 8, sn.diskSize ?? diskSize); // disk_size
  if (sn.icount >= 0) writeU64Be(extra, 16, sn.icount);
  else extra.fill(0xff, 16, 24); // icount: none
  return { ...sn, extra, diskSize: sn.diskSize ?? diskSize };
}

/**
 * Writes the snapshot table again with every entry complete (see the
 * module comment); the caller has made the refcounts exact, so the
 * allocator hands out free clusters only.
 */
export async function completeSnapshotTable(s: Qcow2Image, rc: Refcounts): Promise<void> {
  const cs = s.geom.clusterSize;
  const snapshots = s.snapshots.map((sn) => completed(sn, s.header.size));
  const bytes = serializeSnapshotTable(snapshots);
  const oldOffset = s.header.snapshotsOffset;
  const oldBytes = s.snapshots.reduce((n, sn) => n + snapshotEntrySize(sn), 0);
  const at = await rc.allocate(Math.ceil(bytes.length / cs));
  s.noteFileEnd(at + Math.ceil(bytes.length / cs) * cs);
  await checkedWrite(s, at, bytes);
  await s.storage.flush();
  s.setHeader({ snapshotsOffset: at, nbSnapshots: snapshots.length });
  await writeHeader(s);
  await s.storage.flush();
  let pos = at;
  s.setSnapshots(
    snapshots.map((sn) => {
      const entry = { ...sn, entryOffset: pos };
      pos += snapshotEntrySize(sn);
      return entry;
    }),
  );
  s.overlap?.add(OVERLAP.SNAPSHOT_TABLE, at, bytes.length);
  if (oldOffset && oldBytes) {
    s.overlap?.remove(OVERLAP.SNAPSHOT_TABLE, oldOffset, oldBytes);
    await rc.release(oldOffset, oldBytes);
  }
  await s.storage.flush();
}
