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
  if (writes.length) qemuIo(path, 'qcow2', writes.map(([o, l, p]) => `write -P ${p} ${o} ${l}`));
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
