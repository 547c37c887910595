import { diskExtents } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { createVmdk, type VmdkSubformat } from './create.js';
import { openVmdk } from './open.js';
import { streamVmdk } from './stream.js';

const dir = tempDir('vmdk-write-');
afterAll(() => dir.cleanup());
const at = (name: string) => join(dir.path, name);

const SIZE = 5 * 1024 * 1024 + 3 * 512; // not a whole number of grains
/** The guest content every test writes: data in whole grains, in parts of grains, at the very end, and zeros. */
function content(): Uint8Array {
  const raw = new Uint8Array(SIZE);
  raw.set(seededBytes(64 * 1024, 1), 0);
  raw.set(seededBytes(3000, 2), 200 * 1024 + 17);
  raw.set(seededBytes(1 << 20, 3), 2 << 20);
  raw.set(seededBytes(1536, 4), SIZE - 1536);
  return raw;
}

function vmdkinfo(path: string): string {
  const r = spawnSync('vmdkinfo', [path], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout : `failed: ${r.stderr}`;
}

const hasVmdkinfo = spawnSync('sh', ['-c', 'command -v vmdkinfo'], { stdio: 'ignore' }).status === 0 || process.env.CI === 'true';

async function writeThroughDisk(path: string, subformat: VmdkSubformat, options: Record<string, string> = {}): Promise<void> {
  const raw = content();
  const disk = await createVmdk(await FileStorage.create(path), { size: SIZE, subformat, resolver: fileResolver, ...options });
  // Out of order and in pieces, as sparseCopy may issue them.
  await Promise.all([disk.write(2 << 20, raw.subarray(2 << 20, 3 << 20)), disk.write(0, raw.subarray(0, 64 * 1024))]);
  await disk.write(200 * 1024, raw.subarray(200 * 1024, 200 * 1024 + 2048));
  await disk.write(200 * 1024 + 2048, raw.subarray(200 * 1024 + 2048, 204 * 1024));
  await disk.write(SIZE - 4096, raw.subarray(SIZE - 4096));
  await disk.close();
}

describeQemu('images we write, judged by qemu-img (and vmdkinfo)', () => {
  const raw = at('content.raw');
  writeFileSync(raw, content());

  for (const subformat of ['monolithicSparse', 'streamOptimized', 'monolithicFlat'] as const) {
    it(`${subformat} through the Disk API: qemu-img compare equal, check clean, vmdkinfo reads it`, async () => {
      const path = at(`disk-${subformat}.vmdk`);
      await writeThroughDisk(path, subformat);
      expect(qemuCompare(raw, path, 'raw', 'vmdk')).toBe(true);
      const check = qemuCheck(path, 'vmdk');
      expect(check.status, check.stderr).toBe(0);
      const info = JSON.parse(qemuImg(['info', '--output=json', path]).stdout) as { 'format-specific': { data: { 'create-type': string } } };
      expect(info['format-specific'].data['create-type']).toBe(subformat);
      if (hasVmdkinfo) expect(vmdkinfo(path)).toMatch(new RegExp(`Media size:.*\\(${SIZE} bytes\\)`));
      // And we read back what we wrote.
      const disk = await openVmdk(await FileStorage.open(path), { resolver: fileResolver });
      expect(Buffer.from(await disk.read(0, SIZE)).equals(Buffer.from(content()))).toBe(true);
      await disk.close();
    });
  }

  it('streamOptimized as a stream with no seek (a pipe): qemu-img and vmdkinfo read it identically', async () => {
    const src = await openRaw(raw);
    const s = await streamVmdk(src, { fileName: 'piped.vmdk' });
    expect(s.length).toBe(-1);
    const path = at('piped.vmdk');
    // A write stream appends only: no position is ever given.
    const out = createWriteStream(path);
    for await (const chunk of s.chunks) if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
    await new Promise<void>((r) => out.end(() => r()));
    await src.close();
    expect(qemuCompare(raw, path, 'raw', 'vmdk')).toBe(true);
    expect(qemuCheck(path, 'vmdk').status).toBe(0);
    if (hasVmdkinfo) expect(vmdkinfo(path)).toMatch(/Disk type:\s+Stream optimized/);
    // The VMware layout: header says GD_AT_END, footer marker + footer + end-of-stream marker close the file.
    const bytes = readFileSync(path);
    expect(bytes.readBigUInt64LE(56)).toBe(0xffff_ffff_ffff_ffffn);
    expect(bytes.readUInt32LE(bytes.length - 1536 + 12)).toBe(3);
    expect(bytes.subarray(bytes.length - 1024, bytes.length - 1020).toString('latin1')).toBe('KDMV');
    expect(bytes.subarray(bytes.length - 512).every((b) => b === 0)).toBe(true);
    const text = bytes.subarray(512, 512 * 21).toString('latin1');
    expect(text).toMatch(/createType="streamOptimized"/);
    expect(text).toMatch(/ddb.virtualHWVersion = "4"/);
    expect(text).toMatch(/RW 10243 SPARSE "piped.vmdk"/);
  });

  it('adapter_type, hwversion and toolsversion land in the descriptor qemu-img reads', async () => {
    const path = at('options.vmdk');
    await writeThroughDisk(path, 'monolithicSparse', { adapterType: 'lsilogic', hwVersion: '14', toolsVersion: '12345' });
    const text = readFileSync(path)
      .subarray(512, 512 * 21)
      .toString('latin1');
    expect(text).toMatch(/ddb.adapterType = "lsilogic"/);
    expect(text).toMatch(/ddb.virtualHWVersion = "14"/);
    expect(text).toMatch(/ddb.toolsVersion = "12345"/);
    expect(text).toMatch(/ddb.geometry.heads = "255"/);
    expect(qemuCheck(path, 'vmdk').status).toBe(0);
  });

  it('our extents of what we wrote match qemu-img map', async () => {
    const path = at('disk-monolithicSparse.vmdk');
    const disk = await openVmdk(await FileStorage.open(path));
    const ours = (await diskExtents(disk)).map((e) => [e.offset, e.length, e.kind]);
    await disk.close();
    const map = JSON.parse(qemuImg(['map', '--output=json', path]).stdout) as Array<{ start: number; length: number; data: boolean; present: boolean }>;
    const theirs: Array<[number, number, string]> = [];
    for (const m of map) {
      const kind = m.data ? 'data' : m.present ? 'zero' : 'hole';
      const last = theirs[theirs.length - 1];
      if (last && last[2] === kind && last[0] + last[1] === m.start) last[1] += m.length;
      else theirs.push([m.start, m.length, kind]);
    }
    expect(ours).toEqual(theirs);
  });
});

async function openRaw(path: string) {
  const { openRaw } = await import('@img/block');
  return openRaw(await FileStorage.open(path));
}
