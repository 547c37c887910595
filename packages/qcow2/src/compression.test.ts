import { describe, expect, it } from 'vitest';
import { deflateRawSync } from 'node:zlib';
import { ImageError } from '@img/block';
import { seededBytes } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as zlib from 'node:zlib';
import { decompressCluster, compressCluster, copyZstdFrame, zstdEncoderKind } from './compression.js';
import { zstdModulePaths } from './node/zstd-native.js';

const ctx = { file: 'x.qcow2', hostOffset: 0x1234 };
const CS = 512;

/** A zstd frame of one raw or RLE block (single segment, 4-byte content size) holding `data`. */
function zstdRawFrame(data: Uint8Array, { rle = false } = {}): Uint8Array {
  const out: number[] = [0x28, 0xb5, 0x2f, 0xfd, 0xa0]; // magic; FHD: FCS flag 2 (4 bytes), single segment
  const fcs = data.length;
  out.push(fcs & 0xff, (fcs >> 8) & 0xff, 0, 0);
  const size = data.length;
  const type = rle ? 1 : 0;
  const bh = 1 | (type << 1) | (size << 3);
  out.push(bh & 0xff, (bh >> 8) & 0xff, bh >> 16);
  if (rle) out.push(data[0]!);
  else out.push(...data);
  return new Uint8Array(out);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(parts.flatMap((p) => [...p]));
}

function corruptMessage(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(ImageError.isInstance(e)).toBe(true);
    expect((e as ImageError).code).toBe('ERR_IMG_CORRUPT');
    return (e as Error).message;
  }
  throw new Error('expected ERR_IMG_CORRUPT');
}

describe('deflate clusters', () => {
  const data = seededBytes(CS, 3).map((b) => b & 7);
  it('inflate exactly one cluster, ignoring bytes after the stream', () => {
    const z = deflateRawSync(data);
    expect(decompressCluster(0, concat(z, new Uint8Array([1, 2, 3, 4])), CS, ctx)).toEqual(data);
  });
  it('more or less than one cluster is corrupt, and bounded', () => {
    expect(corruptMessage(() => decompressCluster(0, deflateRawSync(new Uint8Array(CS - 1)), CS, ctx))).toMatch(/instead of one cluster/);
    expect(corruptMessage(() => decompressCluster(0, deflateRawSync(new Uint8Array(64 * 1024 * 1024)), CS, ctx))).toMatch(/more than one cluster/);
    expect(corruptMessage(() => decompressCluster(0, new Uint8Array([0xff, 0xff, 0xff]), CS, ctx))).toMatch(/qcow2: x.qcow2: compressed cluster at 0x1234/);
  });
  it('round trip through compressCluster, which refuses what does not shrink', async () => {
    const z = (await compressCluster(0, data))!;
    expect(z.length).toBeLessThan(CS);
    expect(decompressCluster(0, z, CS, ctx)).toEqual(data);
    expect(await compressCluster(0, seededBytes(CS, 9))).toBeUndefined();
  });
});

describe('zstd clusters', () => {
  const data = seededBytes(CS, 4);
  it('one frame, with whatever follows it', () => {
    expect(decompressCluster(1, concat(zstdRawFrame(data), new Uint8Array([9, 9, 9])), CS, ctx)).toEqual(data);
  });
  it('several frames and skippable frames until one cluster is produced', () => {
    const skippable = new Uint8Array([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 7, 7, 7]);
    const input = concat(skippable, zstdRawFrame(data.subarray(0, 300)), zstdRawFrame(data.subarray(300)), new Uint8Array(40));
    expect(decompressCluster(1, input, CS, ctx)).toEqual(data);
  });
  it('round trip through compressCluster (zstd, node:zlib or WebAssembly)', async () => {
    const text = new TextEncoder().encode('zstd in a qcow2 cluster '.repeat(200)).subarray(0, 4096);
    const z = (await compressCluster(1, text))!;
    expect(z.length).toBeLessThan(1000);
    expect(decompressCluster(1, z, 4096, ctx)).toEqual(text);
    expect(await compressCluster(1, seededBytes(4096, 9))).toBeUndefined();
  });
  it('a frame of many tiny blocks that would expand to gigabytes stops at one cluster', () => {
    // 60000 RLE blocks of 128 KiB each: 7.5 GiB from 240 KB of input.
    const blocks = 60000;
    const frame = new Uint8Array(4 + 2 + blocks * 4);
    frame.set([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58], 0); // no content size, 32 MiB... window descriptor 0x58: 2^21 = 2 MiB
    for (let i = 0; i < blocks; i++) {
      const last = i === blocks - 1 ? 1 : 0;
      const bh = last | (1 << 1) | ((128 * 1024) << 3);
      frame.set([bh & 0xff, (bh >> 8) & 0xff, bh >> 16, 7], 6 + i * 4);
    }
    const before = process.memoryUsage().arrayBuffers;
    expect(corruptMessage(() => decompressCluster(1, frame, 65536, ctx))).toMatch(/more than one cluster/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * 1024 * 1024);
  });
  it('RLE blocks', () => {
    expect(decompressCluster(1, zstdRawFrame(new Uint8Array(CS).fill(0x42), { rle: true }), CS, ctx)).toEqual(new Uint8Array(CS).fill(0x42));
  });
  it('too much, too little, truncated, a huge window, not zstd: corrupt', () => {
    expect(corruptMessage(() => decompressCluster(1, zstdRawFrame(seededBytes(CS + 100, 1)), CS, ctx))).toMatch(/more than one cluster/);
    expect(corruptMessage(() => decompressCluster(1, concat(zstdRawFrame(data.subarray(0, 300)), new Uint8Array(16)), CS, ctx))).toMatch(/not zstd data/);
    expect(corruptMessage(() => decompressCluster(1, zstdRawFrame(data).subarray(0, 100), CS, ctx))).toMatch(/ends inside/);
    // Not single segment, window descriptor 0xf8: 2^41-byte window.
    const huge = new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 1 | (0 << 1) | (4 << 3), 0, 0, 1, 2, 3, 4]);
    expect(corruptMessage(() => decompressCluster(1, huge, CS, ctx))).toMatch(/window/);
    expect(corruptMessage(() => decompressCluster(1, new Uint8Array(64), CS, ctx))).toMatch(/not zstd data/);
  });
});

describe('zstd encoders', () => {
  /** What a streaming encoder writes: no content size, a 2 MiB window descriptor, raw blocks. */
  function streamingFrame(data: Uint8Array, fhd = 0x00, checksum = false): Uint8Array {
    const out: number[] = [0x28, 0xb5, 0x2f, 0xfd, fhd, 0x58];
    const bh = 1 | (0 << 1) | (data.length << 3);
    out.push(bh & 0xff, (bh >> 8) & 0xff, bh >> 16, ...data);
    if (checksum) out.push(1, 2, 3, 4);
    return new Uint8Array(out);
  }
  function copied(frame: Uint8Array, size: number): Uint8Array {
    const out = new Uint8Array(frame.length + 8);
    return out.subarray(0, copyZstdFrame(frame, size, out, 0));
  }

  it('a streaming frame gets the single-segment header with its content size (1, 2 or 4 bytes) and decodes the same', () => {
    for (const [size, fhd, fcs] of [
      [100, 0x20, [100]],
      [300, 0x60, [44, 0]],
      [65536, 0x60, [0x00, 0xff]],
      [65792, 0xa0, [0x00, 0x01, 0x01, 0x00]],
    ] as const) {
      const data = seededBytes(size, size);
      const frame = copied(streamingFrame(data), size);
      expect([...frame.subarray(0, 5 + fcs.length)], `${size}`).toEqual([0x28, 0xb5, 0x2f, 0xfd, fhd, ...fcs]);
      expect(frame.length).toBe(streamingFrame(data).length - 1 + fcs.length);
      expect(decompressCluster(1, frame, size, ctx)).toEqual(data);
    }
    // The checksum flag stays, and so do the checksum's bytes.
    const withSum = copied(streamingFrame(seededBytes(300, 1), 0x04, true), 300);
    expect(withSum[4]).toBe(0x64);
    expect([...withSum.subarray(-4)]).toEqual([1, 2, 3, 4]);
  });

  it('frames that already declare a size, use a dictionary, or are not zstd are copied as they are', () => {
    const data = seededBytes(300, 2);
    for (const frame of [zstdRawFrame(data), streamingFrame(data, 0x01), new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])]) {
      const out = new Uint8Array(frame.length + 10).fill(0xee);
      expect(copyZstdFrame(frame, 300, out, 3)).toBe(frame.length);
      expect(out.subarray(3, 3 + frame.length)).toEqual(frame);
      expect(out[2]).toBe(0xee);
      expect(out[3 + frame.length]).toBe(0xee);
    }
  });

  it('uses the native addon where it is installed; its clusters carry their size and round-trip', async () => {
    const kind = await zstdEncoderKind();
    const nodeHasZstd = typeof (zlib as { zstdCompressSync?: unknown }).zstdCompressSync === 'function';
    if (nodeHasZstd) expect(kind).toBe('node:zlib');
    else expect(kind).toBe(zstdModulePaths().native.length > 0 && process.env.IMG_ZSTD !== 'wasm' ? 'native' : 'wasm');
    const text = new TextEncoder().encode('native zstd in a qcow2 cluster, '.repeat(3000)).subarray(0, 65536);
    const z = (await compressCluster(1, text))!;
    // Single segment with a 2-byte content size, as qemu and ZSTD_compress write it.
    expect([...z.subarray(0, 7)]).toEqual([0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0xff]);
    expect(decompressCluster(1, z, 65536, ctx)).toEqual(text);
  });

  it('IMG_ZSTD=wasm falls back to libzstd in WebAssembly, with the same header form', () => {
    const dist = fileURLToPath(new URL('../dist/compression.js', import.meta.url));
    const node = fileURLToPath(new URL('../dist/node/codecs.js', import.meta.url));
    if (!existsSync(dist) || !existsSync(node)) return; // the package is built before its tests in the workspace pipeline
    const script = `
      import { compressCluster, decompressCluster, zstdEncoderKind } from ${JSON.stringify(dist)};
      import { installNodeCodecs } from ${JSON.stringify(node)};
      installNodeCodecs();
      const text = new TextEncoder().encode('wasm zstd in a qcow2 cluster, '.repeat(3000)).subarray(0, 65536);
      const z = await compressCluster(1, text);
      const back = decompressCluster(1, z, 65536, { hostOffset: 0 });
      console.log(await zstdEncoderKind(), [...z.subarray(0, 7)].join(','), back.every((b, i) => b === text[i]));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, IMG_ZSTD: 'wasm' }, timeout: 20_000 });
    expect(r.stdout.trim(), r.stderr).toBe('wasm 40,181,47,253,96,0,255 true');
  });
});
