/**
 * Corrupt qcow2 images for tests, built from a fresh `qemu-img create`
 * image and a few byte patches (the header fields named by the spec).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { qemuImg, qemuIo } from './qemu.js';

const OFFSET_MASK = 0x00ff_ffff_ffff_fe00n;

/** The parts of a qcow2 file these builders patch. */
export interface Qcow2Bytes {
  bytes: Uint8Array;
  view: DataView;
  clusterSize: number;
  l1Offset: number;
  l1Size: number;
}

/** Reads a qcow2 file for patching. */
export function readQcow2Bytes(path: string): Qcow2Bytes {
  const bytes = new Uint8Array(readFileSync(path));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { bytes, view, clusterSize: 2 ** view.getUint32(20), l1Offset: Number(view.getBigUint64(40)), l1Size: view.getUint32(36) };
}

/** The raw 64-bit L1 or L2 entry at `at`. */
export function entryAt(q: Qcow2Bytes, at: number): bigint {
  return q.view.getBigUint64(at);
}

/** Host offset held by the L1 or L2 entry at `at`. */
export function entryOffsetAt(q: Qcow2Bytes, at: number): number {
  return Number(q.view.getBigUint64(at) & OFFSET_MASK);
}

/** Creates a qcow2 image with qemu-img and writes `writes` ([guest offset, length, pattern]) with qemu-io. */
export function qemuQcow2(path: string, size: string, options: string, writes: Array<[number, number, number]> = []): Qcow2Bytes {
  qemuImg(['create', '-q', '-f', 'qcow2', '-o', options, path, size]);
  if (writes.length)
    qemuIo(
      path,
      'qcow2',
      writes.map(([o, l, p]) => `write -P ${p} ${o} ${l}`),
    );
  return readQcow2Bytes(path);
}

/**
 * The check bomb of issue 13: a `size` image whose L1 entries all point at
 * one L2 table whose entries all point at one data cluster (8 TiB with
 * 64 KiB clusters: 16384 x 8192 = 134 M references in a 448 KiB file).
 */
export function writeCheckBomb(path: string, size = '8T'): void {
  const q = qemuQcow2(path, size, 'cluster_size=65536', [[0, 65536, 0x55]]);
  const l1Entry = entryAt(q, q.l1Offset);
  const l2 = Number(l1Entry & OFFSET_MASK);
  const l2Entry = entryAt(q, l2);
  for (let i = 0; i < q.l1Size; i++) q.view.setBigUint64(q.l1Offset + i * 8, l1Entry);
  for (let j = 0; j < q.clusterSize / 8; j++) q.view.setBigUint64(l2 + j * 8, l2Entry);
  writeFileSync(path, q.bytes);
}

/** The corruptions the qcow2 writable-open gate refuses and `check -r all` must repair (issue 13). */
export type Qcow2Corruption =
  'shared-data-cluster' | 'shared-data-with-snapshot' | 'shared-l2-table' | 'compressed-span' | 'snapshot-l1-is-active' | 'header-refcount-0' | 'missing-refcount-block' | 'refcount-table-as-block' | 'data-refcount-0' | 'data-on-refcount-block' | 'l2-on-refcount-table';

/** Every {@link Qcow2Corruption}, in a fixed order. */
export const QCOW2_CORRUPTIONS: readonly Qcow2Corruption[] = [
  'shared-data-cluster',
  'shared-data-with-snapshot',
  'shared-l2-table',
  'compressed-span',
  'snapshot-l1-is-active',
  'header-refcount-0',
  'missing-refcount-block',
  'refcount-table-as-block',
  'data-refcount-0',
  'data-on-refcount-block',
  'l2-on-refcount-table',
];

/** Offset of the first refcount block (refcount table entry 0). */
function firstRefcountBlock(q: Qcow2Bytes): number {
  return Number(q.view.getBigUint64(Number(q.view.getBigUint64(48))) & OFFSET_MASK);
}

/**
 * Builds a corrupt qcow2 image at `path` with qemu-img and qemu-io, then
 * byte patches: 64 KiB clusters, 16-bit refcounts, `version` 2 or 3.
 * Guest cluster 0 holds 0x11 (compressed in 'compressed-span'), guest
 * cluster 1 holds 0x22 where a case writes it; the L2 table of guest
 * cluster 0 is at 0x40000 and its data at 0x50000.
 *
 * - shared-data-cluster: the L2 entries of guest clusters 0 and 1 both
 *   point at 0x50000 with COPIED set, refcount 1 (0x60000 leaks).
 * - shared-data-with-snapshot: guest cluster 0 written, snapshot s1
 *   taken, guest cluster 1 written (the active layer gets its own L2 table
 *   at 0x80000); then guest cluster 1's entry points at guest cluster 0's
 *   data, which s1 also uses: refcount 2 for 3 uses, no COPIED flag.
 * - shared-l2-table: a 1 GiB image whose L1 entries 0 and 1 both point at
 *   the L2 table of entry 0 (entry 1's own table and data leak).
 * - compressed-span: guest cluster 0 compressed, its sector count raised
 *   so that it reaches the data cluster of guest cluster 1 at 0x60000.
 * - snapshot-l1-is-active: snapshot 1's l1_table_offset is the active L1.
 * - header-refcount-0: the header cluster's refcount is 0.
 * - missing-refcount-block: refcount table entry 0 is 0.
 * - refcount-table-as-block: refcount table entry 0 points at the table.
 * - data-refcount-0: the data cluster of guest cluster 0 has refcount 0.
 * - data-on-refcount-block: guest cluster 1's L2 entry points at the
 *   refcount block (its own data cluster leaks).
 * - l2-on-refcount-table: L1 entry 1 of a 1 GiB image points at the
 *   refcount table as its L2 table (entry 1's own table and data leak).
 */
export function writeCorruptQcow2(path: string, kind: Qcow2Corruption, version: 2 | 3): void {
  const o = `cluster_size=65536,compat=${version === 2 ? '0.10' : '1.1'}`;
  const l2Of = (q: Qcow2Bytes, i: number) => entryOffsetAt(q, q.l1Offset + i * 8);
  let q: Qcow2Bytes;
  switch (kind) {
    case 'shared-data-cluster': {
      q = qemuQcow2(path, '1M', o, [
        [0, 65536, 0x11],
        [65536, 65536, 0x22],
      ]);
      const l2 = l2Of(q, 0);
      q.view.setBigUint64(l2 + 8, entryAt(q, l2));
      break;
    }
    case 'shared-data-with-snapshot': {
      qemuQcow2(path, '1M', o, [[0, 65536, 0x11]]);
      qemuImg(['snapshot', '-c', 's1', path]);
      qemuIo(path, 'qcow2', ['write -P 0x22 64k 64k']);
      q = readQcow2Bytes(path);
      const l2 = l2Of(q, 0);
      q.view.setBigUint64(l2 + 8, entryAt(q, l2));
      break;
    }
    case 'shared-l2-table':
      q = qemuQcow2(path, '1G', o, [
        [0, 65536, 0x11],
        [65536, 65536, 0x12],
        [2 ** 29, 65536, 0x22],
      ]);
      q.view.setBigUint64(q.l1Offset + 8, entryAt(q, q.l1Offset));
      break;
    case 'compressed-span': {
      qemuQcow2(path, '1M', o);
      qemuIo(path, 'qcow2', ['write -c -P 17 0 64k', 'write -P 34 64k 64k']);
      q = readQcow2Bytes(path);
      // The largest sector count 64 KiB clusters allow: 256 sectors from 0x50000 reach 0x60000.
      q.view.setUint32(l2Of(q, 0), 0x7fc00000);
      break;
    }
    case 'snapshot-l1-is-active':
      qemuQcow2(path, '1M', o, [[0, 65536, 0x11]]);
      qemuImg(['snapshot', '-c', 's1', path]);
      q = readQcow2Bytes(path);
      q.view.setBigUint64(Number(q.view.getBigUint64(64)), BigInt(q.l1Offset));
      break;
    case 'header-refcount-0':
      q = qemuQcow2(path, '1M', o, [
        [0, 65536, 0x11],
        [65536, 65536, 0x22],
      ]);
      q.view.setUint16(firstRefcountBlock(q), 0);
      break;
    case 'missing-refcount-block':
      q = qemuQcow2(path, '1M', o, [
        [0, 65536, 0x11],
        [65536, 65536, 0x22],
      ]);
      q.view.setBigUint64(Number(q.view.getBigUint64(48)), 0n);
      break;
    case 'refcount-table-as-block': {
      q = qemuQcow2(path, '1M', o, [
        [0, 65536, 0x11],
        [65536, 65536, 0x22],
      ]);
      const table = Number(q.view.getBigUint64(48));
      q.view.setBigUint64(table, BigInt(table));
      break;
    }
    case 'data-refcount-0': {
      q = qemuQcow2(path, '1M', o, [
        [0, 65536, 0x11],
        [65536, 65536, 0x22],
      ]);
      const data = entryOffsetAt(q, l2Of(q, 0));
      q.view.setUint16(firstRefcountBlock(q) + 2 * (data / q.clusterSize), 0);
      break;
    }
    case 'data-on-refcount-block': {
      q = qemuQcow2(path, '1M', o, [
        [0, 65536, 0x11],
        [65536, 65536, 0x22],
      ]);
      const l2 = l2Of(q, 0);
      q.view.setBigUint64(l2 + 8, (entryAt(q, l2 + 8) & ~OFFSET_MASK) | BigInt(firstRefcountBlock(q)));
      break;
    }
    case 'l2-on-refcount-table':
      q = qemuQcow2(path, '1G', o, [
        [0, 65536, 0x11],
        [2 ** 29, 65536, 0x22],
      ]);
      q.view.setBigUint64(q.l1Offset + 8, (entryAt(q, q.l1Offset + 8) & ~OFFSET_MASK) | q.view.getBigUint64(48));
      break;
  }
  writeFileSync(path, q.bytes);
}
