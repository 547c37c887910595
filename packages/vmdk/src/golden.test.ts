import { FileStorage, fileResolver } from '@img/block/node';
import { goldenSuite, loadManifest, testImagesDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openVmdk } from './open.js';
import { decodeDescriptorBytes, parseDescriptor, serializeDescriptor } from './descriptor.js';
import { hasSparseMagic, parseSparseHeader, serializeSparseHeader } from './sparse-header.js';

goldenSuite({
  format: 'vmdk',
  open: async (path) => openVmdk(await FileStorage.open(path), { resolver: fileResolver }),
});

/**
 * Descriptors whose text is not in the canonical layout: qemu writes no blank
 * line between parentFileNameHint and "# Extent description"; VMDKstream
 * writes comments of its own. Their fields still survive a round trip.
 */
const NOT_CANONICAL = ['vmdk/chain-top.vmdk', 'vmdk/stream-vmdkstream.vmdk'];

function roundTrip(file: string, text: string): void {
  const parsed = parseDescriptor(text);
  expect(parsed.extents.length).toBeGreaterThan(0);
  expect(parseDescriptor(serializeDescriptor(parsed))).toEqual(parsed);
  if (!NOT_CANONICAL.includes(file)) expect(serializeDescriptor(parsed)).toBe(text);
}

const entries = loadManifest().images.filter((e) => e.format === 'vmdk');

describe('vmdk fixtures: codecs round-trip', () => {
  for (const entry of entries) {
    it(`${entry.file}: header and descriptor serialize back to their bytes`, () => {
      const bytes = new Uint8Array(readFileSync(join(testImagesDir, entry.file)));
      if (hasSparseMagic(bytes)) {
        const h = parseSparseHeader(bytes);
        // The header's used bytes (0..78) come back identical; the rest is padding.
        expect(serializeSparseHeader(h).subarray(0, 79)).toEqual(bytes.subarray(0, 79));
        if (h.descriptorOffset) {
          const text = decodeDescriptorBytes(bytes.subarray(h.descriptorOffset * 512, (h.descriptorOffset + h.descriptorSize) * 512));
          roundTrip(entry.file, text);
        }
      } else {
        const text = decodeDescriptorBytes(bytes);
        roundTrip(entry.file, text);
      }
    });
  }
});

const hasVmdkinfo = spawnSync('sh', ['-c', 'command -v vmdkinfo'], { stdio: 'ignore' }).status === 0;

describe.runIf(hasVmdkinfo || process.env.CI === 'true')('vmdkinfo (libvmdk) as a second reader', () => {
  // libvmdk refuses VMDKstream's "# Disk Descriptor File" signature (with a space), which qemu and we accept.
  for (const entry of entries.filter((e) => e.file !== 'vmdk/stream-vmdkstream.vmdk')) {
    it(`${entry.file}: media size and content identifier agree`, async () => {
      const path = join(testImagesDir, entry.file);
      const r = spawnSync('vmdkinfo', [path], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const size = Number(/Media size:.*\((\d+) bytes\)/.exec(r.stdout)?.[1]);
      const cid = /Content identifier:\s*0x([0-9a-f]+)/.exec(r.stdout)?.[1];
      const disk = await openVmdk(await FileStorage.open(path), { resolver: fileResolver });
      try {
        expect(disk.size).toBe(size);
        expect(disk.cid).toBe(parseInt(cid!, 16));
      } finally {
        await disk.close();
      }
    });
  }
});
