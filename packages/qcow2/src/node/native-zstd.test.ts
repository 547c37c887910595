import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual } from '@img/block';
import { nativeZstdAvailable } from '@img/block/node';
import { describeQemu, qemuCheck, qemuCompare, seededBytes, seededText, tempDir } from '@img/testkit';
import { decompressCluster as decompressAny } from '../compression.js';
import { COMPRESSION_ZSTD } from '../constants.js';
import { createQcow2 } from '../create.js';
import { checkQcow2 } from '../check-qcow2.js';
import { compressZstdNative, nativeZstdInUse, releaseNativeZstd } from './native-zstd.js';

// CI installs qemu-utils, which brings libzstd.so.1: there the native path must be the one tested.
if (process.env.CI && process.platform === 'linux' && !nativeZstdAvailable()) throw new Error('CI: the native helper must find libzstd for these tests');

/** Node 20's decoder here is fzstd (pure JavaScript): not the code that encoded. */
function decompress(frame: Uint8Array, cs: number): Uint8Array {
  const out = decompressAny(COMPRESSION_ZSTD, frame, cs, { hostOffset: 0 });
  if (!(out instanceof Uint8Array)) throw new Error('expected a synchronous answer from the Node codecs');
  return out;
}

/** Counts the writes that reach the file. */
class CountingStorage extends MemoryStorage {
  writes = 0;
  override write(offset: number, data: Uint8Array): Promise<void> {
    this.writes++;
    return super.write(offset, data);
  }
}

describe.runIf(nativeZstdAvailable())('zstd clusters through the native helper', () => {
  it('one frame per cluster, decoding to it (a short last one padded); incompressible clusters are undefined', async () => {
    expect(nativeZstdInUse()).toBe(true);
    const cs = 65536;
    const data = new Uint8Array(40 * cs + 1000);
    data.set(seededText(30 * cs, 3));
    data.set(seededBytes(5 * cs, 4), 30 * cs);
    data.set(seededText(5 * cs + 1000, 5), 35 * cs);
    const out = (await compressZstdNative(data, cs))!;
    expect(out).toHaveLength(41);
    for (let i = 0; i < 41; i++) {
      const cluster = new Uint8Array(cs);
      cluster.set(data.subarray(i * cs, (i + 1) * cs));
      if (i >= 30 && i < 35) expect(out[i], `cluster ${i}`).toBeUndefined();
      else expect(bytesEqual(decompress(out[i]!, cs), cluster), `cluster ${i}`).toBe(true);
    }
    releaseNativeZstd(out);
  });

  it('answers stay intact until released; released buffers are used again', async () => {
    const cs = 16384;
    const first = seededText(4 << 20, 101);
    const held = (await compressZstdNative(first, cs))!;
    const copies = held.map((p) => p!.slice());
    const heldBuffers = new Set(held.map((p) => p!.buffer));
    let reused = 0;
    let previous = new Set<ArrayBufferLike>();
    for (let k = 0; k < 6; k++) {
      const out = (await compressZstdNative(seededText(2 << 20, 200 + k), cs))!;
      for (const p of out) {
        expect(heldBuffers.has(p!.buffer)).toBe(false);
        if (k > 0 && previous.has(p!.buffer)) reused++;
      }
      previous = new Set(out.map((p) => p!.buffer));
      releaseNativeZstd(out);
    }
    expect(reused).toBeGreaterThan(0);
    held.forEach((p, i) => expect(bytesEqual(p!, copies[i]!), `${i}`).toBe(true));
    releaseNativeZstd(held);
    releaseNativeZstd(held); // twice, or an answer that is not this path's: ignored
    releaseNativeZstd(undefined);
    releaseNativeZstd([new Uint8Array(4)]);
  });
  it('IMG_ZSTD=wasm leaves zstd to the JavaScript encoders', async () => {
    process.env.IMG_ZSTD = 'wasm';
    try {
      expect(nativeZstdInUse()).toBe(false);
      expect(await compressZstdNative(seededText(65536, 1), 4096)).toBeUndefined();
    } finally {
      delete process.env.IMG_ZSTD;
    }
  });
});

describeQemu('compressed writes: refcounts written once per batch', () => {
  for (const compressionType of ['zstd', 'zlib'] as const) {
    it(`${compressionType}: 64 clusters that share host clusters take a handful of writes, and qemu-img reads them back`, async () => {
      const cs = 65536;
      const storage = new CountingStorage({ name: 'c.qcow2' });
      const disk = await createQcow2(storage, { size: 8 << 20, clusterSize: cs, compressionType });
      const data = seededText(64 * cs, 9);
      const before = storage.writes;
      await disk.writeCompressed(0, data);
      // About three frames share each host cluster: one write per frame's refcount would be 64 and more.
      expect(storage.writes - before).toBeLessThan(16);
      await disk.close();
      const bytes = storage.toBytes();
      expect(await checkQcow2(MemoryStorage.from(bytes))).toMatchObject({ corruptions: 0, leaks: 0, compressedClusters: 64 });
      const tmp = tempDir();
      try {
        const file = join(tmp.path, 'c.qcow2');
        const raw = join(tmp.path, 'c.raw');
        writeFileSync(file, bytes);
        const want = new Uint8Array(8 << 20);
        want.set(data);
        writeFileSync(raw, want);
        const check = qemuCheck(file, 'qcow2');
        expect(check.status, check.stderr).toBe(0);
        expect(check.result).toMatchObject({ 'compressed-clusters': 64 });
        expect(qemuCompare(raw, file, 'raw', 'qcow2')).toBe(true);
      } finally {
        tmp.cleanup();
      }
    });
  }
});
