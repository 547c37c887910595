import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual } from '@img/block';
import { seededBytes, seededText } from '@img/testkit';
import { compressInPool, JOB_BYTES, POOL_MIN_CLUSTERS, releasePooled } from './compress-pool.js';
import { compressCluster, decompressCluster as decompressAny } from '../compression.js';
import { COMPRESSION_ZLIB, COMPRESSION_ZSTD } from '../constants.js';
import { createQcow2 } from '../create.js';
import { checkQcow2 } from '../check-qcow2.js';

/** Node's codecs decompress synchronously: the pool's tests read the answer at once. */
function decompressCluster(...args: Parameters<typeof decompressAny>): Uint8Array {
  const out = decompressAny(...args);
  if (!(out instanceof Uint8Array)) throw new Error('expected a synchronous answer from the Node codecs');
  return out;
}

describe('compression worker pool', () => {
  it('many concurrent zstd jobs while the workers load libzstd all decode to their input', async () => {
    const cs = 65536;
    const inputs = Array.from({ length: 24 }, (_, k) => seededText(16 * cs, k + 11));
    const outs = await Promise.all(inputs.map((d) => compressInPool(COMPRESSION_ZSTD, d, cs)));
    outs.forEach((out, k) => {
      expect(out).toHaveLength(16);
      out!.forEach((p, i) => expect(bytesEqual(decompressCluster(COMPRESSION_ZSTD, p!, cs, { hostOffset: 0 }), inputs[k]!.subarray(i * cs, (i + 1) * cs)), `${k}/${i}`).toBe(true));
    });
  });

  it('concurrent writeCompressed calls (zstd and deflate) land whole: the workers start under load', async () => {
    for (const compressionType of ['zstd', 'zlib'] as const) {
      const cs = 16384;
      const storage = new MemoryStorage({ name: 'p.qcow2' });
      const disk = await createQcow2(storage, { size: 8 << 20, clusterSize: cs, compressionType: compressionType });
      const want = new Uint8Array(disk.size);
      const jobs: Promise<void>[] = [];
      for (let k = 0; k < 8; k++) {
        const data = seededText(1 << 20, k + 1);
        want.set(data, k << 20);
        jobs.push(disk.writeCompressed(k << 20, data));
      }
      await Promise.all(jobs);
      expect(bytesEqual(await disk.read(0, disk.size), want), compressionType).toBe(true);
      await disk.close();
      const bytes = storage.toBytes();
      const check = await checkQcow2(MemoryStorage.from(bytes));
      expect(check, compressionType).toMatchObject({ corruptions: 0, leaks: 0 });
      // Packed: text compresses to well under a cluster, so the file is much smaller than the data.
      expect(bytes.length).toBeLessThan(want.length * 0.6);
      expect(check.compressedClusters).toBe(512);
    }
  });

  it('gives what compressCluster gives (deflate byte for byte; zstd decodes to the input); incompressible clusters are undefined', async () => {
    const cs = 65536;
    const data = new Uint8Array(16 * cs + 1000);
    data.set(seededText(8 * cs, 3));
    data.set(seededBytes(4 * cs, 4), 8 * cs); // incompressible
    const z = await compressInPool(COMPRESSION_ZLIB, data, cs);
    const s = await compressInPool(COMPRESSION_ZSTD, data, cs);
    expect(z).toHaveLength(17);
    expect(s).toHaveLength(17);
    for (let i = 0; i < 17; i++) {
      const cluster = new Uint8Array(cs);
      cluster.set(data.subarray(i * cs, (i + 1) * cs));
      const local = await compressCluster(COMPRESSION_ZLIB, cluster);
      expect(z![i] === undefined, `cluster ${i}`).toBe(local === undefined);
      if (local) expect(bytesEqual(z![i]!, local), `cluster ${i}`).toBe(true);
      if (s![i]) expect(bytesEqual(decompressCluster(COMPRESSION_ZSTD, s![i]!, cs, { hostOffset: 0 }), cluster)).toBe(true);
      else expect(i >= 8 && i < 12).toBe(true);
    }
  });

  it('answers stay intact until released, whatever runs meanwhile; released buffers are reused', async () => {
    const cs = 65536;
    const first = seededText(2 * JOB_BYTES, 101);
    const held = (await compressInPool(COMPRESSION_ZSTD, first, cs))!;
    const copies = held.map((p) => p!.slice());
    // Many more calls, each released at once: none may write into the buffers still held. A
    // released buffer goes back to a worker with the next job (transferred: the old views detach).
    let detached = 0;
    let previous: Array<Uint8Array | undefined> | undefined;
    for (let k = 0; k < 6; k++) {
      const out = (await compressInPool(k % 2 ? COMPRESSION_ZLIB : COMPRESSION_ZSTD, seededText(JOB_BYTES, 200 + k), cs))!;
      if (previous) detached += previous.filter((p) => p!.buffer.byteLength === 0).length;
      releasePooled(out);
      previous = out;
    }
    expect(detached).toBeGreaterThan(0);
    expect(held.every((p) => p!.byteLength > 0)).toBe(true);
    held.forEach((p, i) => expect(bytesEqual(p!, copies[i]!), `${i}`).toBe(true));
    held.forEach((p, i) => expect(bytesEqual(decompressCluster(COMPRESSION_ZSTD, p!, cs, { hostOffset: 0 }), first.subarray(i * cs, (i + 1) * cs))).toBe(true));
    releasePooled(held);
    releasePooled(held); // twice, or an answer that is not the pool's: ignored
    releasePooled(undefined);
    releasePooled([new Uint8Array(4)]);
  });

  it('leaves small writes to the calling thread', async () => {
    expect(await compressInPool(COMPRESSION_ZLIB, seededText((POOL_MIN_CLUSTERS - 1) * 4096, 1), 4096)).toBeUndefined();
  });

  it("never keeps a process alive (workers are unref'd when idle)", () => {
    const dist = fileURLToPath(new URL('../../dist/node/root.js', import.meta.url));
    if (!existsSync(dist)) return; // the package is built before its tests in the workspace pipeline
    const script = `
      import { createQcow2 } from ${JSON.stringify(dist)};
      import { MemoryStorage } from '@img/block';
      const d = await createQcow2(new MemoryStorage(), { size: 4 << 20, clusterSize: 4096 });
      await d.writeCompressed(0, new Uint8Array(1 << 20).fill(65));
      await d.close();
      console.log('done');
    `;
    const started = Date.now();
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', cwd: fileURLToPath(new URL('../..', import.meta.url)), timeout: 20_000 });
    expect(r.stdout.trim(), r.stderr).toBe('done');
    expect(r.status).toBe(0);
    expect(Date.now() - started).toBeLessThan(20_000);
  });
});
