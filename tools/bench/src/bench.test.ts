import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configFromEnv, runBench } from './bench.mjs';
import { renderMarkdown, targets, writeReport, START, END } from './report.mjs';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu) {
  if (process.env.CI) throw new Error('qemu-img is required in CI (qemu-utils)');
  console.warn('qemu-img not found: the bench smoke run is skipped (install qemu-utils)');
}

describe.skipIf(!haveQemu)('pnpm bench, smoke run (tiny inputs, no timing assertions)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'img-bench-smoke-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('converts every pair on tiny inputs, -c with both codecs and Disk API I/O, all outputs identical, and writes the report', async () => {
    const cfg = configFromEnv({
      IMG_BENCH_DIR: dir,
      IMG_BENCH_SCALE: '0.0005',
      IMG_BENCH_RUNS: '1',
      IMG_BENCH_WARMUP: '0',
      IMG_BENCH_INPUTS: 'A,B,D',
      IMG_BENCH_DISK_OPS: '64',
      IMG_BENCH_QUIET: '1',
      IMG_BENCH_COMPRESS_FROM: 'raw,qcow2',
    });
    const result = await runBench(cfg);
    expect(result.convert).toHaveLength(3 * 7);
    expect(result.compress).toHaveLength(4);
    expect(result.disk).toHaveLength(4);
    // VMDK rows on A and E: raw->vmdk, raw->vmdk streamOptimized, vmdk->raw, vmdk streamOptimized->raw.
    expect(result.vmdk).toHaveLength(8);
    for (const row of [...result.convert, ...result.compress, ...result.disk, ...result.vmdk]) {
      expect(row.ok, row.label).toBe(true);
      expect(row.img.wall).toBeGreaterThan(0);
      expect(row.qemu.wall).toBeGreaterThan(0);
    }
    const md = renderMarkdown(result);
    expect(md).toContain('| B | qcow2->vpc |');
    if (spawnSync('nbdcopy', ['--version']).status === 0) {
      expect(result.nbd).toHaveLength(1);
      expect(result.nbd[0].ok).toBe(true);
      expect(result.nbd[0].throughputRatio).toBeGreaterThan(0);
      expect(md).toContain('### NBD: nbdcopy from img serve vs qemu-nbd');
    }
    expect(md).toContain('raw->qcow2 -c zstd');
    expect(md).toContain('| E | raw->vmdk streamOptimized |');
    expect(targets(result).find((t: { target: string }) => t.target.startsWith('outputs identical')).met).toBe(true);
    // The report replaces only the generated section.
    const out = join(dir, 'BENCHMARKS.md');
    writeReport(out, 'first');
    const { readFileSync, writeFileSync } = await import('node:fs');
    writeFileSync(out, `# Title\n\nkept above\n\n${readFileSync(out, 'utf8').slice(readFileSync(out, 'utf8').indexOf(START))}\nkept below\n`);
    writeReport(out, md);
    const text = readFileSync(out, 'utf8');
    expect(text).toContain('kept above');
    expect(text).toContain('kept below');
    expect(text).not.toContain('first');
    expect(text.indexOf(START)).toBeLessThan(text.indexOf(END));
  }, 300_000);
});
