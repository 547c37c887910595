/**
 * The snapshot table (spec: "Snapshots"): variable-length entries with an
 * L1 table each. Entries keep their extra data byte for byte.
 */
import { readU16Be, readU32Be, readU64Be, writeU16Be, writeU32Be, writeU64Be, corrupt, hex, utf8Decode, utf8Encode } from '@img/block';
import type { Storage, SnapshotInfo } from '@img/block';
import { MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA_DATA, MAX_L1_TABLE_BYTES } from './constants.js';

const FORMAT = 'qcow2';
/** Fixed part of a snapshot table entry. */
export const SNAPSHOT_ENTRY_FIXED_SIZE = 40;

/** One snapshot table entry. */
export interface Qcow2Snapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  /** VM state size: the 64-bit extra field when present, else the 32-bit one. */
  vmStateSize: number;
  /** Virtual disk size from the extra data, or undefined if the entry is too old to say. */
  diskSize: number | undefined;
  /** Guest instruction count (extra data bytes 56-63), -1 when absent. */
  icount: number;
  /** The 32-bit vm_state_size field as stored. */
  vmStateSize32: number;
  /** Extra data as stored (vm_state_size_large, disk_size, icount, future fields). */
  extra: Uint8Array;
  /** Where the entry starts in the file. */
  entryOffset: number;
}

/** Size of an entry once serialized (padded to 8). */
export function snapshotEntrySize(s: Pick<Qcow2Snapshot, 'id' | 'name' | 'extra'>): number {
  const raw = SNAPSHOT_ENTRY_FIXED_SIZE + s.extra.length + utf8Encode(s.id).length + utf8Encode(s.name).length;
  return Math.ceil(raw / 8) * 8;
}

/**
 * Reads `count` entries at `offset`. Every length is checked against the
 * file size and qemu's bounds before it is read.
 */
export async function readSnapshotTable(storage: Storage, offset: number, count: number, fileSize: number, clusterSize: number, file?: string): Promise<Qcow2Snapshot[]> {
  if (count > MAX_SNAPSHOTS) {
    throw corrupt(FORMAT, file, `nb_snapshots ${count} at 0x3c exceeds ${MAX_SNAPSHOTS}`, { field: 'nb_snapshots', offset: 60, actual: count });
  }
  if (count === 0) return [];
  if (offset % clusterSize !== 0 || offset < clusterSize || offset >= fileSize) {
    throw corrupt(FORMAT, file, `snapshot table at ${hex(offset)} is unaligned or lies past the end of the file`, { field: 'snapshots_offset', offset: 64, actual: offset });
  }
  const out: Qcow2Snapshot[] = [];
  let at = offset;
  // Read in chunks; a chunk is refilled whenever an entry would run past it.
  let chunk: Uint8Array = new Uint8Array(0);
  let chunkAt = at;
  const need = async (pos: number, length: number, what: string): Promise<Uint8Array> => {
    if (pos + length > fileSize) {
      throw corrupt(FORMAT, file, `snapshot table entry at ${hex(pos)} (${what}) lies past the end of the file`, { field: 'snapshot table', offset: pos });
    }
    if (pos < chunkAt || pos + length > chunkAt + chunk.length) {
      chunkAt = pos;
      chunk = await storage.read(pos, Math.min(Math.max(length, 64 * 1024), fileSize - pos));
    }
    return chunk.subarray(pos - chunkAt, pos - chunkAt + length);
  };
  for (let i = 0; i < count; i++) {
    const fixed = await need(at, SNAPSHOT_ENTRY_FIXED_SIZE, 'header');
    const l1TableOffset = readU64Be(fixed, 0, { field: 'snapshot l1_table_offset', format: FORMAT, file }); // 0
    const l1Size = readU32Be(fixed, 8); // 8
    const idLen = readU16Be(fixed, 12); // 12
    const nameLen = readU16Be(fixed, 14); // 14
    const dateSec = readU32Be(fixed, 16); // 16
    const dateNsec = readU32Be(fixed, 20); // 20
    const vmClockNsec = readU64Be(fixed, 24, { field: 'snapshot vm_clock_nsec', format: FORMAT, file }); // 24
    const vmStateSize32 = readU32Be(fixed, 32); // 32
    const extraLen = readU32Be(fixed, 36); // 36
    if (extraLen > MAX_SNAPSHOT_EXTRA_DATA) {
      throw corrupt(FORMAT, file, `snapshot ${i} at ${hex(at)} has ${extraLen} bytes of extra data (at most ${MAX_SNAPSHOT_EXTRA_DATA})`, { field: 'snapshot extra_data_size', offset: at + 36, actual: extraLen });
    }
    const rest = await need(at + SNAPSHOT_ENTRY_FIXED_SIZE, extraLen + idLen + nameLen, 'id and name');
    const extra = rest.slice(0, extraLen);
    const id = utf8Decode(rest.subarray(extraLen, extraLen + idLen));
    const name = utf8Decode(rest.subarray(extraLen + idLen, extraLen + idLen + nameLen));
    if (l1Size * 8 > MAX_L1_TABLE_BYTES) {
      throw corrupt(FORMAT, file, `snapshot "${name}" L1 size ${l1Size} at ${hex(at + 8)} exceeds qemu's 32 MiB bound`, { field: 'snapshot l1_size', offset: at + 8, actual: l1Size });
    }
    if (l1TableOffset % clusterSize !== 0 || (l1Size > 0 && l1TableOffset + l1Size * 8 > fileSize)) {
      throw corrupt(FORMAT, file, `snapshot "${name}" L1 table at ${hex(l1TableOffset)} is unaligned or lies past the end of the file`, { field: 'snapshot l1_table_offset', offset: at, actual: l1TableOffset });
    }
    const vmStateSize = extraLen >= 8 ? readU64Be(extra, 0, { field: 'snapshot vm_state_size_large', format: FORMAT, file }) : vmStateSize32;
    const diskSize = extraLen >= 16 ? readU64Be(extra, 8, { field: 'snapshot disk_size', format: FORMAT, file }) : undefined;
    let icount = -1;
    if (extraLen >= 24) {
      const hi = readU32Be(extra, 16);
      const lo = readU32Be(extra, 20);
      icount = hi === 0xffffffff && lo === 0xffffffff ? -1 : hi > 0x1fffff ? -1 : hi * 0x1_0000_0000 + lo;
    }
    out.push({ l1TableOffset, l1Size, id, name, dateSec, dateNsec, vmClockNsec, vmStateSize, diskSize, icount, vmStateSize32, extra, entryOffset: at });
    at += Math.ceil((SNAPSHOT_ENTRY_FIXED_SIZE + extraLen + idLen + nameLen) / 8) * 8;
  }
  return out;
}

/** Encodes the whole snapshot table. */
export function serializeSnapshotTable(snapshots: readonly Qcow2Snapshot[]): Uint8Array {
  let total = 0;
  for (const s of snapshots) total += snapshotEntrySize(s);
  const out = new Uint8Array(total);
  let at = 0;
  for (const s of snapshots) {
    const id = utf8Encode(s.id);
    const name = utf8Encode(s.name);
    writeU64Be(out, at, s.l1TableOffset);
    writeU32Be(out, at + 8, s.l1Size);
    writeU16Be(out, at + 12, id.length);
    writeU16Be(out, at + 14, name.length);
    writeU32Be(out, at + 16, s.dateSec);
    writeU32Be(out, at + 20, s.dateNsec);
    writeU64Be(out, at + 24, s.vmClockNsec);
    writeU32Be(out, at + 32, s.vmStateSize32);
    writeU32Be(out, at + 36, s.extra.length);
    out.set(s.extra, at + 40);
    out.set(id, at + 40 + s.extra.length);
    out.set(name, at + 40 + s.extra.length + id.length);
    at += snapshotEntrySize(s);
  }
  return out;
}

/** The public view of a snapshot (qemu-img snapshot -l fields). */
export function snapshotInfo(s: Qcow2Snapshot, imageSize: number): SnapshotInfo {
  const info: SnapshotInfo = {
    id: s.id,
    name: s.name,
    dateSec: s.dateSec,
    dateNsec: s.dateNsec,
    vmClockNsec: s.vmClockNsec,
    vmStateSize: s.vmStateSize,
    diskSize: s.diskSize ?? imageSize,
  };
  if (s.icount >= 0) info.icount = s.icount;
  return info;
}
