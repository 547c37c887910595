// img dd beyond the rows it shares with qemu-img (qemu-spellings.test.ts): where img deliberately differs
// (a skip past the end fails with no file left; qemu-img prints the error, leaves an empty file and exits 0),
// the output's cost (holes stay holes), the same-file guard, and diskWindow's own contract.
import { existsSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, createRaw } from '@img/block';
import { describeQemu, qemuImg, tempDir, testImagesDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { parseDdOperands } from './cli/commands/dd.js';
import { diskWindow } from './disk-window.js';
import { run } from './test/cli.js';

const tmp = tempDir('img-dd-');
afterAll(() => tmp.cleanup());
const V3 = join(testImagesDir, 'qcow2/v3-64k.qcow2');

describe('img dd operands', () => {
  it('reads qemu-img dd operands with their defaults', () => {
    expect(parseDdOperands(['if=a', 'of=b'])).toEqual({ input: 'a', output: 'b', bs: 512, skip: 0 });
    expect(parseDdOperands(['bs=1M', 'count=1k', 'skip=2', 'if=a', 'of=b'])).toEqual({ input: 'a', output: 'b', bs: 1 << 20, count: 1024, skip: 2 });
  });
  it('refuses what qemu-img dd refuses, naming it', () => {
    expect(() => parseDdOperands(['if=a'])).toThrow('Must specify both input and output files');
    expect(() => parseDdOperands(['if=a', 'of=b', 'bs=0'])).toThrow('Must be between 1 and 2147483647');
    expect(() => parseDdOperands(['if=a', 'of=b', 'bs=2G'])).toThrow('Must be between 1 and 2147483647');
    expect(() => parseDdOperands(['if=a', 'of=b', 'bs=1x'])).toThrow('Invalid bs specified');
    expect(() => parseDdOperands(['if=a', 'of=b', 'conv=notrunc'])).toThrow('unrecognized operand conv=notrunc');
    expect(() => parseDdOperands(['if=a', 'of=b', 'count=many'])).toThrow("invalid number for count: 'many'");
    expect(() => parseDdOperands(['if=a', 'of=b', 'if=c'])).toThrow('if= given twice');
  });
});

describe('diskWindow', () => {
  it('reads and maps a range of a disk from its byte 0', async () => {
    const disk = await createRaw(new MemoryStorage(), { size: 8192 });
    await disk.write(4096, new Uint8Array(512).fill(7));
    const w = diskWindow(disk, 3584, 2048);
    expect(w.size).toBe(2048);
    const bytes = await w.read(0, 2048);
    expect(bytes.subarray(0, 512).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(512, 1024).every((b) => b === 7)).toBe(true);
    // The extents cover the window from 0, gap-free, with offsets relative to it.
    let at = 0;
    for await (const e of w.extents()) {
      expect(e.offset).toBe(at);
      at += e.length;
    }
    expect(at).toBe(2048);
    await expect(w.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
    await expect(w.read(2000, 100)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    expect(() => diskWindow(disk, 8000, 500)).toThrow(/outside the disk/);
    await disk.close();
  });
});

describeQemu('img dd as a user runs it', () => {
  it('a skip past the end fails and creates nothing (qemu-img leaves an empty file and exits 0)', () => {
    const out = join(tmp.path, 'past-end.raw');
    const r = run('img', ['dd', 'bs=64k', 'skip=17', `if=${V3}`, `of=${out}`]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('cannot skip to specified offset');
    expect(existsSync(out)).toBe(false);
  });

  it('leaves what the input does not hold sparse (qemu-img dd allocates every block)', () => {
    const src = join(tmp.path, 'sparse.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', src, '64M']);
    qemuImg(['convert', '-O', 'qcow2', '-n', V3, src], { allowFail: true });
    const ours = join(tmp.path, 'ours.qcow2');
    const theirs = join(tmp.path, 'theirs.qcow2');
    expect(run('img', ['dd', '-O', 'qcow2', 'bs=1M', `if=${src}`, `of=${ours}`]).status).toBe(0);
    qemuImg(['dd', '-O', 'qcow2', 'bs=1M', `if=${src}`, `of=${theirs}`]);
    expect(qemuImg(['compare', ours, theirs], { allowFail: true }).status).toBe(0);
    expect(statSync(ours).size * 4).toBeLessThan(statSync(theirs).size);
    expect(qemuImg(['check', ours], { allowFail: true }).status).toBe(0);
  });

  it('never writes its own input, through a link or not', () => {
    const input = join(tmp.path, 'self.raw');
    writeFileSync(input, new Uint8Array(4096).fill(1));
    const link = join(tmp.path, 'self-link.raw');
    symlinkSync(input, link);
    for (const of of [input, link]) {
      const r = run('img', ['dd', `if=${input}`, `of=${of}`]);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain('ERR_IMG_SAME_FILE');
    }
    expect(statSync(input).size).toBe(4096);
  });
});
