// Direction 2: images img writes (create, convert, resize, snapshot, amend,
// commit, rebase, bitmap), judged by qemu-img check / info / compare and
// qemu-io, then written by qemu-io and read back by img.
import { copyFileSync, openSync, writeSync, closeSync, ftruncateSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { firstDifference, img, json, must, rng, run } from './lib.mjs';

const MiB = 1 << 20;

/** Values tried for each option `img create -f X -o help` lists; an option missing here is reported as not covered. */
const VALUES = {
  qcow2: {
    compat: ['0.10', '1.1'],
    cluster_size: ['512', '4096', '65536', '2M'],
    refcount_bits: ['1', '2', '4', '8', '16', '32', '64'],
    lazy_refcounts: ['on', 'off'],
    extended_l2: ['on'],
    compression_type: ['zlib', 'zstd'],
    preallocation: ['off', 'metadata', 'falloc', 'full'],
    backing_file: ['base.qcow2'],
    backing_fmt: ['qcow2'],
    data_file: ['data.bin'],
    data_file_raw: ['on', 'off'],
    header_length: ['104', '112'],
  },
  vpc: {
    subformat: ['dynamic', 'fixed'],
    block_size: ['512', '65536', '2M'],
    force_size: ['on', 'off'],
    backing_file: ['base.vhd'],
    backing_fmt: ['vpc'],
  },
  vmdk: {
    subformat: ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'],
    adapter_type: ['ide', 'lsilogic', 'buslogic', 'legacyESX', 'pvscsi'],
    hwversion: ['4', '6', '7', '21'],
    toolsversion: ['10240'],
    zeroed_grain: ['on', 'off'],
  },
  raw: { preallocation: ['off', 'falloc', 'full'] },
};

/** Options an option needs beside it to be valid. */
function companions(fmt, key, value) {
  if (fmt === 'qcow2') {
    if (key === 'extended_l2' || key === 'lazy_refcounts' || key === 'refcount_bits' || key === 'compression_type' || key === 'data_file') return ['compat=1.1'];
    if (key === 'data_file_raw') return ['compat=1.1', 'data_file=data.bin'];
    if (key === 'backing_fmt') return ['backing_file=base.qcow2'];
  }
  if (fmt === 'vpc' && key === 'backing_fmt') return ['backing_file=base.vhd'];
  if (fmt === 'vpc' && key === 'block_size') return ['subformat=dynamic'];
  if (fmt === 'vmdk' && key === 'hwversion' && value === '4') return [];
  return [];
}

/** The source disk: regions of one byte value each (so qemu-io read -P can check them), zeros between. */
function sourceRaw(path, size, r) {
  const regions = [];
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (let i = 0; i < 6; i++) {
      const off = r.int(size - 1);
      const len = Math.min(size - off, 1 + r.int(200_000));
      const pat = 1 + r.int(254);
      writeSync(fd, Buffer.alloc(len, pat), 0, len, off);
      regions.push({ off, len, pat });
    }
    writeSync(fd, Buffer.alloc(512, 0x5a), 0, 512, size - 512);
    regions.push({ off: size - 512, len: 512, pat: 0x5a });
  } finally {
    closeSync(fd);
  }
  // Later regions overwrite earlier ones: keep only bytes no later region covers.
  const kept = [];
  for (let i = 0; i < regions.length; i++) {
    let pieces = [[regions[i].off, regions[i].off + regions[i].len]];
    for (const later of regions.slice(i + 1))
      pieces = pieces
        .flatMap(([a, b]) => [
          [a, Math.min(b, later.off)],
          [Math.max(a, later.off + later.len), b],
        ])
        .filter(([a, b]) => b > a);
    for (const [a, b] of pieces) kept.push({ off: a, len: b - a, pat: regions[i].pat });
  }
  return kept;
}

/** The shared judgment of an image img wrote: qemu-img check, info, compare, qemu-io read -P, then qemu-io writes read back by img. */
function judge(ctx, path, fmt, expectRaw, regions, { qemuWrites = true } = {}) {
  const diffs = [];
  const d = (check, detail) => diffs.push({ check, detail });
  const q = (argv) => run(ctx.budget, 'qemu-img', argv, { cwd: ctx.dir });
  const k = q(['check', '-f', fmt, '--output=json', path]);
  // 63: the format has no check (raw, flat VMDK in some versions); not a judgment on the image.
  if (k.status !== 0 && k.status !== 63) d('qemu-img check', `exit ${k.status}: ${(k.stdout + k.stderr).trim().split('\n').slice(0, 3).join(' | ')}`);
  const info = q(['info', '-f', fmt, '--output=json', path]);
  if (info.status !== 0) d('qemu-img info', `exit ${info.status}: ${info.stderr.trim()}`);
  const c = q(['compare', '-f', 'raw', '-F', fmt, expectRaw, path]);
  if (c.status !== 0) d('qemu-img compare', `exit ${c.status}: ${(c.stdout + c.stderr).trim().split('\n')[0]}`);
  const reads = regions.slice(0, 8).flatMap((g) => ['-c', `read -P 0x${g.pat.toString(16)} ${g.off} ${g.len}`]);
  if (reads.length) {
    const rd = run(ctx.budget, 'qemu-io', ['-r', '-f', fmt, ...reads, path], { cwd: ctx.dir });
    if (rd.status !== 0 || /verification failed|error/i.test(rd.stdout + rd.stderr)) d('qemu-io read -P', (rd.stdout + rd.stderr).split('\n').find((l) => /fail|error/i.test(l)) ?? `exit ${rd.status}`);
  }
  if (!qemuWrites) return diffs;
  const size = json(info.stdout)?.['virtual-size'];
  if (!size) return diffs;
  const r = rng(size);
  const off = r.int(size - 90_000);
  const w = run(ctx.budget, 'qemu-io', ['-f', fmt, '-c', `write -P 0xa7 ${off} 66001`, '-c', `write -z ${off + 80_000} 3333`, '-c', `write -P 0x3e ${size - 700} 700`, path], { cwd: ctx.dir });
  if (w.status !== 0 || /error|fail/i.test(w.stdout + w.stderr)) {
    d('qemu-io write', (w.stdout + w.stderr).trim().split('\n')[0]);
    return diffs;
  }
  const q2 = join(ctx.dir, 'after-qemu.raw');
  const i2 = join(ctx.dir, 'after-img.raw');
  must(ctx.budget, 'qemu-img', ['convert', '-f', fmt, '-O', 'raw', path, q2], { cwd: ctx.dir });
  const ic = img(ctx.budget, ctx.heap, ['convert', '-f', fmt, '-O', 'raw', path, i2], { cwd: ctx.dir });
  if (ic.status !== 0) d('img read after qemu-io', `img convert exits ${ic.status}: ${ic.stderr.trim().split('\n')[0]}`);
  else if (firstDifference(i2, q2) !== -1) d('img read after qemu-io', `raw contents differ at ${firstDifference(i2, q2)}`);
  const ik = img(ctx.budget, ctx.heap, ['check', '-f', fmt, path], { cwd: ctx.dir });
  const qk = q(['check', '-f', fmt, path]);
  // 63: qemu-img has no check for the format (vpc), so there is nothing to agree with.
  if (qk.status !== 63 && ik.status !== qk.status) d('img check after qemu-io', `img exits ${ik.status}, qemu-img ${qk.status}`);
  return diffs;
}

/**
 * qemu-img 7.2 reads a differencing VHD without its parent (README,
 * deliberate differences), so it only judges the structure; img must read
 * the chain as the source.
 */
function differencingVhd(ctx, out, src) {
  const diffs = [];
  const k = run(ctx.budget, 'qemu-img', ['info', '-f', 'vpc', out], { cwd: ctx.dir });
  if (k.status !== 0) diffs.push({ check: 'qemu-img info', detail: `exit ${k.status}: ${k.stderr.trim()}` });
  const c = img(ctx.budget, ctx.heap, ['compare', '-F', 'raw', out, src], { cwd: ctx.dir });
  if (c.status !== 0) diffs.push({ check: 'img compare chain', detail: `exit ${c.status}: ${(c.stdout + c.stderr).trim().split('\n')[0]}` });
  return diffs;
}

function imgMust(ctx, argv) {
  ctx.log.push(`img ${argv.join(' ')}`);
  const r = img(ctx.budget, ctx.heap, argv, { cwd: ctx.dir });
  return r;
}

/** One create-or-convert case for one option value. */
function optionCase(fmt, key, value, mode, seed) {
  const r = rng(seed);
  const opts = [...companions(fmt, key, value), `${key}=${value}`];
  return {
    format: fmt,
    label: `${mode} ${key}=${value}`,
    options: [`${key}=${value}`],
    desc: `img ${mode} -f ${fmt} -o ${opts.join(',')}`,
    run(ctx) {
      const size = 3 * MiB + 512 * (1 + r.int(3000));
      const src = join(ctx.dir, 'src.raw');
      const regions = sourceRaw(src, size, r);
      const out = join(ctx.dir, `out.${fmt}`);
      const diffs = [];
      const backing = opts.find((o) => o.startsWith('backing_file='));
      if (backing) {
        // The backing holds the source; the overlay img writes is empty, so it reads as the source.
        const b = join(ctx.dir, backing.split('=')[1]);
        const bf = fmt === 'vpc' ? 'vpc' : 'qcow2';
        must(ctx.budget, 'qemu-img', ['convert', '-f', 'raw', '-O', bf, src, b]);
        const rest = opts.filter((o) => !o.startsWith('backing_file=') && !o.startsWith('backing_fmt='));
        const cr = imgMust(ctx, ['create', '-f', fmt, ...(rest.length ? ['-o', rest.join(',')] : []), '-b', b, '-F', bf, out]);
        if (cr.status !== 0) return [{ check: 'img create', detail: `exit ${cr.status}: ${cr.stderr.trim()}` }];
        if (fmt === 'vpc') return differencingVhd(ctx, out, src);
        return judge(ctx, out, fmt, src, regions);
      }
      if (mode === 'convert') {
        const cv = imgMust(ctx, ['convert', '-f', 'raw', '-O', fmt, '-o', opts.join(','), src, out]);
        if (cv.status !== 0) return [{ check: 'img convert', detail: `exit ${cv.status}: ${cv.stderr.trim()}` }];
        const qemuWrites = !(fmt === 'vmdk' && value === 'streamOptimized');
        diffs.push(...judge(ctx, out, fmt, src, regions, { qemuWrites }));
        return diffs;
      }
      const cr = imgMust(ctx, ['create', '-f', fmt, '-o', opts.join(','), out, String(size)]);
      if (cr.status !== 0) return [{ check: 'img create', detail: `exit ${cr.status}: ${cr.stderr.trim()}` }];
      // An empty image: compare with zeros of the size qemu sees (a VHD's CHS rounding may grow it).
      const zeros = join(ctx.dir, 'zeros.raw');
      writeFileSync(zeros, '');
      const qi = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', '-f', fmt, out], { cwd: ctx.dir }));
      truncateSync(zeros, qi?.['virtual-size'] ?? size);
      return judge(ctx, out, fmt, zeros, [], { qemuWrites: !(fmt === 'vmdk' && value === 'streamOptimized') });
    },
  };
}

/** Operations on images img converted: each followed by qemu-img check and a compare with the expected contents. */
function opCases(seed) {
  const cases = [];
  const add = (format, label, body) => cases.push({ format, label, options: [label], desc: label, run: body });
  const prep = (ctx, fmt, opts = []) => {
    const r = rng(seed + cases.length);
    const size = 4 * MiB + 512 * (1 + r.int(3000));
    const src = join(ctx.dir, 'src.raw');
    const regions = sourceRaw(src, size, r);
    const out = join(ctx.dir, `out.${fmt}`);
    const cv = imgMust(ctx, ['convert', '-f', 'raw', '-O', fmt, ...(opts.length ? ['-o', opts.join(',')] : []), src, out]);
    if (cv.status !== 0) throw new Error(`img convert: ${cv.stderr.trim()}`);
    return { size, src, regions, out };
  };
  const failed = (what, r) => [{ check: what, detail: `exit ${r.status}: ${r.stderr.trim().split('\n')[0]}` }];
  const resizeRaw = (src, n) => truncateSync(src, n);
  for (const [fmt, opts] of [
    ['qcow2', []],
    ['qcow2', ['compat=0.10']],
    ['qcow2', ['cluster_size=512', 'refcount_bits=1']],
    ['qcow2', ['extended_l2=on']],
    ['vpc', []],
    ['vpc', ['subformat=fixed']],
    ['raw', []],
  ]) {
    add(fmt, `resize grow ${opts.join(',')}`, (ctx) => {
      const { size, src, out } = prep(ctx, fmt, opts);
      const n = size + MiB + 512 * 7;
      const r = imgMust(ctx, ['resize', '-f', fmt, out, String(n)]);
      if (r.status !== 0) return failed('img resize', r);
      const info = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', '-f', fmt, out]));
      resizeRaw(src, info['virtual-size']);
      return judge(ctx, out, fmt, src, []);
    });
    if (fmt !== 'vpc')
      add(fmt, `resize shrink ${opts.join(',')}`, (ctx) => {
        const { size, src, out } = prep(ctx, fmt, opts);
        const n = size - MiB - 512 * 3;
        const r = imgMust(ctx, ['resize', '-f', fmt, '--shrink', out, String(n)]);
        if (r.status !== 0) return failed('img resize --shrink', r);
        resizeRaw(src, n);
        return judge(ctx, out, fmt, src, []);
      });
  }
  for (const opts of [[], ['compat=0.10'], ['cluster_size=4096', 'refcount_bits=2']]) {
    add('qcow2', `snapshot -c/-a/-d ${opts.join(',')}`, (ctx) => {
      const { src, regions, out } = prep(ctx, 'qcow2', opts);
      let r = imgMust(ctx, ['snapshot', '-c', 's1', out]);
      if (r.status !== 0) return failed('img snapshot -c', r);
      const diffs = judge(ctx, out, 'qcow2', src, regions, { qemuWrites: false });
      must(ctx.budget, 'qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x99 1000 300000', out]);
      const ql = must(ctx.budget, 'qemu-img', ['snapshot', '-l', out]);
      if (!/\bs1\b/.test(ql)) diffs.push({ check: 'qemu-img snapshot -l', detail: 'snapshot s1 not listed' });
      r = imgMust(ctx, ['snapshot', '-a', 's1', out]);
      if (r.status !== 0) return [...diffs, ...failed('img snapshot -a', r)];
      diffs.push(...judge(ctx, out, 'qcow2', src, regions, { qemuWrites: false }));
      r = imgMust(ctx, ['snapshot', '-d', 's1', out]);
      if (r.status !== 0) return [...diffs, ...failed('img snapshot -d', r)];
      diffs.push(...judge(ctx, out, 'qcow2', src, regions));
      return diffs;
    });
  }
  /** @type {Array<[string[], string]>} */
  const amends = [
    [['compat=1.1'], 'compat=0.10'],
    [['compat=0.10'], 'compat=1.1'],
    [['compat=1.1'], 'lazy_refcounts=on'],
    [['compat=1.1', 'lazy_refcounts=on'], 'lazy_refcounts=off'],
  ];
  for (const [from, to] of amends) {
    add('qcow2', `amend ${from.join(',')} -> ${to}`, (ctx) => {
      const { src, regions, out } = prep(ctx, 'qcow2', from);
      const r = imgMust(ctx, ['amend', '-f', 'qcow2', '-o', to, out]);
      if (r.status !== 0) {
        // Refusing an amend qemu-img also refuses is agreement.
        const copy = join(ctx.dir, 'q.qcow2');
        copyFileSync(out, copy);
        const qr = run(ctx.budget, 'qemu-img', ['amend', '-f', 'qcow2', '-o', to, copy]);
        return qr.status === 0 ? failed('img amend (qemu-img accepts it)', r) : [];
      }
      const diffs = judge(ctx, out, 'qcow2', src, regions);
      const info = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', out]))?.['format-specific']?.data ?? {};
      const [k, v] = to.split('=');
      const seen = { compat: info.compat, lazy_refcounts: info['lazy-refcounts'] ? 'on' : 'off', refcount_bits: String(info['refcount-bits']) }[k];
      if (seen !== v) diffs.push({ check: 'qemu-img info after amend', detail: `${k} is ${seen}, asked ${v}` });
      return diffs;
    });
  }
  for (const [topFmt, baseFmt] of [
    ['qcow2', 'qcow2'],
    ['qcow2', 'raw'],
    ['qcow2', 'vpc'],
    ['vmdk', 'vmdk'],
    ['qcow2', 'vmdk'],
  ]) {
    add(topFmt, `commit ${topFmt} onto ${baseFmt}`, (ctx) => {
      const { out: base } = prep(ctx, baseFmt);
      const top = join(ctx.dir, `top.${topFmt}`);
      let r = imgMust(ctx, ['create', '-f', topFmt, '-b', base, '-F', baseFmt, top]);
      if (r.status !== 0) return failed('img create -b', r);
      must(ctx.budget, 'qemu-io', ['-f', topFmt, '-c', 'write -P 0x42 5000 200000', '-c', 'write -z 600000 70000', top]);
      const expect = join(ctx.dir, 'expect.raw');
      must(ctx.budget, 'qemu-img', ['convert', '-f', topFmt, '-O', 'raw', top, expect]);
      r = imgMust(ctx, ['commit', '-f', topFmt, top]);
      if (r.status !== 0) return failed('img commit', r);
      return judge(ctx, base, baseFmt, expect, [{ off: 5000, len: 200000, pat: 0x42 }]);
    });
  }
  for (const unsafe of [false, true]) {
    add('qcow2', `rebase${unsafe ? ' -u' : ''}`, (ctx) => {
      const { out: base } = prep(ctx, 'qcow2');
      const mid = join(ctx.dir, 'mid.qcow2');
      const top = join(ctx.dir, 'top.qcow2');
      must(ctx.budget, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', mid]);
      must(ctx.budget, 'qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x61 70000 100000', mid]);
      must(ctx.budget, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-b', mid, '-F', 'qcow2', top]);
      must(ctx.budget, 'qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x62 1000000 3000', top]);
      const expect = join(ctx.dir, 'expect.raw');
      if (unsafe) {
        // -u: only the name changes; the expected contents are the top layer over the new backing.
        copyFileSync(top, join(ctx.dir, 'top-q.qcow2'));
        must(ctx.budget, 'qemu-img', ['rebase', '-u', '-b', base, '-F', 'qcow2', join(ctx.dir, 'top-q.qcow2')]);
        must(ctx.budget, 'qemu-img', ['convert', '-O', 'raw', join(ctx.dir, 'top-q.qcow2'), expect]);
      } else must(ctx.budget, 'qemu-img', ['convert', '-O', 'raw', top, expect]);
      const r = imgMust(ctx, ['rebase', ...(unsafe ? ['-u'] : []), '-b', base, '-F', 'qcow2', top]);
      if (r.status !== 0) return failed('img rebase', r);
      const diffs = judge(ctx, top, 'qcow2', expect, []);
      const bf = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', top]))?.['backing-filename'];
      if (bf !== base) diffs.push({ check: 'qemu-img info after rebase', detail: `backing-filename ${bf}` });
      return diffs;
    });
  }
  // img convert's own flags: compression, zero detection, a backing file for the output.
  /** @type {Array<[string, string[]]>} */
  const convertFlags = [
    ['qcow2', ['-c']],
    ['qcow2', ['-c', '-o', 'compression_type=zstd']],
    ['qcow2', ['-c', '-o', 'cluster_size=512']],
    ['qcow2', ['-c', '-o', 'cluster_size=2M,extended_l2=on']],
    ['qcow2', ['-c', '-o', 'compat=0.10,cluster_size=4k']],
    ['vmdk', ['-c', '-o', 'subformat=streamOptimized']],
    ['qcow2', ['-S', '0']],
    ['qcow2', ['-S', '4k', '-o', 'cluster_size=4k']],
    ['vpc', ['-S', '0', '-o', 'subformat=fixed']],
    ['vmdk', ['-S', '0', '-o', 'subformat=monolithicSparse']],
  ];
  for (const [fmt, flags] of convertFlags) {
    add(fmt, `convert ${flags.join(' ')}`, (ctx) => {
      const r = rng(seed + 7 * cases.length);
      const size = 4 * MiB + 512 * (1 + r.int(3000));
      const src = join(ctx.dir, 'src.raw');
      const regions = sourceRaw(src, size, r);
      const out = join(ctx.dir, `out.${fmt}`);
      const cv = imgMust(ctx, ['convert', '-f', 'raw', '-O', fmt, ...flags, src, out]);
      if (cv.status !== 0) return failed('img convert', cv);
      return judge(ctx, out, fmt, src, regions, { qemuWrites: !flags.join(' ').includes('streamOptimized') });
    });
  }
  add('qcow2', 'convert -B base (the output holds what differs from base)', (ctx) => {
    const { regions, out: base } = prep(ctx, 'qcow2');
    // The new source: base's contents with some writes, so the overlay holds only those.
    const changed = join(ctx.dir, 'changed.qcow2');
    must(ctx.budget, 'qemu-img', ['convert', '-O', 'qcow2', base, changed]);
    must(ctx.budget, 'qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x71 123456 70000', '-c', 'write -z 0 4096', changed]);
    const expect = join(ctx.dir, 'expect.raw');
    must(ctx.budget, 'qemu-img', ['convert', '-O', 'raw', changed, expect]);
    const top = join(ctx.dir, 'top.qcow2');
    const cv = imgMust(ctx, ['convert', '-O', 'qcow2', '-B', base, '-F', 'qcow2', changed, top]);
    if (cv.status !== 0) return failed('img convert -B', cv);
    const diffs = judge(ctx, top, 'qcow2', expect, [{ off: 123456, len: 70000, pat: 0x71 }, ...regions.filter((g) => g.off >= 200_000)]);
    const bf = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', top]))?.['backing-filename'];
    if (bf !== base) diffs.push({ check: 'qemu-img info after convert -B', detail: `backing-filename ${bf}` });
    return diffs;
  });
  // A dirty image (lazy refcounts, qemu-io aborted): img must repair or keep it as qemu-img would.
  /** @type {Array<[string, (f: string) => string[]]>} */
  const dirtyOps = [
    ['check -r all', (f) => ['check', '-r', 'all', f]],
    ['check -r leaks', (f) => ['check', '-r', 'leaks', f]],
    ['resize +1M', (f) => ['resize', f, '+1M']],
    ['amend lazy_refcounts=off', (f) => ['amend', '-o', 'lazy_refcounts=off', f]],
    ['snapshot -c', (f) => ['snapshot', '-c', 'after-crash', f]],
    ['convert', (f) => ['convert', '-O', 'qcow2', f, `${f}.copy.qcow2`]],
  ];
  for (const [label, argv] of dirtyOps) {
    add('qcow2', `dirty image: img ${label}`, (ctx) => {
      const img0 = join(ctx.dir, 'dirty.qcow2');
      must(ctx.budget, 'qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=4k', img0, '3M']);
      run(ctx.budget, 'qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x31 1000 300000', '-c', 'write -P 0x32 2000000 5000', '-c', 'flush', '-c', 'abort', img0]);
      const expect = join(ctx.dir, 'expect.raw');
      must(ctx.budget, 'qemu-img', ['convert', '-U', '-O', 'raw', img0, expect]);
      if (label === 'check -r leaks') {
        // Leaks alone cannot repair a dirty image: both leave it as it is; compare with qemu-img on a copy.
        const copy = join(ctx.dir, 'q.qcow2');
        copyFileSync(img0, copy);
        const qr = run(ctx.budget, 'qemu-img', ['check', '-r', 'leaks', copy]);
        const ir = imgMust(ctx, argv(img0));
        const after = (f) => run(ctx.budget, 'qemu-img', ['check', f]).status;
        const diffs = [];
        if (ir.status !== qr.status) diffs.push({ check: 'check -r leaks on a dirty image', detail: `img exits ${ir.status}, qemu-img ${qr.status}` });
        if (after(img0) !== after(copy)) diffs.push({ check: 'qemu-img check after -r leaks', detail: `after img ${after(img0)}, after qemu-img ${after(copy)}` });
        return diffs;
      }
      const r = imgMust(ctx, argv(img0));
      // img check exits 0 once repaired (qemu-img check -r prints what it fixed and exits 0 too).
      if (r.status !== 0) return failed(`img ${label}`, r);
      const target = label === 'convert' ? `${img0}.copy.qcow2` : img0;
      if (label.startsWith('resize')) truncateSync(expect, 3 * MiB + MiB);
      const diffs = judge(ctx, target, 'qcow2', expect, [{ off: 1000, len: 300000, pat: 0x31 }]);
      const dirty = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', '-U', img0]))?.['dirty-flag'];
      if (label !== 'convert' && dirty) diffs.push({ check: 'dirty flag', detail: 'still set after img wrote the image' });
      return diffs;
    });
  }
  add('qcow2', 'bitmap --add/--disable/--remove', (ctx) => {
    const { src, regions, out } = prep(ctx, 'qcow2');
    for (const argv of [
      ['bitmap', '--add', out, 'b0'],
      ['bitmap', '--add', '-g', '1M', out, 'b1'],
      ['bitmap', '--disable', out, 'b1'],
    ]) {
      const r = imgMust(ctx, argv);
      if (r.status !== 0) return failed(`img ${argv.slice(0, 2).join(' ')}`, r);
    }
    const diffs = judge(ctx, out, 'qcow2', src, regions, { qemuWrites: false });
    const bms = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', out]))?.['format-specific']?.data?.bitmaps ?? [];
    const names = bms
      .map((b) => `${b.name}:${b.granularity}:${b.flags.join('+')}`)
      .sort()
      .join(' ');
    if (names !== 'b0:65536:auto b1:1048576:') diffs.push({ check: 'qemu-img info bitmaps', detail: names });
    const r = imgMust(ctx, ['bitmap', '--remove', out, 'b0']);
    if (r.status !== 0) return [...diffs, ...failed('img bitmap --remove', r)];
    diffs.push(...judge(ctx, out, 'qcow2', src, regions));
    return diffs;
  });
  return cases;
}

/** Reads `img create -f X -o help` and builds one case per option value and mode. */
export function writeCases(seed, formats, imgHelp) {
  const out = [];
  const uncovered = [];
  let i = 0;
  for (const fmt of formats) {
    const names = imgHelp(fmt);
    for (const key of names) {
      if (key === 'size') continue;
      const values = VALUES[fmt]?.[key];
      if (!values) {
        uncovered.push(`${fmt}:${key}`);
        continue;
      }
      for (const v of values) for (const mode of ['convert', 'create']) out.push({ id: `w${i}`, ...optionCase(fmt, key, v, mode, seed * 104729 + i++) });
    }
  }
  for (const c of opCases(seed)) if (formats.includes(c.format)) out.push({ id: `w${i++}`, ...c });
  return { cases: out, uncovered };
}
