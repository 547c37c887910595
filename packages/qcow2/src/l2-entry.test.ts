// The one-pass writer of a fresh image's L2 tables writes what the general entry encoder writes.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeDataEntries, encodeEntry } from './l2-entry.js';
import type { EntryGeometry } from './mapping.js';

describe('encodeDataEntries', () => {
  it('writes the bytes encodeEntry writes for allocated, COPIED data clusters', () => {
    fc.assert(
      fc.property(fc.integer({ min: 9, max: 21 }), fc.boolean(), fc.integer({ min: 1, max: 2 ** 31 - 1 }), (clusterBits, extendedL2, seed) => {
        const clusterSize = 2 ** clusterBits;
        const g: EntryGeometry = { clusterBits, clusterSize, extendedL2, zeroFlag: !extendedL2, dataFile: false };
        const perTable = clusterSize / (extendedL2 ? 16 : 8);
        const hosts = new Float64Array(perTable);
        // Host clusters up to the spec's 2^56 bytes, every other entry unallocated, from a seeded generator.
        let x = seed;
        const maxCluster = Math.floor(2 ** 56 / clusterSize) - 1;
        for (let i = 0; i < perTable; i++) {
          x = (x * 1103515245 + 12345) % 2 ** 31;
          hosts[i] = x % 3 === 0 ? 0 : 1 + ((x * 65537 + i) % maxCluster);
        }
        const fast = new Uint8Array(clusterSize);
        encodeDataEntries(fast, hosts, g);
        const slow = new Uint8Array(clusterSize);
        for (let i = 0; i < perTable; i++) {
          if (hosts[i] !== 0) encodeEntry(slow, i, { host: hosts[i]! * clusterSize, copied: true, compressed: undefined, alloc: extendedL2 ? 0xffffffff : 1, zero: 0 }, g);
        }
        expect(Buffer.from(fast).equals(Buffer.from(slow))).toBe(true);
      }),
      { seed: 11, numRuns: 40 },
    );
  });

  it('refuses more entries than the table holds', () => {
    const g: EntryGeometry = { clusterBits: 9, clusterSize: 512, extendedL2: false, zeroFlag: true, dataFile: false };
    expect(() => encodeDataEntries(new Uint8Array(512), new Float64Array(65), g)).toThrow(RangeError);
  });
});
