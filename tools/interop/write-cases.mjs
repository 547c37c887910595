// Direction 2: images img writes (create, convert, resize, snapshot, amend,
// commit, rebase, bitmap), judged by qemu-img check / info / compare and
// qemu-io, then written by qemu-io and read back by img. Some qcow2 images
// are LUKS-encrypted (luks.mjs): both tools then get the passphrase.
import { copyFileSync, openSync, writeSync, closeSync, ftruncateSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PBKDF2_TIMING, PrepError, SECRET_ID, compareArgs, firstDifference, imageArgs, img, json, must, qemuLuks, rng, run, secretObject } from './lib.mjs';
import { RETRY_ITER_TIMES, LUKS_VALUES, expectedEncrypt, expectedLuks, luksCipherSet, luksFits, luksFormatOptions, luksFormatValues, luksOptions, luksPassphrase, luksWithIterTime, optionList } from './luks.mjs';
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
 * What qemu-img info says of a luks image img wrote: encrypted, the
 * cipher, mode, IV generator and hashes asked for (or qemu's defaults), and
 * img info's format-specific data (uuid, payload offset, every key slot) as
 * qemu-img's.
 */
function judgeLuksVolume(ctx, path, qinfo, options) {
  const diffs = [];
  if (qinfo?.encrypted !== true || qinfo?.format !== 'luks') diffs.push({ check: 'qemu-img info luks', detail: `format ${qinfo?.format}, encrypted ${qinfo?.encrypted}` });
  const seen = qinfo?.['format-specific']?.data ?? {};
  const want = expectedLuks(options);
  for (const k of new Set([...Object.keys(want), 'ivgen-hash-alg'])) if (seen[k] !== want[k]) diffs.push({ check: 'qemu-img info luks', detail: `${k} is ${seen[k]}, asked ${want[k] ?? 'none'}` });
  const ii = img(ctx.budget, ctx.heap, ['info', '-f', 'luks', '--output=json', path], { cwd: ctx.dir });
  for (const line of jsonDiff(json(ii.stdout)?.['format-specific']?.data, seen, '.luks', true)) diffs.push({ check: 'img info luks', detail: line });
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
  else if (luks) diffs.push(...(fmt === 'luks' ? judgeLuksVolume : judgeEncryption)(ctx, path, json(info.stdout), luks.options));
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
  // Without the passphrase, or with a wrong one: the same exit codes.
  add('without or with a wrong passphrase', (ctx, luks, opts) => {
    const { src, out } = prep(ctx, 'qcow2', opts, sec(luks));
    const diffs = [];
    const wrong = `${luks.pass}x`;
    const a = named(out, { pass: wrong });
    const tries = [
      ['compare, no passphrase', ['compare', ...compareArgs('qcow2', out, src)]],
      ['convert -O raw, no passphrase', ['convert', '-f', 'qcow2', '-O', 'raw', out, join(ctx.dir, 'out.raw')]],
      ['map, no passphrase', ['map', '--output=json', '-f', 'qcow2', out]],
      ['measure, no passphrase', ['measure', '-f', 'qcow2', '-O', 'qcow2', out]],
      ['check, no passphrase', ['check', '-f', 'qcow2', out]],
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

/** qemu-img makes a luks image, `argvFor(iterTime)`, tried again on a PBKDF2 timing failure; a refusal of another kind is a preparation failure (skipped). */
function qemuLuksMust(ctx, o, argvFor) {
  const q = qemuLuks(ctx.budget, argvFor, [o['iter-time'], ...RETRY_ITER_TIMES.filter((t) => t !== o['iter-time'])], { cwd: ctx.dir });
  ctx.log.push(`qemu-img ${q.argv.join(' ')}`);
  if (q.status !== 0) throw new PrepError(`qemu-img ${q.argv.join(' ')}: exit ${q.status}: ${`${q.stderr}${q.stdout}`.trim().split('\n')[0]}`);
}

/** qemu-img's decryption of a luks image, into `name` in the case's directory. */
function qemuRaw(ctx, path, pass, name) {
  const a = imageArgs('luks', path, pass);
  const out = join(ctx.dir, name);
  must(ctx.budget, 'qemu-img', ['convert', ...a.flags, '-O', 'raw', a.name, out], { cwd: ctx.dir });
  return out;
}

/**
 * qemu-img info of a luks image without what differs between two
 * creations with the same options (the uuid, PBKDF2 iteration counts timed
 * on each run, the file's allocation).
 */
function luksLayout(ctx, path) {
  const info = json(must(ctx.budget, 'qemu-img', ['info', '--output=json', '-f', 'luks', path], { cwd: ctx.dir })) ?? {};
  const data = { ...info['format-specific']?.data };
  delete data.uuid;
  delete data['master-key-iters'];
  data.slots = (data.slots ?? []).map((slot) => {
    const kept = { ...slot };
    delete kept.iters;
    return kept;
  });
  return { 'virtual-size': info['virtual-size'], encrypted: info.encrypted, data };
}

/**
 * One create-or-convert case for one luks option value, the others drawn
 * at random (luksFormatOptions). convert: qemu-img must read the source.
 * create: a new luks image reads as the decryption of whatever the file
 * holds (noise), so img's header area, file size and key slot layout must be
 * those of qemu-img create with the same options, and both tools must
 * decrypt the new image alike; then qemu-io writes into it, read back by img.
 */
function luksOptionCase(key, value, mode, seed, set) {
  const r = rng(seed);
  const luks = { pass: luksPassphrase(r), options: luksFormatOptions(r, set, { [key]: value }) };
  const opts = optionList(luks.options);
  const sec = secretObject(luks.pass);
  const unaligned = mode === 'create' && r.chance(0.3);
  return {
    format: 'luks',
    label: `${mode} ${key}=${value}`,
    options: [`${key}=${value}`],
    desc: `img ${mode} -f luks -o ${opts.join(',')}${unaligned ? ' (size not a whole sector)' : ''}`,
    run(ctx) {
      const size = 3 * MiB + 512 * (1 + r.int(3000)) + (unaligned ? 1 + r.int(511) : 0);
      const out = join(ctx.dir, 'out.luks');
      if (mode === 'convert') {
        const src = join(ctx.dir, 'src.raw');
        const regions = sourceRaw(src, size, r);
        const cv = imgMust(ctx, ['convert', ...sec, '-f', 'raw', '-O', 'luks', '-o', opts.join(','), src, out]);
        if (cv.status !== 0) return [{ check: 'img convert', detail: `exit ${cv.status}: ${cv.stderr.trim()}` }];
        return judge(ctx, out, 'luks', src, regions, { luks });
      }
      const cr = imgMust(ctx, ['create', ...sec, '-f', 'luks', '-o', opts.join(','), out, String(size)]);
      if (cr.status !== 0) return [{ check: 'img create', detail: `exit ${cr.status}: ${cr.stderr.trim()}` }];
      const theirs = join(ctx.dir, 'qemu.luks');
      qemuLuksMust(ctx, luks.options, (t) => ['create', '-q', ...sec, '-f', 'luks', '-o', luksWithIterTime(luks.options, t), theirs, String(size)]);
      const diffs = [];
      const [fi, fq] = [statSync(out).size, statSync(theirs).size];
      if (fi !== fq) diffs.push({ check: 'file size after create', detail: `img ${fi}, qemu-img ${fq}` });
      for (const line of jsonDiff(luksLayout(ctx, out), luksLayout(ctx, theirs))) diffs.push({ check: 'layout after create (qemu-img info)', detail: line });
      const expect = qemuRaw(ctx, out, luks.pass, 'new-qemu.raw');
      const a = imageArgs('luks', out, luks.pass);
      const ic = imgMust(ctx, ['convert', ...a.flags, '-O', 'raw', a.name, join(ctx.dir, 'new-img.raw')]);
      if (ic.status !== 0) diffs.push({ check: 'img read of a new image', detail: `exit ${ic.status}: ${ic.stderr.trim().split('\n')[0]}` });
      else if (firstDifference(join(ctx.dir, 'new-img.raw'), expect) !== -1) diffs.push({ check: 'img read of a new image', detail: `raw contents differ from qemu-img's at ${firstDifference(join(ctx.dir, 'new-img.raw'), expect)}` });
      diffs.push(...judge(ctx, out, 'luks', expect, [], { luks }));
      return diffs;
    },
  };
}

/** `qemu-img: ` or `img amend: ERR_IMG_...: luks: ` off a refusal's first line, for comparing the sentences. */
const refusal = (text) =>
  text
    .trim()
    .split('\n')[0]
    .replace(/^(qemu-img|img \w+): (ERR_IMG_[A-Z_]+: )?(luks: )?/, '')
    .trim();

/**
 * Operations on luks images img converted, each with its own random
 * options and passphrase: resize (the file byte for byte as qemu-img
 * resize leaves it), key slots added and erased (by passphrase and by
 * slot) with qemu-img adding one in between, qemu-img amend's refusals,
 * conversions out of luks, and what both tools refuse: compression,
 * preallocation (qemu-img takes it for luks), no or a wrong passphrase.
 */
function luksVolumeOpCases(seed, set) {
  const cases = [];
  const add = (label, body) => {
    const lr = rng((seed * 7741 + 37 * cases.length) >>> 0);
    const luks = { pass: luksPassphrase(lr), options: luksFormatOptions(lr, set) };
    const opts = optionList(luks.options);
    cases.push({ format: 'luks', label, options: [label], desc: `luks ${label}: -o ${opts.join(',')}`, run: (ctx) => body(ctx, luks, opts, lr) });
  };
  const failed = (what, r) => [{ check: what, detail: `exit ${r.status}: ${r.stderr.trim().split('\n')[0]}` }];
  const prep = (ctx, luks, opts, lr) => {
    const size = 4 * MiB + 512 * (1 + lr.int(3000));
    const src = join(ctx.dir, 'src.raw');
    const regions = sourceRaw(src, size, lr);
    const out = join(ctx.dir, 'out.luks');
    const cv = imgMust(ctx, ['convert', ...secretObject(luks.pass), '-f', 'raw', '-O', 'luks', '-o', opts.join(','), src, out]);
    if (cv.status !== 0) throw new Error(`img convert: ${cv.stderr.trim()}`);
    return { size, src, regions, out, a: imageArgs('luks', out, luks.pass) };
  };
  for (const [label, to] of [
    ['resize grow', (n) => n + MiB + 512 * 7],
    ['resize grow to a size not a whole sector', (n) => n + MiB + 300],
    ['resize shrink', (n) => n - MiB - 512 * 3],
    ['resize shrink to a size not a whole sector', (n) => n - MiB - 1000],
  ]) {
    add(label, (ctx, luks, opts, lr) => {
      const { size, src, regions, out, a } = prep(ctx, luks, opts, lr);
      const n = to(size);
      const shrink = n < size;
      const theirs = join(ctx.dir, 'qemu.luks');
      copyFileSync(out, theirs);
      const r = imgMust(ctx, ['resize', ...a.flags, ...(shrink ? ['--shrink'] : []), a.name, String(n)]);
      if (r.status !== 0) return failed('img resize', r);
      const qa = imageArgs('luks', theirs, luks.pass);
      must(ctx.budget, 'qemu-img', ['resize', '-q', ...qa.flags, ...(shrink ? ['--shrink'] : []), qa.name, String(n)], { cwd: ctx.dir });
      const diffs = [];
      const at = firstDifference(out, theirs);
      if (at !== -1) diffs.push({ check: 'file after resize', detail: `img's differs from qemu-img resize's at ${at}` });
      // Grown space reads as the decryption of zeros in both tools, and so does a last sector the file ends inside (its cipher blocks cut short): qemu-img's reading is the expected one, the old contents kept up to the last whole sector.
      const expect = qemuRaw(ctx, out, luks.pass, 'expect.raw');
      const kept = firstDifference(expect, src, true);
      if (kept !== -1 && kept < Math.min(Math.floor(n / 512) * 512, size)) diffs.push({ check: 'contents after resize', detail: `differ from the source at ${kept}` });
      diffs.push(...judge(ctx, out, 'luks', expect, shrink ? [] : regions, { luks }));
      return diffs;
    });
  }
  add('amend key slots (add by slot, erase by passphrase, qemu-img adds one, erase by slot)', (ctx, luks, opts, lr) => {
    const { src, regions, out, a } = prep(ctx, luks, opts, lr);
    const pass2 = `${luks.pass}-2`;
    const pass3 = `${luks.pass}-3`;
    const all = [...secretObject(luks.pass), ...secretObject(pass2, 'sec1'), ...secretObject(pass3, 'sec2')];
    const slot = 1 + lr.int(7);
    const iter = luks.options['iter-time'];
    const diffs = [];
    const slots = () => (json(must(ctx.budget, 'qemu-img', ['info', '--output=json', out]))?.['format-specific']?.data?.slots ?? []).map((s, i) => (s.active ? i : -1)).filter((i) => i >= 0);
    const opensIn = (pass, id) => run(ctx.budget, 'qemu-img', ['compare', ...compareArgs('luks', out, src, pass, id)], { cwd: ctx.dir }).status;
    let r = imgMust(ctx, ['amend', ...all, '--image-opts', a.name, '-o', `state=active,new-secret=sec1,keyslot=${slot},iter-time=${iter}`]);
    if (r.status !== 0) return failed(`img amend state=active,keyslot=${slot}`, r);
    if (slots().join() !== `0,${slot}`) diffs.push({ check: 'qemu-img info slots after adding', detail: `active ${slots().join()}, expected 0,${slot}` });
    diffs.push(...judge(ctx, out, 'luks', src, regions, { qemuWrites: false, luks: { ...luks, pass: pass2 } }));
    r = imgMust(ctx, ['amend', ...all, '--image-opts', imageArgs('luks', out, pass2, 'sec1').name, '-o', `state=inactive,old-secret=${SECRET_ID}`]);
    if (r.status !== 0) return [...diffs, ...failed('img amend state=inactive,old-secret', r)];
    if (slots().join() !== `${slot}`) diffs.push({ check: 'qemu-img info slots after erasing by passphrase', detail: `active ${slots().join()}, expected ${slot}` });
    if (opensIn(luks.pass, SECRET_ID) !== 2) diffs.push({ check: 'qemu-img with the erased passphrase', detail: 'compare does not exit 2' });
    // qemu-img adds a third passphrase to the header img wrote; img must read with it.
    const q = qemuLuks(ctx.budget, (t) => ['amend', ...all, '--image-opts', imageArgs('luks', out, pass2, 'sec1').name, '-o', `state=active,new-secret=sec2,iter-time=${t}`], [iter, ...RETRY_ITER_TIMES.filter((t) => t !== iter)], { cwd: ctx.dir });
    if (q.status !== 0) return [...diffs, { check: "qemu-img amend on img's image", detail: `exit ${q.status}: ${q.stderr.trim().split('\n')[0]}` }];
    const third = slots().find((s) => s !== slot);
    const i3 = img(ctx.budget, ctx.heap, ['compare', ...compareArgs('luks', out, src, pass3)], { cwd: ctx.dir });
    if (i3.status !== 0) diffs.push({ check: 'img with the passphrase qemu-img added', detail: `compare exits ${i3.status}: ${i3.stderr.trim().split('\n')[0]}` });
    r = imgMust(ctx, ['amend', ...all, '--image-opts', imageArgs('luks', out, pass3, 'sec2').name, '-o', `state=inactive,keyslot=${slot}`]);
    if (r.status !== 0) return [...diffs, ...failed(`img amend state=inactive,keyslot=${slot}`, r)];
    if (slots().join() !== `${third}`) diffs.push({ check: 'qemu-img info slots after erasing by slot', detail: `active ${slots().join()}, expected ${third}` });
    if (opensIn(pass2, 'sec1') !== 2) diffs.push({ check: 'qemu-img with the passphrase of the erased slot', detail: 'compare does not exit 2' });
    diffs.push(...judge(ctx, out, 'luks', src, regions, { luks: { ...luks, pass: pass3 } }));
    return diffs;
  });
  add('amend refusals (as qemu-img amend, the file unchanged)', (ctx, luks, opts, lr) => {
    const { out, a } = prep(ctx, luks, opts, lr);
    const all = [...secretObject(luks.pass), ...secretObject(`${luks.pass}-2`, 'sec1')];
    const diffs = [];
    for (const o of [
      'state=active,new-secret=sec1,keyslot=0',
      `state=inactive,old-secret=${SECRET_ID}`,
      'state=inactive,keyslot=0',
      'state=inactive,keyslot=9',
      'state=active',
      'state=inactive,keyslot=3',
      'state=active,new-secret=sec1,keyslot=8',
      'state=inactive,old-secret=sec1',
      'state=active,new-secret=sec1,keyslot=-1',
    ]) {
      const mine = join(ctx.dir, 'img.luks');
      const theirs = join(ctx.dir, 'qemu.luks');
      copyFileSync(out, mine);
      copyFileSync(out, theirs);
      const i = imgMust(ctx, ['amend', ...all, '--image-opts', a.name.replace(out, mine), '-o', o]);
      const q = run(ctx.budget, 'qemu-img', ['amend', ...all, '--image-opts', a.name.replace(out, theirs), '-o', o], { cwd: ctx.dir });
      if (PBKDF2_TIMING.test(q.stderr)) continue;
      if (i.status !== q.status) diffs.push({ check: `amend -o ${o}`, detail: `img exits ${i.status}, qemu-img ${q.status}: img ${JSON.stringify(refusal(i.stderr))}, qemu-img ${JSON.stringify(refusal(q.stderr))}` });
      else if (q.status !== 0 && refusal(i.stderr) !== refusal(q.stderr)) diffs.push({ check: `amend -o ${o}`, detail: `img says ${JSON.stringify(refusal(i.stderr))}, qemu-img ${JSON.stringify(refusal(q.stderr))}` });
      if (i.status !== 0 && firstDifference(mine, out) !== -1) diffs.push({ check: `amend -o ${o}`, detail: 'img refused it but changed the file' });
    }
    return diffs;
  });
  add('convert luks -> qcow2 and -> luks under another passphrase', (ctx, luks, opts, lr) => {
    const { src, regions, a } = prep(ctx, luks, opts, lr);
    const diffs = [];
    const q2 = join(ctx.dir, 'out.qcow2');
    let r = imgMust(ctx, ['convert', ...a.flags, '-O', 'qcow2', a.name, q2]);
    if (r.status !== 0) diffs.push(...failed('img convert -O qcow2', r));
    else diffs.push(...judge(ctx, q2, 'qcow2', src, regions, { qemuWrites: false }));
    const other = { pass: `${luks.pass}-new`, options: luksFormatOptions(lr, set) };
    const o2 = optionList({ ...other.options, 'key-secret': 'sec1' }).join(',');
    const l2 = join(ctx.dir, 'out2.luks');
    r = imgMust(ctx, ['convert', ...a.flags.slice(0, 2), ...secretObject(other.pass, 'sec1'), '--image-opts', a.name, '-O', 'luks', '-o', o2, l2]);
    if (r.status !== 0) return [...diffs, ...failed('img convert -O luks -o key-secret=sec1', r)];
    diffs.push(...judge(ctx, l2, 'luks', src, regions, { luks: other }));
    return diffs;
  });
  add('convert -c -O luks (refused)', (ctx, luks, opts) => {
    const src = join(ctx.dir, 'src.raw');
    sourceRaw(src, 2 * MiB, rng(seed));
    const sec = secretObject(luks.pass);
    const i = imgMust(ctx, ['convert', ...sec, '-c', '-f', 'raw', '-O', 'luks', '-o', opts.join(','), src, join(ctx.dir, 'img.luks')]);
    const q = qemuLuks(ctx.budget, (t) => ['convert', ...sec, '-c', '-f', 'raw', '-O', 'luks', '-o', luksWithIterTime(luks.options, t), src, join(ctx.dir, 'qemu.luks')], RETRY_ITER_TIMES, { cwd: ctx.dir });
    return i.status === q.status ? [] : [{ check: 'convert -c -O luks', detail: `img exits ${i.status}, qemu-img ${q.status}: img ${JSON.stringify(refusal(i.stderr))}, qemu-img ${JSON.stringify(refusal(q.stderr))}` }];
  });
  // qemu-img takes preallocation for luks (an option of the file below it): the payload written as zeros (falloc, full) or not (off, metadata).
  for (const prealloc of ['metadata', 'falloc', 'full']) {
    add(`create preallocation=${prealloc}`, (ctx, luks, opts) => {
      const size = 2 * MiB + 512 * 5;
      const sec = secretObject(luks.pass);
      const mine = join(ctx.dir, 'img.luks');
      const i = imgMust(ctx, ['create', ...sec, '-f', 'luks', '-o', [...opts, `preallocation=${prealloc}`].join(','), mine, String(size)]);
      const theirs = join(ctx.dir, 'qemu.luks');
      qemuLuksMust(ctx, luks.options, (t) => ['create', '-q', ...sec, '-f', 'luks', '-o', `${luksWithIterTime(luks.options, t)},preallocation=${prealloc}`, theirs, String(size)]);
      if (i.status !== 0) return [{ check: 'create -f luks with preallocation', detail: `img exits ${i.status} (${refusal(i.stderr)}); qemu-img makes the image` }];
      const diffs = [];
      for (const line of jsonDiff(luksLayout(ctx, mine), luksLayout(ctx, theirs))) diffs.push({ check: 'layout after create (qemu-img info)', detail: line });
      const [fi, fq] = [statSync(mine).size, statSync(theirs).size];
      if (fi !== fq) diffs.push({ check: 'file size after create', detail: `img ${fi}, qemu-img ${fq}` });
      diffs.push(...judge(ctx, mine, 'luks', qemuRaw(ctx, mine, luks.pass, 'expect.raw'), [], { luks }));
      return diffs;
    });
  }
  // Without the passphrase, or with a wrong one: the same exit codes.
  add('without or with a wrong passphrase', (ctx, luks, opts, lr) => {
    const { src, out } = prep(ctx, luks, opts, lr);
    const diffs = [];
    const wrong = `${luks.pass}x`;
    const a = imageArgs('luks', out, wrong);
    const tries = [
      ['compare, no passphrase', ['compare', ...compareArgs('luks', out, src)]],
      ['convert -O raw, no passphrase', ['convert', '-f', 'luks', '-O', 'raw', out, join(ctx.dir, 'out.raw')]],
      ['map, no passphrase', ['map', '--output=json', '-f', 'luks', out]],
      ['measure, no passphrase', ['measure', '-f', 'luks', '-O', 'qcow2', out]],
      ['check, no passphrase', ['check', '-f', 'luks', out]],
      ['compare, wrong passphrase', ['compare', ...compareArgs('luks', out, src, wrong)]],
      ['convert -O raw, wrong passphrase', ['convert', ...a.flags, '-O', 'raw', a.name, join(ctx.dir, 'out.raw')]],
      ['map, wrong passphrase', ['map', '--output=json', ...a.flags, a.name]],
      ['check, wrong passphrase', ['check', ...a.flags, a.name]],
      ['resize, wrong passphrase', ['resize', ...a.flags, a.name, String(8 * MiB)]],
      ['resize, no passphrase', ['resize', '-f', 'luks', out, String(8 * MiB)]],
    ];
    for (const [what, argv] of tries) {
      const i = imgMust(ctx, argv);
      const q = run(ctx.budget, 'qemu-img', argv, { cwd: ctx.dir });
      if (i.status !== q.status) diffs.push({ check: what, detail: `img exits ${i.status}, qemu-img ${q.status}: img ${JSON.stringify((i.stderr || i.stdout).trim().split('\n')[0])}, qemu-img ${JSON.stringify((q.stderr || q.stdout).trim().split('\n')[0])}` });
    }
    return diffs;
  });
  // A source that ends inside a sector: the image is a whole sector longer, as qemu-img convert makes it, and reads as the source then zeros.
  add('convert a source not a whole sector', (ctx, luks, opts, lr) => {
    const size = 3 * MiB + 512 * lr.int(100) + 1 + lr.int(511);
    const src = join(ctx.dir, 'src.raw');
    const regions = sourceRaw(src, size, lr);
    const out = join(ctx.dir, 'out.luks');
    const sec = secretObject(luks.pass);
    const cv = imgMust(ctx, ['convert', ...sec, '-f', 'raw', '-O', 'luks', '-o', opts.join(','), src, out]);
    if (cv.status !== 0) return failed('img convert', cv);
    const theirs = join(ctx.dir, 'qemu.luks');
    qemuLuksMust(ctx, luks.options, (t) => ['convert', ...sec, '-f', 'raw', '-O', 'luks', '-o', luksWithIterTime(luks.options, t), src, theirs]);
    const diffs = [];
    const [fi, fq] = [statSync(out).size, statSync(theirs).size];
    if (fi !== fq) diffs.push({ check: 'file size after convert', detail: `img ${fi}, qemu-img ${fq}` });
    const mine = qemuRaw(ctx, out, luks.pass, 'img-image.raw');
    const at = firstDifference(mine, qemuRaw(ctx, theirs, luks.pass, 'qemu-image.raw'));
    if (at !== -1) diffs.push({ check: 'contents after convert', detail: `img's image reads unlike qemu-img's at ${at}` });
    diffs.push(...judge(ctx, out, 'luks', mine, regions, { luks }));
    return diffs;
  });
  // img writes into a luks image qemu-img made (convert -n --target-image-opts).
  add('convert -n into an image qemu-img made', (ctx, luks, opts, lr) => {
    const size = 3 * MiB + 512 * lr.int(3000);
    const src = join(ctx.dir, 'src.raw');
    const regions = sourceRaw(src, size, lr);
    const out = join(ctx.dir, 'out.luks');
    const sec = secretObject(luks.pass);
    qemuLuksMust(ctx, luks.options, (t) => ['create', '-q', ...sec, '-f', 'luks', '-o', luksWithIterTime(luks.options, t), out, String(size)]);
    const a = imageArgs('luks', out, luks.pass);
    const cv = imgMust(ctx, ['convert', '-n', ...sec, '-f', 'raw', '--target-image-opts', src, a.name]);
    if (cv.status !== 0) return failed('img convert -n --target-image-opts', cv);
    return judge(ctx, out, 'luks', src, regions, { luks });
  });
  // measure -O luks: the header area (its key material sized by the cipher) plus the source's size, from a raw and from a luks source.
  add('measure -O luks', (ctx, luks, opts, lr) => {
    const { src, a } = prep(ctx, luks, opts, lr);
    const diffs = [];
    // One option set: qemu-img measure -O luks times PBKDF2 as a create does, seconds each.
    {
      const o = luksFormatOptions(lr, set);
      /** @type {Array<[string, string[]]>} */
      const sources = [
        ['raw', ['-f', 'raw', src]],
        ['luks', [...a.flags, a.name]],
      ];
      for (const [from, source] of sources) {
        const argvFor = (t) => ['measure', '--output=json', ...secretObject(luks.pass), '-O', 'luks', '-o', luksWithIterTime(o, t), ...source.filter((x) => x !== '--object' && !x.startsWith('secret,'))];
        const q = qemuLuks(ctx.budget, argvFor, [o['iter-time'], ...RETRY_ITER_TIMES.filter((t) => t !== o['iter-time'])], { cwd: ctx.dir });
        const i = imgMust(ctx, argvFor(o['iter-time']));
        if (i.status !== q.status) diffs.push({ check: `measure -O luks -o ${optionList(o).join(',')} of ${from}`, detail: `img exits ${i.status}, qemu-img ${q.status}: ${refusal(i.stderr || q.stderr)}` });
        else for (const line of jsonDiff(json(i.stdout), json(q.stdout))) diffs.push({ check: `measure -O luks -o ${optionList(o).join(',')} of ${from}`, detail: line });
      }
    }
    return diffs;
  });
  return cases;
}

/** The options with encrypt.iter-time set to `t` ms (a retry after qemu-img failed to time PBKDF2). */
const withIterTime = (opts, t) => [...opts.filter((o) => !o.startsWith('encrypt.iter-time=')), `encrypt.iter-time=${t}`].join(',');

/**
 * Reads `img create -f X -o help` and builds one case per option value and
 * mode; luks (qemu's luks format) draws its ciphers from `set`
 * (luks.mjs luksCipherSet). luks cases come last, so the ids and seeds of
 * the other formats' cases stay those of earlier runs.
 */
export function writeCases(seed, formats, imgHelp, set = luksCipherSet('aes')) {
  const out = [];
  const uncovered = [];
  let i = 0;
  const values = { ...VALUES, luks: luksFormatValues(set) };
  const optionCases = (fmt) => {
    const names = imgHelp(fmt);
    for (const key of names) {
      if (key === 'size') continue;
      const list = values[fmt]?.[key];
      if (!list) {
        uncovered.push(`${fmt}:${key}`);
        continue;
      }
      for (const v of list) for (const mode of ['convert', 'create']) out.push({ id: `w${i}`, ...(fmt === 'luks' ? luksOptionCase(key, v, mode, seed * 104729 + i++, set) : optionCase(fmt, key, v, mode, seed * 104729 + i++)) });
    }
  };
  for (const fmt of formats) if (fmt !== 'luks') optionCases(fmt);
  for (const c of opCases(seed)) if (formats.includes(c.format)) out.push({ id: `w${i++}`, ...c });
  if (formats.includes('luks')) {
    optionCases('luks');
    for (const c of luksVolumeOpCases(seed, set)) out.push({ id: `w${i++}`, ...c });
  }
  return { cases: out, uncovered };
}
