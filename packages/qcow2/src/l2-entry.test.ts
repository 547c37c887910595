// The one-pass writer of a fresh image's L2 tables writes what the general entry encoder writes.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { encodeDataEntries, encodeEntry } from './l2-entry.js';
import { decodeL2Entry, ENTRY_DECODE, ENTRY_EMPTY, MAX_HOST_OFFSET, plainEntryCluster, type EntryGeometry } from './mapping.js';

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

describe('plainEntryCluster', () => {
  // Offsets around the bound of a file position (MAX_HOST_OFFSET, 2^53, the high word's limit) and random words.
  const near = (at: number): fc.Arbitrary<number> => fc.integer({ min: -4, max: 4 }).map((k) => Math.max(0, at + k * 2 ** 21));
  const offsets = fc.oneof(near(MAX_HOST_OFFSET), near(2 ** 53), near(0x1fffff * 2 ** 32), near(0x200000 * 2 ** 32), fc.integer({ min: 0, max: 2 ** 53 - 1 }));
  it('names the host cluster decodeL2Entry maps, and leaves every other entry to it', () => {
    fc.assert(
      fc.property(fc.integer({ min: 9, max: 21 }), offsets, fc.nat(0xff), fc.boolean(), fc.boolean(), (clusterBits, offset, topBits, aligned, flagBits) => {
        const clusterSize = 2 ** clusterBits;
        const g: EntryGeometry = { clusterBits, clusterSize, extendedL2: false, zeroFlag: true, dataFile: false };
        const table = new Uint8Array(16);
        const dv = new DataView(table.buffer);
        const host = aligned ? Math.floor(offset / clusterSize) * clusterSize : offset;
        // The high word: the offset's bits 32-55 and, sometimes, COPIED, compressed or reserved bits.
        const hi = (Math.floor(host / 2 ** 32) & 0x00ffffff) | (flagBits ? (topBits << 24) >>> 0 : 0x80000000);
        dv.setUint32(0, hi >>> 0);
        dv.setUint32(4, (host % 2 ** 32) >>> 0);
        const c = plainEntryCluster(dv, 0, clusterBits);
        let decoded: ReturnType<typeof decodeL2Entry> | undefined;
        try {
          decoded = decodeL2Entry(table, 0, g, 'x.qcow2', 0);
        } catch {
          decoded = undefined;
        }
        if (c === ENTRY_EMPTY) expect(hi === 0 && host % 2 ** 32 === 0).toBe(true);
        else if (c !== ENTRY_DECODE) {
          expect(decoded?.type === 'normal' || decoded?.type === 'zero').toBe(true);
          expect((decoded as { host: number }).host).toBe(c * clusterSize);
        }
      }),
      { seed: 42, numRuns: 3000 },
    );
  });

  it('leaves offsets past MAX_HOST_OFFSET to decodeL2Entry, which refuses them', () => {
    const g: EntryGeometry = { clusterBits: 16, clusterSize: 65536, extendedL2: false, zeroFlag: true, dataFile: false };
    for (const host of [MAX_HOST_OFFSET + 65536, 2 ** 53, 0xffffff * 2 ** 32]) {
      const table = new Uint8Array(8);
      const dv = new DataView(table.buffer);
      dv.setUint32(0, (0x80000000 | Math.floor(host / 2 ** 32)) >>> 0);
      dv.setUint32(4, host % 2 ** 32);
      expect(plainEntryCluster(dv, 0, 16)).toBe(ENTRY_DECODE);
      expect(() => decodeL2Entry(table, 0, g, 'x.qcow2', 0)).toThrow(/./);
    }
  });
});
