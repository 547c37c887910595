// Streams in and out, through the library and the built command with pipes.
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStorage, createRaw, openRaw } from '@img/block';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import { copyStreamToDisk, fromStream, toStream } from './streams.js';

const tmp = tempDir('img-streams-');
afterAll(() => tmp.cleanup());
const bin = new URL('../dist/bin/img-convert.js', import.meta.url).pathname;

function pipe(args: string[], input?: Buffer): { status: number; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { input, maxBuffer: 256 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString() };
}

async function* chunked(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

describe('raw streams through the library', () => {
  it('toStream(raw) yields exactly the announced length, holes as zeros', async () => {
    const storage = new MemoryStorage();
    const disk = await createRaw(storage, { size: 10 << 20 });
    await disk.write(3 << 20, seededBytes(100_000, 1));
    const s = await toStream(disk, 'raw');
    expect(s.length).toBe(10 << 20);
    const parts: Uint8Array[] = [];
    for await (const c of s.chunks) parts.push(c.slice());
    const all = Buffer.concat(parts);
    expect(all.length).toBe(s.length);
    expect(Buffer.compare(all, Buffer.from(storage.toBytes()))).toBe(0);
  });

  it('fromStream(raw) into a growing destination ends at the exact size', async () => {
    const data = new Uint8Array(5_000_000 + 300);
    data.set(seededBytes(70_000, 2), 4_000_000);
    const source = await fromStream(chunked(data, 65_536 + 7), 'raw');
    const dst = await createRaw(new MemoryStorage(), { size: 0 });
    await copyStreamToDisk(source, dst);
    expect(dst.size).toBe(5_000_704);
    expect(Buffer.compare(Buffer.from(await dst.read(0, data.length)), Buffer.from(data))).toBe(0);
  });

  it('refuses formats without a stream reader/writer with a clear error', async () => {
    const disk = await openRaw(MemoryStorage.from(new Uint8Array(512)));
    await expect(toStream(disk, 'nope')).rejects.toMatchObject({ code: 'ERR_IMG_UNKNOWN_FORMAT' });
  });
});

describeQemu('img-convert with pipes', () => {
  it('raw -> raw to stdout writes the whole disk', () => {
    const input = join(testImagesDir, 'raw', 'odd-size.img');
    const r = pipe(['raw', 'raw', input, '-']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.length).toBe(1000448);
    const out = join(tmp.path, 'odd.raw');
    writeFileSync(out, r.stdout);
    expect(qemuCompare(input, out, 'raw', 'raw')).toBe(true);
  });

  for (const dst of ['raw', 'qcow2', 'vhd']) {
    it(`cat x.img | img-convert raw ${dst} - out works`, () => {
      const input = join(testImagesDir, 'raw', 'demo.img');
      const out = join(tmp.path, `from-stdin.${dst}`);
      const r = pipe(['raw', dst, '-', out], readFileSync(input));
      expect(r.status, r.stderr).toBe(0);
      expect(qemuCompare(input, out, 'raw', dst === 'vhd' ? 'vpc' : dst)).toBe(true);
      if (dst === 'qcow2') expect(qemuCheck(out, 'qcow2').status).toBe(0);
      if (dst === 'raw') expect(statSync(out).blocks * 512).toBeLessThan(3 << 20);
    });
  }

  it('img-convert raw vhd in - produces a VHD of the announced length that qemu accepts, and reads back from a pipe', () => {
    const input = join(testImagesDir, 'raw', 'demo.img');
    const r = pipe(['raw', 'vhd', input, '-']);
    expect(r.status, r.stderr).toBe(0);
    const out = join(tmp.path, 'streamed.vhd');
    writeFileSync(out, r.stdout);
    expect(qemuCompare(input, out, 'raw', 'vpc')).toBe(true);
    // zero blocks were detected: only the blocks holding data are in the file
    expect(r.stdout.length).toBeLessThan(8 << 20);
    const back = join(tmp.path, 'back.raw');
    const b = pipe(['vhd', 'raw', '-', back], r.stdout);
    expect(b.status, b.stderr).toBe(0);
    expect(qemuCompare(input, back, 'raw', 'raw')).toBe(true);
  });

  it('the library announces the length before the first byte', async () => {
    const { openImageFile } = await import('./node.js');
    const disk = await openImageFile(join(testImagesDir, 'vhd', 'dynamic-default.vhd'), { format: 'vhd' });
    const s = await toStream(disk, 'vhd');
    let n = 0;
    for await (const c of s.chunks) n += c.length;
    await disk.close();
    expect(n).toBe(s.length);
  });

  it('img-convert raw qcow2 in - > out.qcow2: qemu-img check and compare accept it; cat out | img-convert qcow2 raw - works', () => {
    const input = join(testImagesDir, 'raw', 'demo.img');
    const r = pipe(['raw', 'qcow2', input, '-']);
    expect(r.status, r.stderr).toBe(0);
    const out = join(tmp.path, 'streamed.qcow2');
    writeFileSync(out, r.stdout);
    expect(qemuCheck(out, 'qcow2').status).toBe(0);
    expect(qemuCompare(input, out, 'raw', 'qcow2')).toBe(true);
    expect(r.stdout.length).toBeLessThan(3 << 20);
    const back = join(tmp.path, 'back-from-qcow2.raw');
    const b = pipe(['qcow2', 'raw', '-', back], r.stdout);
    expect(b.status, b.stderr).toBe(0);
    expect(qemuCompare(input, back, 'raw', 'raw')).toBe(true);
  });

  it('reads what qemu-img convert -O qcow2 writes, from a pipe', () => {
    const input = join(testImagesDir, 'raw', 'demo.img');
    const q = join(tmp.path, 'by-qemu.qcow2');
    qemuImg(['convert', '-O', 'qcow2', input, q]);
    const back = join(tmp.path, 'by-qemu.raw');
    const b = pipe(['qcow2', 'raw', '-', back], readFileSync(q));
    expect(b.status, b.stderr).toBe(0);
    expect(qemuCompare(input, back, 'raw', 'raw')).toBe(true);
  });

  it('refuses stream to stream', () => {
    const r = pipe(['raw', 'raw', '-', '-'], Buffer.alloc(512));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/cannot both be streams/);
  });
});
