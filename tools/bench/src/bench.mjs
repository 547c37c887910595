/**
 * The benchmark of issue 7: img-convert against qemu-img convert on the
 * same inputs, alternately, with a warm page cache; -c against -c; 4 KiB
 * Disk API I/O against `qemu-img bench`. Every output of img-convert is
 * checked with `qemu-img compare`, so a fast wrong answer cannot win.
 */
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureInput, layouts } from './inputs.mjs';
import { haveNbdTools, nbdRow } from './nbd-bench.mjs';
import { vmdkRows } from './vmdk-bench.mjs';
import { startInproc } from './inproc-bench.mjs';
import { LOW_FREE_MIB, cachedMiB, childEnv, clearOutputs, median, memoryMiB, reportedKiB, run, timed } from './proc.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
export const repoRoot = join(here, '..', '..', '..');
const IMG_CONVERT = join(repoRoot, 'packages', 'convert', 'dist', 'bin', 'img-convert.js');
const IMG = join(repoRoot, 'packages', 'convert', 'dist', 'bin', 'img.js');
const DISK_BENCH = join(here, 'disk-bench.mjs');

/** qemu's format names and our file suffixes. */
const EXT = { raw: 'raw', qcow2: 'qcow2', vpc: 'vhd' };
export const ALL_PAIRS = ['raw:qcow2', 'qcow2:raw', 'vpc:qcow2', 'qcow2:vpc', 'qcow2:qcow2', 'vpc:vpc', 'raw:vpc'];

/** Benchmark settings, from IMG_BENCH_* environment variables. */
export function configFromEnv(env = process.env) {
  const list = (v, d) =>
    v
      ? v
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : d;
  return {
    dir: env.IMG_BENCH_DIR ?? '/tmp/img-bench',
    runs: Number(env.IMG_BENCH_RUNS ?? 5),
    warmup: Number(env.IMG_BENCH_WARMUP ?? 1),
    scale: Number(env.IMG_BENCH_SCALE ?? 1),
    inputs: list(env.IMG_BENCH_INPUTS, ['A', 'B', 'C', 'D']).filter((n) => n !== 'none'),
    pairs: list(env.IMG_BENCH_PAIRS, ALL_PAIRS),
    compress: list(env.IMG_BENCH_COMPRESS, ['deflate', 'zstd']).filter((c) => c !== 'none' && c !== '0'),
    compressFrom: list(env.IMG_BENCH_COMPRESS_FROM, ['raw']),
    vmdkFrom: list(env.IMG_BENCH_VMDK, ['A', 'E']).filter((n) => n !== 'none'),
    inproc: list(env.IMG_BENCH_INPROC, ['A', 'C']).filter((n) => n !== 'none'),
    cacheNone: list(env.IMG_BENCH_CACHE_NONE, ['B', 'D']).filter((n) => n !== 'none'),
    vmdkPairs: list(env.IMG_BENCH_VMDK_PAIRS, undefined),
    diskOps: Number(env.IMG_BENCH_DISK_OPS ?? 100000),
    diskDepth: Number(env.IMG_BENCH_DISK_DEPTH ?? 16),
    nbd: env.IMG_BENCH_NBD !== '0',
    out: env.IMG_BENCH_OUT ?? join(repoRoot, 'BENCHMARKS.md'),
    keep: env.IMG_BENCH_KEEP === '1',
    log: env.IMG_BENCH_QUIET === '1' ? () => {} : (s) => process.stderr.write(`${s}\n`),
  };
}

async function compare(aFmt, a, bFmt, b) {
  const r = await run('qemu-img', ['compare', '-f', aFmt, '-F', bFmt, a, b], { allowFail: true });
  return r.code === 0;
}

function summarise(samples) {
  return {
    wall: median(samples.map((s) => s.wall)),
    loop: median(samples.map((s) => s.loop)),
    cpu: median(samples.map((s) => s.cpu)),
    rssMiB: Math.max(...samples.map((s) => s.rssMiB)),
    reclaimMiB: median(samples.map((s) => s.reclaimMiB)),
    cachedMiB: median(samples.map((s) => s.cachedMiB ?? NaN)),
  };
}

/**
 * Runs `img` and `qemu` alternately (warm-up first, not recorded), and
 * checks img's last output with `check()` right after img's last run
 * (before the qemu run that follows, which may remove it). Returns medians
 * and the ratio.
 */
async function alternate(cfg, label, img, qemu, check) {
  const imgSamples = [];
  const qemuSamples = [];
  const last = cfg.warmup + cfg.runs - 1;
  let ok = false;
  for (let i = 0; i <= last; i++) {
    const a = await img();
    if (i === last) ok = await check();
    const b = await qemu();
    if (i >= cfg.warmup) {
      imgSamples.push(a);
      qemuSamples.push(b);
    }
  }
  const row = { label, img: summarise(imgSamples), qemu: summarise(qemuSamples), ok };
  row.ratio = row.img.wall / row.qemu.wall;
  const reclaim = Number.isFinite(row.img.reclaimMiB) ? `, host reclaim ${row.img.reclaimMiB.toFixed(0)}/${row.qemu.reclaimMiB.toFixed(0)} MiB` : '';
  cfg.log(`  ${label}: img ${row.img.wall.toFixed(3)} s, qemu ${row.qemu.wall.toFixed(3)} s, ratio ${row.ratio.toFixed(2)}, rss ${row.img.rssMiB.toFixed(0)} MiB${reclaim}, ${ok ? 'identical' : 'DIFFERENT'}`);
  return row;
}

/**
 * Conversion rows: every pair on every input. With `inproc` (inputs named
 * in IMG_BENCH_INPROC), each pair also gets an in-process row in
 * `inproc.rows`: convertFile() in the long-running process against the
 * same qemu-img runs (inproc-bench.mjs).
 */
async function convertRows(cfg, files, layout, inproc) {
  const rows = [];
  const outImg = join(cfg.dir, 'out-img');
  const outQemu = join(cfg.dir, 'out-qemu');
  for (const [input, paths] of Object.entries(files)) {
    for (const pair of cfg.pairs) {
      const [from, to] = pair.split(':');
      const src = paths[from];
      if (!src) continue;
      const dstImg = `${outImg}.${EXT[to]}`;
      const dstQemu = `${outQemu}.${EXT[to]}`;
      // Each run starts with neither output on disk and nothing dirty (see clearOutputs).
      const clear = () => clearOutputs(dstImg, dstQemu);
      // What of each output went through the page cache (img's copy loop picks per piece, see FileStorage direct 'auto').
      const img = async () => {
        await clear();
        const s = await timed(process.execPath, [IMG_CONVERT, from, to, src, dstImg]);
        return { ...s, cachedMiB: cachedMiB(dstImg) };
      };
      const qemu = async () => {
        await clear();
        const s = await timed('qemu-img', ['convert', '-f', from, '-O', to, src, dstQemu]);
        return { ...s, cachedMiB: cachedMiB(dstQemu) };
      };
      const row = await alternate(cfg, `${input} ${from}->${to}`, img, qemu, () => compare(from, src, to, dstImg));
      row.input = input;
      row.pair = `${from}->${to}`;
      row.sparse = layout[input].runs.reduce((n, r) => n + r.length, 0) < layout[input].virtual;
      rows.push(row);
      if (inproc) {
        const inImg = async () => {
          await clear();
          return inproc.runner.convert({ srcFormat: from, dstFormat: to, input: src, output: dstImg });
        };
        const r = await alternate(cfg, `${input} ${from}->${to} (in-process)`, inImg, qemu, () => compare(from, src, to, dstImg));
        inproc.rows.push({ ...r, input, pair: `${from}->${to}`, inProcess: true });
      }
      await rm(dstImg, { force: true });
      await rm(dstQemu, { force: true });
    }
  }
  return rows;
}

/**
 * `-t none` rows: both tools write the output around the page cache
 * (O_DIRECT) and sync it before they exit, for the pairs into raw, qcow2
 * and VHD (the outputs img's copy loop writes directly).
 */
async function cacheNoneRows(cfg, input, paths) {
  const rows = [];
  for (const pair of cfg.pairs) {
    const [from, to] = pair.split(':');
    if (!paths[from] || (to !== 'raw' && to !== 'qcow2' && to !== 'vpc')) continue;
    const dstImg = join(cfg.dir, `out-img-t.${EXT[to]}`);
    const dstQemu = join(cfg.dir, `out-qemu-t.${EXT[to]}`);
    const clear = () => clearOutputs(dstImg, dstQemu);
    const img = async () => {
      await clear();
      return timed(process.execPath, [IMG_CONVERT, '-t', 'none', from, to, paths[from], dstImg]);
    };
    const qemu = async () => {
      await clear();
      return timed('qemu-img', ['convert', '-t', 'none', '-f', from, '-O', to, paths[from], dstQemu]);
    };
    const row = await alternate(cfg, `${input} ${from}->${to} -t none`, img, qemu, () => compare(from, paths[from], to, dstImg));
    rows.push({ ...row, input, pair: `${from}->${to}` });
    await rm(dstImg, { force: true });
    await rm(dstQemu, { force: true });
  }
  return rows;
}

/** -c rows: deflate and zstd, raw and qcow2 inputs of E. */
async function compressRows(cfg, paths) {
  const rows = [];
  for (const codec of cfg.compress) {
    for (const from of cfg.compressFrom) {
      const opts = codec === 'zstd' ? ['-o', 'compression_type=zstd'] : [];
      const dstImg = join(cfg.dir, 'out-img-c.qcow2');
      const dstQemu = join(cfg.dir, 'out-qemu-c.qcow2');
      const img = async () => {
        await rm(dstImg, { force: true });
        return timed(process.execPath, [IMG_CONVERT, from, 'qcow2', paths[from], dstImg, '-c', ...opts]);
      };
      const qemu = async () => {
        await rm(dstQemu, { force: true });
        return timed('qemu-img', ['convert', '-c', ...opts, '-f', from, '-O', 'qcow2', paths[from], dstQemu]);
      };
      const row = await alternate(cfg, `E ${from}->qcow2 -c ${codec}`, img, qemu, () => compare(from, paths[from], 'qcow2', dstImg));
      row.input = 'E';
      row.pair = `${from}->qcow2 -c ${codec}`;
      const { stdout } = await run('qemu-img', ['info', '--output=json', dstImg]);
      const { stdout: q } = await run('qemu-img', ['info', '--output=json', dstQemu]);
      row.note = `output ${(JSON.parse(stdout)['actual-size'] / 2 ** 20).toFixed(0)} MiB (qemu ${(JSON.parse(q)['actual-size'] / 2 ** 20).toFixed(0)} MiB)`;
      rows.push(row);
      await rm(dstImg, { force: true });
      await rm(dstQemu, { force: true });
    }
  }
  return rows;
}

/** 4 KiB Disk API rows against qemu-img bench at the same depth on a fully allocated 1 GiB qcow2. */
async function diskRows(cfg, image, virtual) {
  const rows = [];
  const scratch = join(cfg.dir, 'disk-bench.qcow2');
  // An odd multiple of 4 KiB as the step visits every block once, far apart: qemu-img bench's nearest to random.
  const step = 4096 * (Math.floor(virtual / 4096 / 6.47) | 1);
  await copyFile(image, scratch);
  try {
    for (const mode of ['read', 'write']) {
      for (const pattern of ['random', `step:${step}`]) {
        const ops = cfg.diskOps;
        // Both report the time of the I/O loop itself (qemu-img bench: "Run completed in X seconds").
        const img = async () => {
          const t = await timed(process.execPath, [DISK_BENCH, scratch, mode, String(ops), String(cfg.diskDepth), pattern]);
          t.loop = JSON.parse(t.stdout.trim().split('\n').pop()).seconds;
          return t;
        };
        const qemuArgs = ['bench', '-c', String(ops), '-d', String(cfg.diskDepth), '-s', '4096', '-S', String(step), '-f', 'qcow2', ...(mode === 'write' ? ['-w'] : []), scratch];
        const qemu = async () => {
          const t = await timed('qemu-img', qemuArgs);
          t.loop = Number(/Run completed in ([\d.]+) seconds/.exec(t.stdout)?.[1] ?? NaN);
          return t;
        };
        const row = await alternate(cfg, `disk ${mode} 4k ${pattern === 'random' ? 'random' : 'strided'} d${cfg.diskDepth}`, img, qemu, async () => {
          const r = await run('qemu-img', ['check', scratch], { allowFail: true });
          return r.code === 0;
        });
        row.imgIops = ops / row.img.loop;
        row.qemuIops = ops / row.qemu.loop;
        row.iopsRatio = row.imgIops / row.qemuIops;
        row.mode = mode;
        row.pattern = pattern === 'random' ? 'random' : `strided ${step}`;
        rows.push(row);
      }
    }
  } finally {
    await rm(scratch, { force: true });
  }
  return rows;
}

/** The fixed cost of starting each tool: `--version`, nothing else. */
async function startupRow(cfg) {
  const img = () => timed(process.execPath, [IMG_CONVERT, '--version']);
  const qemu = () => timed('qemu-img', ['--version']);
  const row = await alternate(cfg, 'start-up (--version)', img, qemu, async () => true);
  const bare = [];
  for (let i = 0; i < cfg.runs; i++) bare.push(await timed(process.execPath, ['-e', '0']));
  row.nodeBare = summarise(bare);
  return row;
}

export async function machine() {
  const { stdout: qv } = await run('qemu-img', ['--version']);
  const c = cpus();
  return {
    cpu: `${c.length} x ${c[0]?.model ?? 'unknown'}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(0)} GiB`,
    kernel: `${process.platform} ${release()}`,
    node: process.version,
    qemu: qv.split('\n')[0],
    uvThreadpool: 'set by img-convert (see packages/convert/src/bin)',
    load: loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
    envDropped: childEnv.dropped,
    reportedKiB: reportedKiB(),
    memoryAtStart: memoryMiB(),
    settle: process.env.IMG_BENCH_SETTLE === '1',
    date: new Date().toISOString(),
  };
}

/**
 * Writes back what making an input left dirty (up to 4 GiB for B): left to
 * the kernel, that writeback lands on the first rows timed after it, and on
 * whichever tool happens to run then.
 */
async function settleInputs() {
  await run('sync', []);
}

/** Runs everything the config asks for; returns { machine, convert, compress, disk }. */
export async function runBench(cfg) {
  await mkdir(cfg.dir, { recursive: true });
  const layout = layouts(cfg.scale);
  const result = { config: { runs: cfg.runs, warmup: cfg.warmup, scale: cfg.scale }, machine: await machine(), layout, convert: [], compress: [], disk: [], vmdk: [], inproc: [], cacheNone: [] };
  const mem = result.machine.memoryAtStart;
  if (mem && mem.free < LOW_FREE_MIB) {
    cfg.log(`bench: only ${(mem.free / 1024).toFixed(1)} GiB of memory free (${((mem.shmem ?? 0) / 1024).toFixed(1)} GiB held by tmpfs files): the ratios of this run will be worse than the machine's; the report says so`);
  }
  result.startup = await startupRow(cfg);
  // One long-running Node process for every in-process row, started only if some input asks for them.
  const wantsInproc = cfg.inproc.some((n) => cfg.inputs.includes(n) || cfg.vmdkFrom.includes(n));
  const runner = wantsInproc ? startInproc() : undefined;
  const inprocFor = (name) => (runner && cfg.inproc.includes(name) ? { runner, rows: result.inproc } : undefined);
  try {
    await benchInputs(cfg, result, layout, inprocFor);
  } finally {
    await runner?.close();
  }
  const reportedEnd = reportedKiB();
  if (reportedEnd !== undefined && result.machine.reportedKiB !== undefined) result.machine.reportedMiB = (reportedEnd - result.machine.reportedKiB) / 1024;
  result.machine.loadAfter = loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
  return result;
}

/** The rows of every input, filled into `result`. */
async function benchInputs(cfg, result, layout, inprocFor) {
  const files = {};
  for (const name of cfg.inputs) {
    cfg.log(`input ${name}: ${layout[name].note}`);
    files[name] = await ensureInput(cfg.dir, name, layout[name]);
    await settleInputs();
    // Raw C is 1 TiB: without SEEK_DATA both tools must not read it all, qemu skips holes, so does img with the helper.
    result.convert.push(...(await convertRows(cfg, { [name]: files[name] }, layout, inprocFor(name))));
    if (cfg.cacheNone.includes(name)) result.cacheNone.push(...(await cacheNoneRows(cfg, name, files[name])));
    if (cfg.vmdkFrom.includes(name) && name !== 'E') result.vmdk.push(...(await vmdkRows(cfg, name, files[name].raw, alternate, IMG_CONVERT, inprocFor(name))));
    if (!cfg.keep && name !== 'E') for (const f of Object.values(files[name])) await rm(f, { force: true });
    if (!cfg.keep) await rm(join(cfg.dir, `${name}.stamp`), { force: true });
  }
  // Inputs named only for the VMDK rows (not converted in every pair).
  for (const name of cfg.vmdkFrom.filter((n) => n !== 'E' && !cfg.inputs.includes(n) && layout[n])) {
    const f = await ensureInput(cfg.dir, name, layout[name], ['raw']);
    result.vmdk.push(...(await vmdkRows(cfg, name, f.raw, alternate, IMG_CONVERT, inprocFor(name))));
    if (!cfg.keep) await rm(f.raw, { force: true });
  }
  if (cfg.compress.length || cfg.diskOps > 0 || cfg.vmdkFrom.includes('E')) {
    cfg.log(`input E: ${layout.E.note}`);
    const e = await ensureInput(cfg.dir, 'E', layout.E, ['raw', 'qcow2']);
    await settleInputs();
    if (cfg.vmdkFrom.includes('E')) result.vmdk.push(...(await vmdkRows(cfg, 'E', e.raw, alternate, IMG_CONVERT, inprocFor('E'))));
    if (cfg.compress.length) result.compress = await compressRows(cfg, e);
    if (cfg.diskOps > 0) {
      cfg.log(`disk API: 4 KiB, depth ${cfg.diskDepth}, ${cfg.diskOps} ops, on E.qcow2 (fully allocated)`);
      result.disk = await diskRows(cfg, e.qcow2, layout.E.virtual);
    }
    if (!cfg.keep) {
      for (const f of Object.values(e)) await rm(f, { force: true });
      await rm(join(cfg.dir, 'E.stamp'), { force: true });
    }
  }
  if (cfg.nbd && (await haveNbdTools())) {
    cfg.log('nbd: nbdcopy from img serve vs qemu-nbd');
    result.nbd = [await nbdRow(cfg, alternate, IMG)];
  } else result.nbd = [];
}
