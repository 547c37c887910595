// A VMDK with more allocated grains than a JavaScript Set holds (2^24): check kept every grain's offset in a Set and
// failed with "Set maximum size exceeded" after a gigabyte of memory; a writable open kept two lists of 16 bytes per
// grain. The image: qemu-img's 1200 GiB monolithicSparse with 17 M grain table entries filled in file order, the grains
// themselves in a sparse tail (the file is 1 TiB long and takes ~230 MB on disk).
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { openSync, closeSync, readSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { checkVmdk } from './check.js';
import { openVmdk } from './open.js';

const tmp = tempDir('img-vmdk-check-large-');
afterAll(() => tmp.cleanup());
const file = join(tmp.path, 'big.vmdk');
const GRAINS = 17_000_000;

/** Fills the first GRAINS entries of the primary and redundant grain tables with grains laid out one after another past the metadata. */
function fill(): void {
  const fd = openSync(file, 'r+');
  try {
    const h = Buffer.alloc(512);
    readSync(fd, h, 0, 512, 0);
    const grain = Number(h.readBigUInt64LE(20));
    const perTable = h.readUInt32LE(44);
    const rgd = Number(h.readBigUInt64LE(48));
    const gd = Number(h.readBigUInt64LE(56));
    const overhead = Number(h.readBigUInt64LE(64));
    const tables = Math.ceil(GRAINS / perTable);
    const dir = (at: number) => {
      const b = Buffer.alloc(tables * 4);
      readSync(fd, b, 0, b.length, at * 512);
      return b;
    };
    const primary = dir(gd);
    const redundant = dir(rgd);
    const entries = Buffer.alloc(perTable * 4);
    for (let t = 0; t < tables; t++) {
      for (let i = 0; i < perTable; i++) entries.writeUInt32LE(overhead + (t * perTable + i) * grain, i * 4);
      writeSync(fd, entries, 0, entries.length, primary.readUInt32LE(t * 4) * 512);
      writeSync(fd, entries, 0, entries.length, redundant.readUInt32LE(t * 4) * 512);
    }
    ftruncateSync(fd, (overhead + tables * perTable * grain) * 512);
  } finally {
    closeSync(fd);
  }
}

describeQemu('a VMDK with 17 M allocated grains', () => {
  it('checks clean and opens writable', { timeout: 120_000 }, async () => {
    qemuImg(['create', '-q', '-f', 'vmdk', file, '1200G']);
    fill();
    const storage = await FileStorage.open(file, { readOnly: true });
    try {
      const r = await checkVmdk(storage, { resolver: fileResolver });
      expect([r.corruptions, r.checkErrors, r.messages, r.allocatedGrains]).toEqual([0, 0, [], Math.ceil(GRAINS / 512) * 512]);
    } finally {
      await storage.close();
    }
    const writable = await FileStorage.open(file, { readOnly: false });
    try {
      const disk = await openVmdk(writable, { readOnly: false, resolver: fileResolver });
      await disk.write(0, new Uint8Array(4096).fill(1));
      await disk.close();
    } finally {
      await writable.close();
    }
  });
});
