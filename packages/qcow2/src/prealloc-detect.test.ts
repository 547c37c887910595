// qemu's test for metadata preallocation (qcow2_detect_metadata_preallocation) counts clusters with a nonzero
// refcount and stops at its threshold, max(10/9 of the clusters the file occupies, those + 2): reaching it is
// enough. img asked for one more, so images at the threshold exactly (common for small ones qemu-io wrote) were
// not preallocated to img map and measure, where qemu-img looked for holes in their data clusters (interop seed 19:
// nine cases).
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { createQcow2 } from './create.js';
import { detectMetadataPreallocation } from './prealloc-detect.js';

const cs = 65536;

describe('detectMetadataPreallocation', () => {
  it('says preallocated when the clusters in use reach the threshold, not only past it', async () => {
    const storage = new MemoryStorage({ name: 'p.qcow2' });
    const disk = await createQcow2(storage, { size: 64 * cs, clusterSize: cs });
    for (let i = 0; i < 10; i++) await disk.write(i * 2 * cs, new Uint8Array(cs).fill(1));
    await disk.flush();
    // Clusters in use: the ten data clusters and the metadata (header, L1, refcount table and block, an L2 table).
    expect(Math.ceil((await storage.size()) / cs)).toBe(15);
    // real + 2 = 15 (10/9 of 13 is 14): at the threshold.
    expect(await detectMetadataPreallocation(storage, 13 * cs)).toBe(true);
    // A cluster more on the device: the threshold is 16, one more than in use.
    expect(await detectMetadataPreallocation(storage, 14 * cs)).toBe(false);
    expect(await detectMetadataPreallocation(storage, 5 * cs)).toBe(true);
    expect(await detectMetadataPreallocation(storage, 15 * cs)).toBe(false);
    await disk.close();
  });
});
