#!/usr/bin/env node
/**
 * pnpm bench: runs the benchmark and writes its table into BENCHMARKS.md.
 *
 * Environment (all optional):
 *   IMG_BENCH_DIR      work directory for inputs and outputs (default /tmp/img-bench)
 *   IMG_BENCH_RUNS     timed runs per tool and row (default 5), after IMG_BENCH_WARMUP (default 1)
 *   IMG_BENCH_INPUTS   e.g. A,B (default A,B,C,D); none skips the conversion rows; E (for -c and the Disk API) is always made when needed
 *   IMG_BENCH_PAIRS    e.g. raw:qcow2,qcow2:raw (qemu format names; default all seven)
 *   IMG_BENCH_VMDK     inputs of the VMDK rows: raw->vmdk (monolithicSparse, streamOptimized), vmdk->raw (default A,E; none skips)
 *   IMG_BENCH_VMDK_PAIRS only these VMDK rows, by their pair label (e.g. "vmdk->raw,vmdk streamOptimized->raw"; default all four)
 *   IMG_BENCH_INPROC   inputs that also get in-process rows: convertFile() in one long-running Node process against whole qemu-img runs, for the conversion and VMDK rows (default A,C: the inputs with 64 MiB of data; none skips)
 *   IMG_BENCH_CACHE_NONE inputs that also get `-t none` rows (both tools write around the page cache and sync; default B,D; none skips)
 *   IMG_BENCH_COMPRESS deflate,zstd (default) or none; IMG_BENCH_COMPRESS_FROM raw (default) or raw,qcow2
 *   IMG_BENCH_DISK_OPS 4 KiB requests per Disk API row (default 100000; 0 skips)
 *   IMG_BENCH_NBD      0 skips the NBD row (nbdcopy from img serve vs qemu-nbd; needs libnbd-bin)
 *   IMG_BENCH_SCALE    shrink the inputs (e.g. 0.001 for a smoke run)
 *   IMG_BENCH_OUT      report path (default BENCHMARKS.md at the repository root); "-" prints it
 *   IMG_BENCH_KEEP=1   keep the inputs for the next run
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { configFromEnv, runBench } from './bench.mjs';
import { renderMarkdown, writeReport } from './report.mjs';

const cfg = configFromEnv();
const result = await runBench(cfg);
// The raw numbers, for a closer look (not committed).
writeFileSync(join(cfg.dir, 'last-run.json'), JSON.stringify(result, null, 2));
const markdown = renderMarkdown(result);
if (cfg.out === '-') process.stdout.write(`${markdown}\n`);
else {
  writeReport(cfg.out, markdown);
  process.stderr.write(`wrote ${cfg.out}\n`);
}
