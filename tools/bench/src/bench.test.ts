import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configFromEnv, runBench } from './bench.mjs';
import { memoryLine, renderMarkdown, targets, writeReport, START, END } from './report.mjs';

const haveQemu = spawnSync('qemu-img', ['--version']).status === 0;
if (!haveQemu) {
  if (process.env.CI) throw new Error('qemu-img is required in CI (qemu-utils)');
  console.warn('qemu-img not found: the bench smoke run is skipped (install qemu-utils)');
}

describe('the report on the memory a run started with', () => {
  it('gives the free memory, the page cache and tmpfs, and warns when little was free', () => {
    const plenty = memoryLine({ free: 12 * 1024, cached: 6 * 1024, shmem: 512 });
    expect(plenty).toBe('- Memory at start: 12.0 GiB free, 6.0 GiB page cache (0.5 GiB of it tmpfs, which only swap can free)');
    const low = memoryLine({ free: 4 * 1024, cached: 19 * 1024, shmem: 4 * 1024 });
    expect(low).toMatch(/^- \*\*Little free memory at start\*\*: 4\.0 GiB free, 19\.0 GiB page cache \(4\.0 GiB of it tmpfs/);
    expect(low).toContain('remove old scratch files');
  });
});

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
      IMG_BENCH_VMDK: 'A,B,E',
    });
    const result = await runBench(cfg);
    expect(result.convert).toHaveLength(3 * 7);
    expect(result.compress).toHaveLength(4);
    expect(result.disk).toHaveLength(4);
    // VMDK rows on A, B and E: raw->vmdk, raw->vmdk streamOptimized, vmdk->raw, vmdk streamOptimized->raw.
    expect(result.vmdk).toHaveLength(12);
    expect(result.vmdk.filter((r: { input: string }) => r.input === 'B')).toHaveLength(4);
    // In-process rows (IMG_BENCH_INPROC defaults to A): every pair and every VMDK row of A, convertFile() in one running process.
    expect(result.inproc).toHaveLength(7 + 4);
    expect(result.inproc.every((r: { input: string; inProcess: boolean }) => r.input === 'A' && r.inProcess)).toBe(true);
    expect(result.inproc.filter((r: { vmdk?: boolean }) => r.vmdk)).toHaveLength(4);
    for (const row of [...result.convert, ...result.compress, ...result.disk, ...result.vmdk, ...result.inproc]) {
      expect(row.ok, row.label).toBe(true);
      expect(row.img.wall).toBeGreaterThan(0);
      expect(row.qemu.wall).toBeGreaterThan(0);
    }
    const md = renderMarkdown(result);
    expect(md).toContain('| B | qcow2->vpc |');
    if (process.platform === 'linux') expect(md).toMatch(/^- (Memory|\*\*Little free memory) at start/m);
    if (spawnSync('nbdcopy', ['--version']).status === 0) {
      expect(result.nbd).toHaveLength(1);
      expect(result.nbd[0].ok).toBe(true);
      expect(result.nbd[0].throughputRatio).toBeGreaterThan(0);
      expect(md).toContain('### NBD: nbdcopy from img serve vs qemu-nbd');
    }
    expect(md).toContain('raw->qcow2 -c zstd');
    expect(md).toContain('| E | raw->vmdk streamOptimized |');
    expect(md).toContain('| B | vmdk streamOptimized->raw |');
    expect(md).toContain('### In-process (small inputs): convertFile() in a running Node process');
    expect(md).toContain('| A | vmdk: vmdk streamOptimized->raw |');
    expect(md).toContain('| A | qcow2->raw |');
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

describe('in-process rows', () => {
  const row = (pair: string, ratio: number, vmdk = true) => ({ input: 'A', pair, ratio, vmdk, inProcess: true, ok: true, img: { wall: ratio, cpu: 0, rssMiB: 500 }, qemu: { wall: 1, cpu: 0, rssMiB: 1 } });
  const base = { convert: [], compress: [], disk: [], vmdk: [], nbd: [] };
  const inprocTarget = (inproc: unknown[]) => targets({ ...base, inproc }).find((t: { target: string }) => t.target.startsWith('vmdk rows with 64 MiB'));

  it('judge the VMDK rows at 0.8x and the streamOptimized write at 0.7x, and stay out of the RSS target', () => {
    expect(inprocTarget([row('vmdk->raw', 0.79), row('raw->vmdk streamOptimized', 0.69)]).met).toBe(true);
    expect(inprocTarget([row('vmdk->raw', 0.79), row('raw->vmdk streamOptimized', 0.75)]).met).toBe(false);
    expect(inprocTarget([row('vmdk->raw', 0.81)]).met).toBe(false);
    expect(inprocTarget([]).met).toBe(false);
    // Conversion rows are reported, not judged by the VMDK target.
    expect(inprocTarget([row('raw->qcow2', 3, false), row('vmdk->raw', 0.5)]).met).toBe(true);
    // Whole-process VMDK rows of the small input A are reported, not judged; those of E are.
    const whole = (vmdk: unknown[]) => targets({ ...base, vmdk }).find((t: { target: string }) => t.target.startsWith('vmdk rows with 1 GiB'));
    expect(whole([row('vmdk->raw', 1.3), { ...row('vmdk->raw', 0.5), input: 'E' }]).met).toBe(true);
    expect(whole([{ ...row('vmdk->raw', 0.9), input: 'E' }]).met).toBe(false);
    const all = targets({ ...base, vmdk: [row('vmdk->raw', 0.5)], inproc: [row('vmdk->raw', 0.5)] });
    expect(all.find((t: { target: string }) => t.target.startsWith('peak RSS')).detail).toBe('max 500 MiB');
  });

  it('judge rows with a GiB of data whole-process and the 64 MiB inputs in-process', () => {
    const conv = (input: string, ratio: number) => ({ ...row('raw->qcow2', ratio, false), input, inProcess: undefined });
    const find = (r: object, name: string) => targets({ ...base, ...r }).find((t: { target: string }) => t.target.startsWith(name));
    // A whole-process C row over 0.8x does not count against the data-bound target; a B row does.
    expect(find({ convert: [conv('B', 0.79), conv('D', 0.7), conv('C', 1.9)] }, 'conversion rows with 1 GiB').met).toBe(true);
    expect(find({ convert: [conv('B', 0.81), conv('C', 0.5)] }, 'conversion rows with 1 GiB').met).toBe(false);
    expect(
      find(
        {
          inproc: [
            { ...row('raw->qcow2', 0.6, false), input: 'C' },
            { ...row('qcow2->raw', 0.79, false), input: 'A' },
          ],
        },
        'conversion rows with 64 MiB',
      ).met,
    ).toBe(true);
    expect(find({ inproc: [{ ...row('raw->qcow2', 0.85, false), input: 'C' }] }, 'conversion rows with 64 MiB').met).toBe(false);
    // In-process VMDK rows belong to the VMDK target, and none at all is not met.
    expect(find({ inproc: [row('vmdk->raw', 0.5)] }, 'conversion rows with 64 MiB').met).toBe(false);
  });

  it.skipIf(!haveQemu)(
    'the running process answers with the conversion time, and a failed conversion is an error',
    async () => {
      const { startInproc } = await import('./inproc-bench.mjs');
      const dir = mkdtempSync(join(tmpdir(), 'img-bench-inproc-'));
      const runner = startInproc();
      try {
        const raw = join(dir, 'in.raw');
        spawnSync('qemu-img', ['create', '-f', 'raw', raw, '1M']);
        const sample = await runner.convert({ srcFormat: 'raw', dstFormat: 'vmdk', input: raw, output: join(dir, 'out.vmdk'), createOptions: { subformat: 'streamOptimized' } });
        expect(sample.wall).toBeGreaterThan(0);
        expect(sample.rssMiB).toBeGreaterThan(0);
        expect(spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', raw, join(dir, 'out.vmdk')]).status).toBe(0);
        expect(spawnSync('qemu-img', ['info', join(dir, 'out.vmdk')]).stdout.toString()).toContain('streamOptimized');
        await expect(runner.convert({ srcFormat: 'raw', dstFormat: 'vmdk', input: join(dir, 'missing.raw'), output: join(dir, 'x.vmdk') })).rejects.toThrow(/in-process raw->vmdk/);
      } finally {
        await runner.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
    60_000,
  );
});

it('reads the in-process inputs and the VMDK row filter from the environment', () => {
  expect(configFromEnv({}).inproc).toEqual(['A', 'C']);
  expect(configFromEnv({ IMG_BENCH_INPROC: 'none' }).inproc).toEqual([]);
  expect(configFromEnv({ IMG_BENCH_INPROC: 'A,B' }).inproc).toEqual(['A', 'B']);
  expect(configFromEnv({}).vmdkPairs).toBeUndefined();
  expect(configFromEnv({ IMG_BENCH_VMDK_PAIRS: 'vmdk->raw, vmdk streamOptimized->raw' }).vmdkPairs).toEqual(['vmdk->raw', 'vmdk streamOptimized->raw']);
});
