/**
 * The golden suite: for one format, open every fixture in
 * test-images/MANIFEST.json, check its content hash and its extents
 * against what qemu-img recorded when the fixture was made.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { QemuMapEntry } from './qemu.js';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const testImagesDir = join(repoRoot, 'test-images');

export interface ManifestSnapshot {
  id: string;
  name: string;
  virtualSize: number;
  sha256: string;
}

export interface ManifestEntry {
  /** Path relative to test-images/. */
  file: string;
  format: string;
  virtualSize: number;
  /** sha256 of `qemu-img convert -O raw` of the image (its whole chain). */
  sha256: string;
  /** `qemu-img map --output=json` of the image. */
  map: QemuMapEntry[];
  /** What the fixture is for. */
  description?: string;
  snapshots?: ManifestSnapshot[];
  /** Free-form extra facts a format's own tests check (header fields, ...). */
  expect?: Record<string, unknown>;
}

export interface Manifest {
  version: number;
  generator: string;
  qemu: string;
  images: ManifestEntry[];
}

export function loadManifest(): Manifest {
  return JSON.parse(readFileSync(join(testImagesDir, 'MANIFEST.json'), 'utf8')) as Manifest;
}

/** A normalised extent: what qemu-img map and our extents() are compared as. */
export interface NormExtent {
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'hole';
  depth: number;
}

function merge(list: NormExtent[]): NormExtent[] {
  const out: NormExtent[] = [];
  for (const e of list) {
    const last = out[out.length - 1];
    if (last && last.kind === e.kind && last.depth === e.depth && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** qemu map entries as normalised extents. */
export function normalizeQemuMap(map: readonly QemuMapEntry[]): NormExtent[] {
  return merge(
    map
      .filter((m) => m.length > 0)
      .map((m) => ({
        offset: m.start,
        length: m.length,
        kind: m.data ? 'data' : m.present ? 'zero' : 'hole',
        depth: m.depth,
      })),
  );
}

export interface ExtentLike {
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'hole';
  depth?: number;
}

export function normalizeExtents(extents: readonly ExtentLike[]): NormExtent[] {
  return merge(extents.map((e) => ({ offset: e.offset, length: e.length, kind: e.kind, depth: e.depth ?? 0 })));
}

/** The part of the Disk interface the golden suite needs. */
export interface DiskLike {
  readonly size: number;
  readInto(offset: number, target: Uint8Array): Promise<void>;
  extents(options?: { offset?: number; length?: number }): AsyncIterable<ExtentLike>;
  close(): Promise<void>;
}

/** sha256 of a disk's whole content, read in 4 MiB chunks. */
export async function diskSha256(disk: DiskLike): Promise<string> {
  const hash = createHash('sha256');
  const chunk = new Uint8Array(4 * 1024 * 1024);
  for (let pos = 0; pos < disk.size; pos += chunk.length) {
    const n = Math.min(chunk.length, disk.size - pos);
    const view = chunk.subarray(0, n);
    await disk.readInto(pos, view);
    hash.update(view);
  }
  return hash.digest('hex');
}

export interface GoldenOptions {
  format: string;
  /** Opens a fixture by absolute path. */
  open: (path: string, entry: ManifestEntry) => Promise<DiskLike>;
  /** Opens snapshot `id` of a fixture (formats with internal snapshots). */
  openSnapshot?: (path: string, snapshot: ManifestSnapshot) => Promise<DiskLike>;
  /**
   * Accept `data` where qemu says `zero` (raw files, where qemu sees
   * holes through SEEK_HOLE and a reader without it reports data).
   */
  allowDataForZero?: boolean;
  /** Only fixtures for which this returns true. */
  filter?: (entry: ManifestEntry) => boolean;
}

/** Are `ours` compatible with qemu's map, under the suite's rules? */
export function compareWithQemuMap(ours: NormExtent[], qemu: NormExtent[], allowDataForZero = false): string | undefined {
  if (!allowDataForZero) {
    return JSON.stringify(ours) === JSON.stringify(qemu) ? undefined : `extents differ:\n ours ${JSON.stringify(ours)}\n qemu ${JSON.stringify(qemu)}`;
  }
  // Walk both covers byte-range by byte-range.
  let i = 0;
  let j = 0;
  let pos = 0;
  while (i < ours.length && j < qemu.length) {
    const a = ours[i]!;
    const b = qemu[j]!;
    const ok = a.kind === b.kind || (a.kind === 'data' && b.kind === 'zero');
    if (!ok) return `at ${pos}: ours ${a.kind}, qemu ${b.kind}`;
    const end = Math.min(a.offset + a.length, b.offset + b.length);
    pos = end;
    if (a.offset + a.length === end) i++;
    if (b.offset + b.length === end) j++;
  }
  return i === ours.length && j === qemu.length ? undefined : 'extent covers end at different places';
}

/** Registers one test per fixture of `format`. */
export function goldenSuite(options: GoldenOptions): void {
  const manifest = existsSync(join(testImagesDir, 'MANIFEST.json')) ? loadManifest() : undefined;
  const entries = (manifest?.images ?? []).filter((e) => e.format === options.format && (options.filter?.(e) ?? true));
  describe(`golden ${options.format} fixtures`, () => {
    it('has fixtures in the manifest', () => {
      expect(entries.length).toBeGreaterThan(0);
    });
    for (const entry of entries) {
      it(`${entry.file}: content and extents match qemu-img`, async () => {
        const path = join(testImagesDir, entry.file);
        const disk = await options.open(path, entry);
        try {
          expect(disk.size).toBe(entry.virtualSize);
          const extents: ExtentLike[] = [];
          for await (const e of disk.extents()) extents.push(e);
          let pos = 0;
          for (const e of extents) {
            expect(e.offset).toBe(pos);
            expect(e.length).toBeGreaterThan(0);
            pos += e.length;
          }
          expect(pos).toBe(disk.size);
          const problem = compareWithQemuMap(normalizeExtents(extents), normalizeQemuMap(entry.map), options.allowDataForZero);
          expect(problem).toBeUndefined();
          expect(await diskSha256(disk)).toBe(entry.sha256);
        } finally {
          await disk.close();
        }
      });
      for (const snap of entry.snapshots ?? []) {
        if (!options.openSnapshot) continue;
        it(`${entry.file}: snapshot ${snap.name} matches qemu-img convert -l`, async () => {
          const disk = await options.openSnapshot!(join(testImagesDir, entry.file), snap);
          try {
            expect(disk.size).toBe(snap.virtualSize);
            expect(await diskSha256(disk)).toBe(snap.sha256);
          } finally {
            await disk.close();
          }
        });
      }
    }
  });
}
