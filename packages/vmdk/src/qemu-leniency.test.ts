// Header and marker fields qemu-img does not look at, which img ignores too (audit findings 11 and 12): the newline
// detection characters of a sparse header, and the lba of a grain marker in a file (the grain table places the grain).
// A stream has no grain table yet, so there the marker's lba is what places a grain.
import { ImageError, MemoryStorage } from '@img/block';
import { describeQemu, qemuImg, readVmdkBytes, tempDir, testImagesDir, type VmdkBytes } from '@img/testkit';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openVmdk } from './open.js';
import { readVmdkStream } from './read-stream.js';

const fixture = (name: string): VmdkBytes => readVmdkBytes(join(testImagesDir, 'vmdk', name));

async function readWhole(bytes: Uint8Array): Promise<Uint8Array> {
  const disk = await openVmdk(MemoryStorage.from(bytes, { name: 'x.vmdk', readOnly: true }));
  try {
    return await disk.read(0, disk.size);
  } finally {
    await disk.close();
  }
}

async function readPipe(bytes: Uint8Array): Promise<Uint8Array> {
  const source = await readVmdkStream(
    (async function* () {
      for (let at = 0; at < bytes.length; at += 65536) yield bytes.subarray(at, at + 65536);
    })(),
  );
  const out = new Uint8Array(source.size);
  for await (const p of source.pieces) out.set(p.data, p.offset);
  return out;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/** Text-mode damage to the four newline detection characters (flags bit 0 set). */
function alteredNewlines(): { bytes: Uint8Array; original: Uint8Array } {
  const v = fixture('sparse.vmdk');
  const original = v.bytes.slice();
  expect(v.view.getUint32(8, true) & 1).toBe(1);
  v.bytes.set([0x0a, 0x20, 0x0a, 0x0a], 73);
  return { bytes: v.bytes, original };
}

/** Every grain marker of a streamOptimized file (those its grain tables point at) given lba 0. */
function markersAtLbaZero(): { bytes: Uint8Array; original: Uint8Array; markers: number } {
  const v = fixture('stream-qemu.vmdk');
  const original = v.bytes.slice();
  const capacity = Number(v.view.getBigUint64(12, true));
  const grainSize = Number(v.view.getBigUint64(20, true));
  const perTable = v.view.getUint32(44, true);
  const tables = Math.ceil(capacity / (grainSize * perTable));
  let markers = 0;
  for (let t = 0; t < tables; t++) {
    if (v.view.getUint32(v.gdOffset + 4 * t, true) === 0) continue;
    const table = v.tableOffset(t);
    for (let i = 0; i < perTable; i++) {
      const sector = v.view.getUint32(table + 4 * i, true);
      if (sector > 1) {
        v.view.setBigUint64(sector * 512, 0n, true);
        markers++;
      }
    }
  }
  return { bytes: v.bytes, original, markers };
}

describe('fields qemu-img ignores', () => {
  it('altered newline detection characters: the file reads as before (they were ERR_IMG_CORRUPT)', async () => {
    const { bytes, original } = alteredNewlines();
    expect(same(await readWhole(bytes), await readWhole(original))).toBe(true);
  });

  it('grain markers whose lba disagrees with the grain table: a file reads by the table (it was ERR_IMG_CORRUPT)', async () => {
    const { bytes, original, markers } = markersAtLbaZero();
    expect(markers).toBeGreaterThan(1);
    expect(same(await readWhole(bytes), await readWhole(original))).toBe(true);
  });

  it('the same stream from a pipe goes by the markers: every grain claims sector 0, so the second is ERR_IMG_CORRUPT', async () => {
    const { bytes, original } = markersAtLbaZero();
    expect(same(await readPipe(original), await readWhole(original))).toBe(true);
    const e = await readPipe(bytes).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(ImageError.isInstance(e) && e.code).toBe('ERR_IMG_CORRUPT');
    expect((e as Error).message).toMatch(/grain marker at 0x[0-9a-f]+ is for sector 0: not the start of a grain inside the disk, or a grain already seen/);
  });
});

const dir = tempDir('vmdk-lenient-');
afterAll(() => dir.cleanup());

describeQemu('fields qemu-img ignores: qemu-img reads the same bytes', () => {
  for (const [name, make] of [
    ['newlines', alteredNewlines],
    ['marker-lba', markersAtLbaZero],
  ] as const) {
    it(`${name}: qemu-img convert -O raw equals what img reads`, async () => {
      const { bytes } = make();
      const file = join(dir.path, `${name}.vmdk`);
      writeFileSync(file, bytes);
      qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', file, `${file}.raw`]);
      expect(same(readFileSync(`${file}.raw`), await readWhole(bytes))).toBe(true);
    });
  }
});

describeQemu('a sparse extent that ends before its first grain is refused at open, as qemu-img refuses it', () => {
  it('cut inside the metadata: ERR_IMG_CORRUPT naming the file, its size and where grains start; one byte into the last metadata sector opens', async () => {
    const full = join(dir.path, 'cut-full.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', full, '32M']);
    const bytes = readFileSync(full);
    const overHead = Number(bytes.readBigUInt64LE(64));
    const grains = overHead * 512;
    for (const size of [600, 30000, grains - 512]) {
      const cut = join(dir.path, `cut-${size}.vmdk`);
      writeFileSync(cut, bytes.subarray(0, size));
      expect(qemuImg(['info', cut], { allowFail: true }).stderr).toContain(`File truncated, expecting at least ${grains} bytes`);
      const err = await openVmdk(MemoryStorage.from(bytes.subarray(0, size), { name: 'cut.vmdk' })).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(ImageError.isInstance(err)).toBe(true);
      expect((err as ImageError).code).toBe('ERR_IMG_CORRUPT');
      expect((err as Error).message).toBe(`vmdk: cut.vmdk: the file is truncated: it is ${size} bytes, and its grains start at sector ${overHead} (${grains} bytes)`);
    }
    // qemu counts whole sectors: a file one byte into the sector before the first grain opens in both.
    const partial = join(dir.path, 'cut-partial.vmdk');
    writeFileSync(partial, bytes.subarray(0, grains - 511));
    expect(qemuImg(['info', partial]).status).toBe(0);
    await (await openVmdk(MemoryStorage.from(bytes.subarray(0, grains - 511), { name: 'cut.vmdk' }))).close();
  });
});
