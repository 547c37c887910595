/**
 * sparsifyVhd and compactVhd on 1 GiB VHDs that qemu wrote (qemu-img
 * create -f vpc, qemu-io), judged by qemu: qemu-img compare identical to
 * the image before, qemu-img info and vhdiinfo parse the result, checkVhd
 * clean. The qcow-tool stress patterns: (1) every other block written;
 * (2) every block written, then every other block overwritten with zeros,
 * sparsified and compacted: the file ends within one block of what the
 * image holds. Pattern 2 also prints the time and bytes moved beside
 * `qemu-img convert -O vpc` to a new file (time, peak disk use).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, qemuInfo, tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { compactVhd } from './compact.js';
import { sparsifyVhd } from './sparsify.js';

const GIB = 2 ** 30;
const BLOCK = 2 * 1024 * 1024;
const SPAN = BLOCK + 512;
const hasVhdiinfo = spawnSync('vhdiinfo', ['-V']).status === 0;
const tmp = tempDir('vhd-compact-qemu-');
afterAll(() => tmp.cleanup());

/** Runs qemu-io commands on a vpc file, in batches (one process per batch). */
function qemuIo(file: string, commands: string[]): void {
  for (let i = 0; i < commands.length; i += 128) {
    const args = ['-f', 'vpc'];
    for (const c of commands.slice(i, i + 128)) args.push('-c', c);
    const r = spawnSync('qemu-io', [...args, file], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    expect(r.status, r.stderr).toBe(0);
  }
}

function blocksOf(size: number): number {
  return Math.ceil(size / BLOCK);
}

async function judged(file: string, before: string): Promise<void> {
  expect(qemuImg(['compare', '-f', 'vpc', '-F', 'vpc', before, file], { allowFail: true }).status, 'qemu-img compare').toBe(0);
  expect(qemuInfo(file, 'vpc')['format']).toBe('vpc');
  if (hasVhdiinfo) expect(spawnSync('vhdiinfo', [file], { encoding: 'utf8' }).status, 'vhdiinfo').toBe(0);
  const storage = await FileStorage.open(file);
  try {
    const r = await checkVhd(storage);
    expect([r.corruptions, r.leaks, r.checkErrors], r.messages.join('; ')).toEqual([0, 0, 0]);
  } finally {
    await storage.close();
  }
}

async function sparsifyAndCompact(file: string) {
  const storage = await FileStorage.open(file, { readOnly: false });
  try {
    const t0 = performance.now();
    const sparsify = await sparsifyVhd(storage);
    const t1 = performance.now();
    const compact = await compactVhd(storage);
    const t2 = performance.now();
    return { sparsify, compact, sparsifyMs: t1 - t0, compactMs: t2 - t1 };
  } finally {
    await storage.close();
  }
}

describeQemu('sparsify + compact on 1 GiB VHDs qemu wrote (qemu-img compare, info, vhdiinfo, check)', () => {
  it('pattern 1: every other block written; nothing to move, the file is what it holds', async () => {
    const file = join(tmp.path, 'p1.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', file, '1G']);
    const size = qemuInfo(file, 'vpc')['virtual-size'] as number;
    const cmds: string[] = [];
    for (let b = 0; b < blocksOf(size); b += 2) cmds.push(`write -q -P ${1 + (b % 250)} ${b * BLOCK} ${Math.min(BLOCK, size - b * BLOCK)}`);
    qemuIo(file, cmds);
    const before = join(tmp.path, 'p1-before.vhd');
    copyFileSync(file, before);
    const r = await sparsifyAndCompact(file);
    expect(r.sparsify.blocksFreed).toBe(0);
    expect(r.compact.blocksMoved).toBe(0);
    expect(r.compact.sizeAfter).toBe(statSync(file).size);
    expect(r.compact.sizeAfter - r.compact.allocatedBytes).toBeLessThanOrEqual(SPAN);
    await judged(file, before);
  }, 300_000);

  it('pattern 2: every block written, every other one zeroed, sparsified and compacted to within one block of what it holds', async () => {
    const file = join(tmp.path, 'p2.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', file, '1G']);
    const size = qemuInfo(file, 'vpc')['virtual-size'] as number;
    expect(size).toBeGreaterThan(GIB - 64 * 1024 * 1024);
    const blocks = blocksOf(size);
    const cmds: string[] = [];
    for (let b = 0; b < blocks; b++) cmds.push(`write -q -P ${1 + (b % 250)} ${b * BLOCK} ${Math.min(BLOCK, size - b * BLOCK)}`);
    for (let b = 0; b < blocks; b += 2) cmds.push(`write -q -z ${b * BLOCK} ${Math.min(BLOCK, size - b * BLOCK)}`);
    qemuIo(file, cmds);
    const before = join(tmp.path, 'p2-before.vhd');
    copyFileSync(file, before);
    const sizeBefore = statSync(file).size;
    const r = await sparsifyAndCompact(file);
    const zeroed = Math.ceil(blocks / 2);
    expect(r.sparsify.blocksFreed).toBe(zeroed);
    expect(r.compact.blocksMoved).toBeGreaterThan(0);
    expect(r.compact.sizeBefore).toBe(sizeBefore);
    expect(r.compact.sizeAfter).toBe(statSync(file).size);
    expect(r.compact.sizeAfter - r.compact.allocatedBytes).toBeLessThanOrEqual(SPAN);
    expect(r.compact.sizeAfter).toBeLessThanOrEqual(sizeBefore - zeroed * SPAN + SPAN);
    await judged(file, before);
    // Beside qemu's way to shrink a vpc image: convert to a new file (needs the source and the copy at once).
    const copy = join(tmp.path, 'p2-convert.vhd');
    const t0 = performance.now();
    qemuImg(['convert', '-f', 'vpc', '-O', 'vpc', before, copy]);
    const convertMs = performance.now() - t0;
    const copySize = statSync(copy).size;
    const mib = (n: number) => (n / 2 ** 20).toFixed(1);
    process.stderr.write(
      `[vhd compact 1 GiB pattern 2] sparsify ${r.sparsifyMs.toFixed(0)} ms (${r.sparsify.blocksFreed} blocks freed); ` +
        `compact ${r.compactMs.toFixed(0)} ms, ${r.compact.blocksMoved} blocks / ${mib(r.compact.bytesMoved)} MiB moved, ` +
        `${mib(sizeBefore)} -> ${mib(r.compact.sizeAfter)} MiB (allocated ${mib(r.compact.allocatedBytes)} MiB), peak disk ${mib(sizeBefore)} MiB; ` +
        `qemu-img convert -O vpc ${convertMs.toFixed(0)} ms, ${mib(copySize)} MiB new file, peak disk ${mib(sizeBefore + copySize)} MiB ` +
        `(img sparsify+compact / convert time ratio ${((r.sparsifyMs + r.compactMs) / convertMs).toFixed(2)})\n`,
    );
  }, 600_000);
});
