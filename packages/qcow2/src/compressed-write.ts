/**
 * Writing compressed clusters (qemu-img convert -c, qemu-io write -c):
 * compression first (in Node's worker pool for many clusters, on the
 * calling thread for few or where the codecs have no pool), then clusters
 * that did not shrink are written plain and the rest as compressed
 * clusters. Nothing is written before everything is compressed, so the
 * writer's ordering is unchanged.
 */
import { compressCluster, qcow2Codecs } from './compression.js';
import type { Qcow2Image } from './core.js';
import { writeGuest, writeCompressedClusters } from './writer.js';

/** Writes whole clusters of `data` at cluster-aligned guest `offset`, compressed where they get smaller. */
export async function writeCompressedData(s: Qcow2Image, offset: number, data: Uint8Array): Promise<void> {
  const cs = s.geom.clusterSize;
  const clusters: Array<{ guest: number; plain: Uint8Array; packed: Uint8Array | undefined }> = [];
  // Many clusters go to the worker pool (all cores); few, or where there are no workers, are compressed here.
  const codecs = qcow2Codecs();
  const pooled = await codecs.compressClusters?.(s.compressionType, data, cs);
  const work: Promise<void>[] = [];
  for (let at = 0; at < data.length; at += cs) {
    const plain = data.subarray(at, at + cs);
    const entry = { guest: offset + at, plain, packed: pooled?.[at / cs] };
    clusters.push(entry);
    if (pooled) continue;
    let cluster = plain;
    if (cluster.length < cs) {
      cluster = new Uint8Array(cs);
      cluster.set(plain);
    }
    work.push(compressCluster(s.compressionType, cluster).then((packed) => void (entry.packed = packed)));
  }
  await Promise.all(work);
  // Clusters that did not get smaller are written as they are, in runs.
  const writes: Promise<void>[] = [];
  for (let i = 0; i < clusters.length;) {
    if (clusters[i]!.packed) {
      i++;
      continue;
    }
    let j = i;
    while (j < clusters.length && !clusters[j]!.packed) j++;
    const start = clusters[i]!.guest - offset;
    const end = clusters[j - 1]!.guest - offset + clusters[j - 1]!.plain.length;
    writes.push(writeGuest(s, offset + start, data.subarray(start, end)));
    i = j;
  }
  writes.push(
    writeCompressedClusters(
      s,
      clusters.filter((c) => c.packed).map((c) => ({ guest: c.guest, packed: c.packed! })),
    ),
  );
  const results = await Promise.allSettled(writes);
  // Written (or failed): the pool may reuse the buffers behind the compressed bytes.
  codecs.releaseClusters?.(pooled);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
