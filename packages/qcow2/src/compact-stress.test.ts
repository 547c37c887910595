/**
 * The qcow-tool stress patterns on a 1 GiB qcow2 image (64 KiB clusters)
 * that qemu wrote: (1) every other cluster written; (2) every cluster
 * written, then every other one discarded. After sparsify and compact the
 * file ends within one cluster per table of what the image holds, `qemu-img
 * check` is clean and `qemu-img compare` identical to a copy taken before.
 * Pattern 2 prints the time and bytes moved beside `qemu-img convert -O
 * qcow2` to a new file (time, peak disk use: both files at once).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { compactQcow2 } from './compact.js';
import { sparsifyQcow2 } from './sparsify.js';

const GIB = 2 ** 30;
const CLUSTER = 64 * 1024;
const tmp = tempDir('qcow2-compact-stress-');
afterAll(() => tmp.cleanup());

/** Runs qemu-io commands, read from its standard input (one process for all of them). */
function io(file: string, commands: string[]): void {
  const r = spawnSync('qemu-io', ['-f', 'qcow2', file], { input: commands.join('\n') + '\nquit\n', encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
  expect(r.status, r.stderr).toBe(0);
}

function judged(file: string, before: string): void {
  const r = qemuCheck(file, 'qcow2');
  expect([r.status, r.result?.['corruptions'] ?? 0, r.result?.['leaks'] ?? 0], r.stderr).toEqual([0, 0, 0]);
  expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', before, file], { allowFail: true }).status, 'qemu-img compare').toBe(0);
}

async function sparsifyAndCompact(file: string) {
  const storage = await FileStorage.open(file, { readOnly: false });
  try {
    const t0 = performance.now();
    const sparsify = await sparsifyQcow2(storage);
    const t1 = performance.now();
    const compact = await compactQcow2(storage);
    const t2 = performance.now();
    return { sparsify, compact, sparsifyMs: t1 - t0, compactMs: t2 - t1 };
  } finally {
    await storage.close();
  }
}

const report: string[] = [];
afterAll(() => {
  if (report.length) process.stderr.write(`[qcow2 compact stress] ${report.join('\n  ')}\n`);
});

describeQemu('qcow-tool stress patterns on 1 GiB', () => {
  it('pattern 1: every other cluster written; sparsify and compact leave it as it is, within a cluster per table', async () => {
    const file = join(tmp.path, 'p1.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '1G']);
    const cmds: string[] = [];
    for (let c = 0; c < GIB / CLUSTER; c += 2) cmds.push(`write -q -P ${(c % 250) + 1} ${c * CLUSTER} ${CLUSTER}`);
    io(file, cmds);
    const before = `${file}.before`;
    copyFileSync(file, before);
    const r = await sparsifyAndCompact(file);
    expect(r.sparsify.clustersReleased).toBe(0);
    // Header, refcount table, refcount block, L1, 2 L2 tables, 8192 data clusters.
    expect(r.compact.sizeAfter).toBeLessThanOrEqual(r.compact.allocatedBytes + 4 * CLUSTER);
    expect(r.compact.allocatedBytes).toBeGreaterThanOrEqual((GIB / CLUSTER / 2) * CLUSTER);
    judged(file, before);
    unlinkSync(before);
    report.push(`pattern 1: ${r.compact.sizeBefore} -> ${r.compact.sizeAfter} bytes (allocated ${r.compact.allocatedBytes}), ${r.compact.bytesMoved} moved`);
  }, 600_000);

  it('pattern 2: all written, every other cluster discarded; compact moves the upper half down', async () => {
    const file = join(tmp.path, 'p2.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '1G']);
    const cmds = ['write -q -P 0x5a 0 1G'];
    for (let c = 0; c < GIB / CLUSTER; c += 2) cmds.push(`discard -q ${c * CLUSTER} ${CLUSTER}`);
    io(file, cmds);
    const before = `${file}.before`;
    copyFileSync(file, before);
    // qemu-img convert to a new file, for comparison: the old and the new file exist at once.
    const converted = join(tmp.path, 'p2-converted.qcow2');
    const c0 = performance.now();
    qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', file, converted]);
    const convertMs = performance.now() - c0;
    const peak = statSync(file).blocks * 512 + statSync(converted).blocks * 512;
    const convertedSize = statSync(converted).size;
    unlinkSync(converted);
    const r = await sparsifyAndCompact(file);
    expect(r.compact.bytesMoved).toBeGreaterThan(GIB / 4 - 4 * CLUSTER);
    expect(r.compact.sizeAfter).toBeLessThanOrEqual(r.compact.allocatedBytes + 4 * CLUSTER);
    expect(r.compact.sizeAfter).toBeLessThan(r.compact.sizeBefore / 2 + 8 * CLUSTER);
    judged(file, before);
    unlinkSync(before);
    const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
    report.push(
      `pattern 2: compact ${(r.compactMs / 1000).toFixed(1)} s (sparsify scan ${(r.sparsifyMs / 1000).toFixed(1)} s), ${mib(r.compact.bytesMoved)} moved, ` +
        `${mib(r.compact.sizeBefore)} -> ${mib(r.compact.sizeAfter)} (allocated ${mib(r.compact.allocatedBytes)}), no extra disk; ` +
        `qemu-img convert ${(convertMs / 1000).toFixed(1)} s, new file ${mib(convertedSize)}, peak disk ${mib(peak)}`,
    );
  }, 600_000);
});
