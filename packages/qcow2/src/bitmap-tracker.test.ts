/**
 * Persistent dirty bitmaps stay in step with qemu's: the same writes done
 * by qemu-io on one copy of an image and by us on another leave the same
 * bits in every bitmap, and qemu-img check stays clean.
 */
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { readU32Be, readU64Be } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, qemuInfo, qemuIo, tempDir } from '@img/testkit';
import { openQcow2 } from './open.js';
import { parseExtensions, parseBitmapsExtension } from './extensions.js';
import { parseHeader } from './header.js';
import { EXT_BITMAPS } from './constants.js';

/** Every bitmap's data bytes, by name (all-zero and all-one table entries expanded). */
function bitmapBits(path: string): Record<string, string> {
  const file = new Uint8Array(readFileSync(path));
  const h = parseHeader(file);
  const cs = 2 ** h.clusterBits;
  const ext = parseBitmapsExtension(parseExtensions(file, h.headerLength, cs).find((e) => e.type === EXT_BITMAPS))!;
  const out: Record<string, string> = {};
  let at = ext.bitmapDirectoryOffset;
  for (let i = 0; i < ext.nbBitmaps; i++) {
    const table = readU64Be(file, at);
    const size = readU32Be(file, at + 8);
    const nameSize = (file[at + 18]! << 8) | file[at + 19]!;
    const extra = readU32Be(file, at + 20);
    const name = new TextDecoder().decode(file.subarray(at + 24 + extra, at + 24 + extra + nameSize));
    const parts: string[] = [];
    for (let e = 0; e < size; e++) {
      const entry = readU64Be(file, table + e * 8);
      const host = entry - (entry % 512);
      if (host) parts.push(Buffer.from(file.subarray(host, host + cs)).toString('hex'));
      else parts.push(entry & 1 ? 'ones' : 'zeros');
    }
    out[name] = parts.map((p) => (/^0+$/.test(p) ? 'zeros' : p)).join('|');
    at = Math.ceil((at + 24 + extra + nameSize) / 8) * 8;
  }
  return out;
}

describeQemu('dirty bitmaps kept up to date', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-bitmaps-'));
  });
  afterAll(() => cleanup());

  it('the same writes set the same bits as qemu-io, enabled bitmaps only', async () => {
    const base = join(dir, 'base.qcow2');
    qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=4k', base, '4M']);
    qemuImg(['bitmap', '--add', base, 'fine']);
    qemuImg(['bitmap', '--add', '-g', '512', base, 'small']);
    qemuImg(['bitmap', '--add', '-g', '1M', base, 'coarse']);
    qemuImg(['bitmap', '--add', '--disable', base, 'off']);
    const theirs = join(dir, 'theirs.qcow2');
    const ours = join(dir, 'ours.qcow2');
    copyFileSync(base, theirs);
    copyFileSync(base, ours);
    const ops: Array<['write' | 'zero' | 'discard', number, number]> = [
      ['write', 1000, 5000],
      ['write', 65536, 65536],
      ['zero', 300_000, 70_000],
      ['discard', 2 * 1024 * 1024, 4096],
      ['write', 4 * 1024 * 1024 - 100, 100],
    ];
    qemuIo(
      theirs,
      'qcow2',
      ops.map(([op, at, len]) => `${op === 'write' ? 'write -P 0x11' : op === 'zero' ? 'write -z' : 'discard'} ${at} ${len}`),
    );
    const disk = await openQcow2(await FileStorage.open(ours, { readOnly: false }), { readOnly: false });
    for (const [op, at, len] of ops) {
      if (op === 'write') await disk.write(at, new Uint8Array(len).fill(0x11));
      else if (op === 'zero') await disk.writeZeroes(at, len);
      else await disk.discard(at, len);
    }
    await disk.close();
    const a = bitmapBits(theirs);
    const b = bitmapBits(ours);
    expect(b.off).toBe(a.off);
    expect(b.off).toMatch(/^zeros(\|zeros)*$/);
    for (const name of ['fine', 'small', 'coarse']) expect(a[name], name).not.toMatch(/^zeros(\|zeros)*$/);
    expect(b).toEqual(a);
    expect(qemuCheck(ours).status).toBe(0);
    const info = qemuInfo(ours, 'qcow2') as { 'format-specific': { data: { bitmaps: Array<{ name: string; flags: string[] }> } } };
    expect(info['format-specific'].data.bitmaps.map((x) => [x.name, x.flags])).toEqual([
      ['fine', ['auto']],
      ['small', ['auto']],
      ['coarse', ['auto']],
      ['off', []],
    ]);
  });

  it('a crash between a write and its flush leaves the bitmap marked in-use', async () => {
    const path = join(dir, 'crash.qcow2');
    qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=4k', path, '1M']);
    qemuImg(['bitmap', '--add', path, 'b']);
    const storage = await FileStorage.open(path, { readOnly: false });
    const disk = await openQcow2(storage, { readOnly: false });
    await disk.write(0, new Uint8Array(512).fill(1));
    // No flush, no close: what a crash would leave on disk.
    // -U: img still holds the image read-write, as a crashed VM's image would be found.
    const info = JSON.parse(qemuImg(['info', '-U', '--output=json', '-f', 'qcow2', path]).stdout) as { 'format-specific': { data: { bitmaps: Array<{ flags: string[] }> } } };
    expect(info['format-specific'].data.bitmaps[0]!.flags).toContain('in-use');
    await disk.close();
    const after = qemuInfo(path, 'qcow2') as { 'format-specific': { data: { bitmaps: Array<{ flags: string[] }> } } };
    expect(after['format-specific'].data.bitmaps[0]!.flags).not.toContain('in-use');
    expect(qemuCheck(path).status).toBe(0);
  });

  it('resizing an image with bitmaps keeps them, resized, as qemu-img 7.2 does (bitmap-resize.test.ts compares with it)', async () => {
    const path = join(dir, 'resize.qcow2');
    qemuImg(['create', '-f', 'qcow2', path, '1M']);
    qemuImg(['bitmap', '--add', path, 'b']);
    const disk = await openQcow2(await FileStorage.open(path, { readOnly: false }), { readOnly: false });
    await disk.resize(2 << 20);
    await disk.close();
    expect(qemuImg(['info', path]).stdout).toContain('name: b');
    expect(qemuImg(['check', path]).status).toBe(0);
  });
});
