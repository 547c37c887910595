// Direction 2: images img writes (create, convert, resize, snapshot, amend,
// commit, rebase, bitmap), judged by qemu-img check / info / compare and
// qemu-io, then written by qemu-io and read back by img. Some qcow2 images
// are LUKS-encrypted (luks.mjs): both tools then get the passphrase.
import { copyFileSync, openSync, writeSync, closeSync, ftruncateSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SECRET_ID, compareArgs, firstDifference, imageArgs, img, json, must, qemuLuks, rng, run, secretObject } from './lib.mjs';
import { RETRY_ITER_TIMES, LUKS_VALUES, expectedEncrypt, luksFits, luksOptions, luksPassphrase, optionList } from './luks.mjs';
import { jsonDiff } from './oracle.mjs';

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
    ...LUKS_VALUES,
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
    compat6: ['on', 'off'],
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

/**
 * What qemu-img info says of an encrypted image img wrote: LUKS with the
 * cipher, mode, IV generator and hashes asked for (or qemu's defaults), and
 * img info's encrypt block (uuid, every key slot) as qemu-img's.
 */
function judgeEncryption(ctx, path, qinfo, options) {
  const diffs = [];
  if (qinfo?.encrypted !== true) diffs.push({ check: 'qemu-img info encrypt', detail: `encrypted is ${qinfo?.encrypted}` });
  const seen = qinfo?.['format-specific']?.data?.encrypt ?? {};
  const want = expectedEncrypt(options);
  for (const k of new Set([...Object.keys(want), 'ivgen-hash-alg'])) if (seen[k] !== want[k]) diffs.push({ check: 'qemu-img info encrypt', detail: `${k} is ${seen[k]}, asked ${want[k] ?? 'none'}` });
  const ii = img(ctx.budget, ctx.heap, ['info', '-f', 'qcow2', '--output=json', path], { cwd: ctx.dir });
  for (const line of jsonDiff(json(ii.stdout)?.['format-specific']?.data?.encrypt, seen, '.encrypt', true)) diffs.push({ check: 'img info encrypt', detail: line });
  return diffs;
}

/**
 * The shared judgment of an image img wrote: qemu-img check, info, compare,
 * qemu-io read -P, then qemu-io writes read back by img. With `luks` ({ pass,
 * options }) the image is encrypted: every command that reads its data gets
 * the passphrase (lib.mjs imageArgs), and the encryption must be the one
 * asked for; info needs no passphrase (metadata is not encrypted).
 */
function judge(ctx, path, fmt, expectRaw, regions, { qemuWrites = true, luks } = {}) {
  const diffs = [];
  const d = (check, detail) => diffs.push({ check, detail });
  const q = (argv) => run(ctx.budget, 'qemu-img', argv, { cwd: ctx.dir });
  const a = imageArgs(fmt, path, luks?.pass);
  const k = q(['check', '--output=json', ...a.flags, a.name]);
  // 63: the format has no check (raw, flat VMDK in some versions); not a judgment on the image.
  if (k.status !== 0 && k.status !== 63) d('qemu-img check', `exit ${k.status}: ${(k.stdout + k.stderr).trim().split('\n').slice(0, 3).join(' | ')}`);
  const info = q(['info', '-f', fmt, '--output=json', path]);
  if (info.status !== 0) d('qemu-img info', `exit ${info.status}: ${info.stderr.trim()}`);
  else if (luks) diffs.push(...judgeEncryption(ctx, path, json(info.stdout), luks.options));
  const c = q(['compare', ...compareArgs(fmt, path, expectRaw, luks?.pass)]);
  if (c.status !== 0) d('qemu-img compare', `exit ${c.status}: ${(c.stdout + c.stderr).trim().split('\n')[0]}`);
  const reads = regions.slice(0, 8).flatMap((g) => ['-c', `read -P 0x${g.pat.toString(16)} ${g.off} ${g.len}`]);
  if (reads.length) {
    const rd = run(ctx.budget, 'qemu-io', ['-r', ...a.flags, ...reads, a.name], { cwd: ctx.dir });
    if (rd.status !== 0 || /verification failed|error/i.test(rd.stdout + rd.stderr)) d('qemu-io read -P', (rd.stdout + rd.stderr).split('\n').find((l) => /fail|error/i.test(l)) ?? `exit ${rd.status}`);
  }
  if (!qemuWrites) return diffs;
  const size = json(info.stdout)?.['virtual-size'];
  if (!size) return diffs;
  const r = rng(size);
  const off = r.int(size - 90_000);
  const w = run(ctx.budget, 'qemu-io', [...a.flags, '-c', `write -P 0xa7 ${off} 66001`, '-c', `write -z ${off + 80_000} 3333`, '-c', `write -P 0x3e ${size - 700} 700`, a.name], { cwd: ctx.dir });
  if (w.status !== 0 || /error|fail/i.test(w.stdout + w.stderr)) {
    d('qemu-io write', (w.stdout + w.stderr).trim().split('\n')[0]);
    return diffs;
  }
  const q2 = join(ctx.dir, 'after-qemu.raw');
  const i2 = join(ctx.dir, 'after-img.raw');
  must(ctx.budget, 'qemu-img', ['convert', ...a.flags, '-O', 'raw', a.name, q2], { cwd: ctx.dir });
  const ic = img(ctx.budget, ctx.heap, ['convert', ...a.flags, '-O', 'raw', a.name, i2], { cwd: ctx.dir });
  if (ic.status !== 0) d('img read after qemu-io', `img convert exits ${ic.status}: ${ic.stderr.trim().split('\n')[0]}`);
  else if (firstDifference(i2, q2) !== -1) d('img read after qemu-io', `raw contents differ at ${firstDifference(i2, q2)}`);
  const ik = img(ctx.budget, ctx.heap, ['check', ...a.flags, a.name], { cwd: ctx.dir });
  const qk = q(['check', ...a.flags, a.name]);
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

/**
 * LUKS for a qcow2 option case: an encrypt.* option comes with a random set
 * of the others, and the other options get one now and then where img
 * takes it beside them. Drawn from a generator of its own, so that the
 * case's sizes and patterns stay what they were before LUKS was drawn.
 */
function caseLuks(fmt, key, value, opts, seed) {
  if (fmt !== 'qcow2') return undefined;
  const lr = rng(~seed >>> 0);
  const own = key.startsWith('encrypt.');
  if (!own && !(luksFits(opts) && lr.chance(0.2))) return undefined;
  return { pass: luksPassphrase(lr), options: luksOptions(lr, own ? { [key]: value } : {}) };
}

/** One create-or-convert case for one option value. */
function optionCase(fmt, key, value, mode, seed) {
  const r = rng(seed);
  let opts = [...companions(fmt, key, value), `${key}=${value}`];
  const luks = caseLuks(fmt, key, value, opts, seed);
  if (luks) opts = [...opts.filter((o) => !o.startsWith('encrypt.')), ...optionList(luks.options)];
  // The passphrase, on every img command of the case: `-o encrypt.key-secret=sec0` names it.
  const sec = luks ? secretObject(luks.pass) : [];
  return {
    format: fmt,
    label: `${mode} ${key}=${value}${luks && !key.startsWith('encrypt.') ? ' luks' : ''}`,
    options: luks ? [...new Set([`${key}=${value}`, ...optionList(luks.options)])] : [`${key}=${value}`],
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
        const cr = imgMust(ctx, ['create', ...sec, '-f', fmt, ...(rest.length ? ['-o', rest.join(',')] : []), '-b', b, '-F', bf, out]);
        if (cr.status !== 0) return [{ check: 'img create', detail: `exit ${cr.status}: ${cr.stderr.trim()}` }];
        if (fmt === 'vpc') return differencingVhd(ctx, out, src);
        return judge(ctx, out, fmt, src, regions, { luks });
      }
      if (mode === 'convert') {
        const cv = imgMust(ctx, ['convert', ...sec, '-f', 'raw', '-O', fmt, '-o', opts.join(','), src, out]);
        if (cv.status !== 0) return [{ check: 'img convert', detail: `exit ${cv.status}: ${cv.stderr.trim()}` }];
        const qemuWrites = !(fmt === 'vmdk' && value === 'streamOptimized');
        diffs.push(...judge(ctx, out, fmt, src, regions, { qemuWrites, luks }));
        return diffs;
      }
      const cr = imgMust(ctx, ['create', ...sec, '-f', fmt, '-o', opts.join(','), out, String(size)]);
      if (cr.status !== 0) return [{ check: 'img create', detail: `exit ${cr.status}: ${cr.stderr.trim()}` }];
      // An empty image: compare with zeros of the size qemu sees (a VHD's CHS rounding may grow it).
      const zeros = join(ctx.dir, 'zeros.raw');
      writeFileSync(zeros, '');
      const qi = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', '-f', fmt, out], { cwd: ctx.dir }));
      truncateSync(zeros, qi?.['virtual-size'] ?? size);
      return judge(ctx, out, fmt, zeros, [], { qemuWrites: !(fmt === 'vmdk' && value === 'streamOptimized'), luks });
    },
  };
}

/** Operations on images img converted: each followed by qemu-img check and a compare with the expected contents. */
function opCases(seed) {
  const cases = [];
  const add = (format, label, body) => cases.push({ format, label, options: [label], desc: label, run: body });
  const prep = (ctx, fmt, opts = [], flags = []) => {
    const r = rng(seed + cases.length);
    const size = 4 * MiB + 512 * (1 + r.int(3000));
    const src = join(ctx.dir, 'src.raw');
    const regions = sourceRaw(src, size, r);
    const out = join(ctx.dir, `out.${fmt}`);
    const cv = imgMust(ctx, ['convert', ...flags, '-f', 'raw', '-O', fmt, ...(opts.length ? ['-o', opts.join(',')] : []), src, out]);
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
  cases.push(...luksOpCases(seed, prep, failed));
  return cases;
}

/**
 * Operations on LUKS images img converted, each with its own random
 * encrypt.* options and passphrase: resize, snapshots, key slots; and what
 * both tools refuse beside encryption or without the passphrase.
 */
function luksOpCases(seed, prep, failed) {
  const cases = [];
  const add = (label, body) => {
    const lr = rng((seed * 7727 + 31 * cases.length) >>> 0);
    const luks = { pass: luksPassphrase(lr), options: luksOptions(lr) };
    const opts = optionList(luks.options);
    cases.push({ format: 'qcow2', label: `luks ${label}`, options: [`luks ${label}`], desc: `luks ${label}: -o ${opts.join(',')}`, run: (ctx) => body(ctx, luks, opts) });
  };
  const sec = (luks) => secretObject(luks.pass);
  const named = (out, luks) => imageArgs('qcow2', out, luks.pass);
  for (const grow of [true, false]) {
    add(`resize ${grow ? 'grow' : 'shrink'}`, (ctx, luks, opts) => {
      const { size, src, out } = prep(ctx, 'qcow2', opts, sec(luks));
      const n = grow ? size + MiB + 512 * 7 : size - MiB - 512 * 3;
      const a = named(out, luks);
      const r = imgMust(ctx, ['resize', ...a.flags, ...(grow ? [] : ['--shrink']), a.name, String(n)]);
      if (r.status !== 0) return failed('img resize', r);
      truncateSync(src, n);
      return judge(ctx, out, 'qcow2', src, [], { luks });
    });
  }
  add('snapshot -c/-a/-d', (ctx, luks, opts) => {
    const { src, regions, out } = prep(ctx, 'qcow2', opts, sec(luks));
    const a = named(out, luks);
    let r = imgMust(ctx, ['snapshot', '-c', 's1', ...a.flags, a.name]);
    if (r.status !== 0) return failed('img snapshot -c', r);
    const diffs = judge(ctx, out, 'qcow2', src, regions, { qemuWrites: false, luks });
    must(ctx.budget, 'qemu-io', [...a.flags, '-c', 'write -P 0x99 1000 300000', a.name]);
    r = imgMust(ctx, ['snapshot', '-a', 's1', ...a.flags, a.name]);
    if (r.status !== 0) return [...diffs, ...failed('img snapshot -a', r)];
    diffs.push(...judge(ctx, out, 'qcow2', src, regions, { qemuWrites: false, luks }));
    r = imgMust(ctx, ['snapshot', '-d', 's1', ...a.flags, a.name]);
    if (r.status !== 0) return [...diffs, ...failed('img snapshot -d', r)];
    diffs.push(...judge(ctx, out, 'qcow2', src, regions, { luks }));
    return diffs;
  });
  add('amend key slots (add a passphrase, erase the first)', (ctx, luks, opts) => {
    const { src, regions, out } = prep(ctx, 'qcow2', opts, sec(luks));
    const second = { ...luks, pass: `${luks.pass}-2` };
    const both = [...secretObject(luks.pass), ...secretObject(second.pass, 'sec1')];
    let r = imgMust(ctx, ['amend', ...both, '-o', `encrypt.state=active,encrypt.new-secret=sec1,encrypt.iter-time=${luks.options['encrypt.iter-time']}`, '--image-opts', imageArgs('qcow2', out, luks.pass).name]);
    if (r.status !== 0) return failed('img amend encrypt.state=active', r);
    const diffs = judge(ctx, out, 'qcow2', src, regions, { qemuWrites: false, luks: second });
    r = imgMust(ctx, ['amend', ...both, '-o', `encrypt.state=inactive,encrypt.old-secret=${SECRET_ID}`, '--image-opts', imageArgs('qcow2', out, second.pass, 'sec1').name]);
    if (r.status !== 0) return [...diffs, ...failed('img amend encrypt.state=inactive', r)];
    const slots = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', out]))?.['format-specific']?.data?.encrypt?.slots ?? [];
    const active = slots.map((s, i) => (s.active ? i : -1)).filter((i) => i >= 0);
    if (active.join() !== '1') diffs.push({ check: 'qemu-img info slots after amend', detail: `active slots ${JSON.stringify(active)}, expected [1]` });
    const old = run(ctx.budget, 'qemu-img', ['compare', ...compareArgs('qcow2', out, src, luks.pass)], { cwd: ctx.dir });
    if (old.status !== 2) diffs.push({ check: 'qemu-img with the erased passphrase', detail: `compare exits ${old.status}, expected 2 (no slot opens)` });
    diffs.push(...judge(ctx, out, 'qcow2', src, regions, { luks: second }));
    return diffs;
  });
  // Refused beside encryption by both tools: compressed clusters are never encrypted.
  add('convert -c (refused)', (ctx, luks, opts) => {
    const src = join(ctx.dir, 'src.raw');
    sourceRaw(src, 2 * MiB, rng(seed));
    const i = imgMust(ctx, ['convert', ...sec(luks), '-c', '-f', 'raw', '-O', 'qcow2', '-o', opts.join(','), src, join(ctx.dir, 'img.qcow2')]);
    const q = qemuLuks(ctx.budget, (t) => ['convert', ...sec(luks), '-c', '-f', 'raw', '-O', 'qcow2', '-o', withIterTime(opts, t), src, join(ctx.dir, 'qemu.qcow2')], RETRY_ITER_TIMES, { cwd: ctx.dir });
    return (i.status === 0) === (q.status === 0) ? [] : [{ check: 'convert -c with encryption', detail: `img exits ${i.status}, qemu-img ${q.status}: ${(i.stderr || q.stderr).trim().split('\n')[0]}` }];
  });
  // img refuses preallocation beside encryption; qemu-img 7.2 makes the image, whose clusters read as the decryption of zeros (README, luks-preallocation).
  for (const prealloc of ['metadata', 'falloc', 'full']) {
    add(`create preallocation=${prealloc}`, (ctx, luks, opts) => {
      const size = 2 * MiB + 512 * 5;
      const i = imgMust(ctx, ['create', ...sec(luks), '-f', 'qcow2', '-o', [...opts, `preallocation=${prealloc}`].join(','), join(ctx.dir, 'img.qcow2'), String(size)]);
      const qp = join(ctx.dir, 'qemu.qcow2');
      const q = qemuLuks(ctx.budget, (t) => ['create', '-q', ...sec(luks), '-f', 'qcow2', '-o', `${withIterTime(opts, t)},preallocation=${prealloc}`, qp, String(size)], RETRY_ITER_TIMES, { cwd: ctx.dir });
      if (i.status === 0) {
        // img made it: it must read as zeros, as a new disk does.
        const zeros = join(ctx.dir, 'zeros.raw');
        writeFileSync(zeros, '');
        truncateSync(zeros, size);
        return judge(ctx, join(ctx.dir, 'img.qcow2'), 'qcow2', zeros, [], { luks });
      }
      if (q.status !== 0) return [];
      const a = named(qp, luks);
      const rd = run(ctx.budget, 'qemu-io', ['-r', ...a.flags, '-c', `read -P 0 0 ${size}`, a.name], { cwd: ctx.dir });
      const zero = rd.status === 0 && !/verification failed/i.test(rd.stdout + rd.stderr);
      return [{ check: 'preallocation with encryption', detail: `img refuses it (exit ${i.status}); qemu-img makes the image, which reads ${zero ? 'as zeros' : 'not as zeros (the decryption of zeros)'}` }];
    });
  }
  // Without the passphrase, or with a wrong one: the same exit codes (img check and map read no data, and take an image without its passphrase: not compared).
  add('without or with a wrong passphrase', (ctx, luks, opts) => {
    const { src, out } = prep(ctx, 'qcow2', opts, sec(luks));
    const diffs = [];
    const wrong = `${luks.pass}x`;
    const a = named(out, { pass: wrong });
    const tries = [
      ['compare, no passphrase', ['compare', ...compareArgs('qcow2', out, src)]],
      ['convert -O raw, no passphrase', ['convert', '-f', 'qcow2', '-O', 'raw', out, join(ctx.dir, 'out.raw')]],
      ['compare, wrong passphrase', ['compare', ...compareArgs('qcow2', out, src, wrong)]],
      ['convert -O raw, wrong passphrase', ['convert', ...a.flags, '-O', 'raw', a.name, join(ctx.dir, 'out.raw')]],
      ['check, wrong passphrase', ['check', ...a.flags, a.name]],
    ];
    for (const [what, argv] of tries) {
      const i = imgMust(ctx, argv);
      const q = run(ctx.budget, 'qemu-img', argv, { cwd: ctx.dir });
      if (i.status !== q.status) diffs.push({ check: what, detail: `img exits ${i.status}, qemu-img ${q.status}: img ${JSON.stringify((i.stderr || i.stdout).trim().split('\n')[0])}, qemu-img ${JSON.stringify((q.stderr || q.stdout).trim().split('\n')[0])}` });
    }
    return diffs;
  });
  return cases;
}

/** The options with encrypt.iter-time set to `t` ms (a retry after qemu-img failed to time PBKDF2). */
const withIterTime = (opts, t) => [...opts.filter((o) => !o.startsWith('encrypt.iter-time=')), `encrypt.iter-time=${t}`].join(',');

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
