/**
 * VMDK rows: img-convert against qemu-img convert writing a
 * monolithicSparse and a streamOptimized VMDK from raw, and reading each
 * back to raw (inputs made by qemu-img from the raw, untimed). Every img
 * output is checked with qemu-img compare.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { clearOutputs, run, timed } from './proc.mjs';

/** The rows: label, source format, qemu and img options, convertFile()'s createOptions (in-process rows), destination format. */
const ROWS = [
  { pair: 'raw->vmdk', from: 'raw', to: 'vmdk', opts: [] },
  { pair: 'raw->vmdk streamOptimized', from: 'raw', to: 'vmdk', opts: ['-o', 'subformat=streamOptimized'], create: { subformat: 'streamOptimized' } },
  { pair: 'vmdk->raw', from: 'vmdk', to: 'raw', opts: [], source: [] },
  { pair: 'vmdk streamOptimized->raw', from: 'vmdk', to: 'raw', opts: [], source: ['-o', 'subformat=streamOptimized'] },
];

/**
 * Runs the VMDK rows on input `name` (its raw file `raw`), alternating
 * img and qemu-img through `alternate` (bench.mjs). With `inproc`
 * ({ runner, rows }: inproc-bench.mjs), each row is run again with img as
 * convertFile() in the long-running process, into `inproc.rows`.
 */
export async function vmdkRows(cfg, name, raw, alternate, imgConvert, inproc) {
  const rows = [];
  for (const spec of ROWS.filter((r) => !cfg.vmdkPairs || cfg.vmdkPairs.includes(r.pair))) {
    let src = raw;
    if (spec.from === 'vmdk') {
      src = join(cfg.dir, `${name}-src${spec.source.length ? '-so' : ''}.vmdk`);
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', ...spec.source, raw, src]);
    }
    const dstImg = join(cfg.dir, `out-img.${spec.to}`);
    const dstQemu = join(cfg.dir, `out-qemu.${spec.to}`);
    // Neither output on disk and nothing dirty when a run starts (see clearOutputs).
    const clear = () => clearOutputs(dstImg, dstQemu);
    const img = async () => {
      await clear();
      return timed(process.execPath, [imgConvert, spec.from, spec.to, src, dstImg, ...spec.opts]);
    };
    const qemu = async () => {
      await clear();
      return timed('qemu-img', ['convert', '-f', spec.from, '-O', spec.to, ...spec.opts, src, dstQemu]);
    };
    const check = async () => {
      const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', spec.to, raw, dstImg], { allowFail: true });
      return r.code === 0;
    };
    const row = await alternate(cfg, `${name} ${spec.pair}`, img, qemu, check);
    row.input = name;
    row.pair = spec.pair;
    row.streamOptimized = spec.pair.includes('streamOptimized');
    rows.push(row);
    if (inproc) {
      const inImg = async () => {
        await clear();
        return inproc.runner.convert({ srcFormat: spec.from, dstFormat: spec.to, input: src, output: dstImg, ...(spec.create ? { createOptions: spec.create } : {}) });
      };
      const r = await alternate(cfg, `${name} ${spec.pair} (in-process)`, inImg, qemu, check);
      inproc.rows.push({ ...r, input: name, pair: spec.pair, streamOptimized: row.streamOptimized, vmdk: true, inProcess: true });
    }
    await rm(dstImg, { force: true });
    await rm(dstQemu, { force: true });
    if (src !== raw) await rm(src, { force: true });
  }
  return rows;
}
