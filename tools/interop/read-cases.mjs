// Direction 1: images qemu-img and qemu-io write, over the option matrix.
// Each case is { id, format, label, options, build(ctx) -> { path, fmt,
// pass } }; build runs qemu-img / qemu-io only, in ctx.dir. `pass` is the
// passphrase of a LUKS image (luks.mjs), undefined for the others.
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { PrepError, SECRET_ID, imageArgs, must, qemuLuks, rng, run, secretObject } from './lib.mjs';
import { LUKS_VALUES, RETRY_ITER_TIMES, luksCipherSet, luksFormatOptions, luksOptions, luksPassphrase, luksWithIterTime, optionList } from './luks.mjs';

const MiB = 1 << 20;
const CLUSTERS = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152];
const REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64];

/** An odd virtual size: whole MiB plus some sectors (qemu-img rounds sizes to 512). */
function oddSize(r, minMib = 2, maxMib = 12) {
  return (minMib + r.int(maxMib - minMib + 1)) * MiB + r.pick([0, 512, 512 * (1 + r.int(200)), 512 * 2047]);
}

/**
 * A qemu-io script of writes at odd offsets and lengths, zero writes (with
 * and without unmap), discards, compressed cluster writes, an unaligned tail
 * and the last sector.
 */
export function fillScript(r, size, { cluster = 65536, compress = true, zeroes = true, count = 8 } = {}) {
  const c = [];
  const span = (max) => 1 + r.int(max);
  for (let i = 0; i < count; i++) {
    const off = r.int(size - 1);
    const len = Math.min(size - off, span(r.chance(0.3) ? 3 * cluster : 70_000));
    const k = r();
    if (k < 0.5 || !zeroes) c.push(`write -P 0x${(1 + r.int(254)).toString(16)} ${off} ${len}`);
    else if (k < 0.65) c.push(`write -z ${off} ${len}`);
    else if (k < 0.8) c.push(`write -z -u ${off} ${len}`);
    else c.push(`discard ${off} ${len}`);
  }
  // First, while the cluster is still unallocated: qemu compresses only into a free cluster.
  if (compress && size >= cluster) {
    const at = r.int(Math.floor(size / cluster)) * cluster;
    c.unshift(`write -c -P 0x${(1 + r.int(254)).toString(16)} ${at} ${cluster}`);
    // The last cluster may be partial: qemu compresses it too.
    const last = Math.floor((size - 1) / cluster) * cluster;
    if (last !== at && r.chance(0.5)) c.unshift(`write -c -P 0x${(1 + r.int(254)).toString(16)} ${last} ${size - last}`);
  }
  c.push(`write -P 0x5a ${size - 512} 512`);
  const tail = 1 + r.int(511);
  c.push(`write -P 0x3c ${size - tail - 700} ${tail + 200}`);
  return c;
}

/** qemu-io runs `script` on `file` (encrypted with passphrase `pass` when given). */
function qemuIo(ctx, fmt, file, script, pass) {
  const a = imageArgs(fmt, file, pass);
  const argv = [...a.flags];
  for (const s of script) argv.push('-c', s);
  argv.push(a.name);
  const out = must(ctx.budget, 'qemu-io', argv, { cwd: ctx.dir });
  if (/error|failed/i.test(out))
    throw new Error(
      `qemu-io ${file}: ${out
        .trim()
        .split('\n')
        .find((l) => /error|failed/i.test(l))}`,
    );
  ctx.log.push(`qemu-io ${a.flags.join(' ')} ${script.map((s) => `-c '${s}'`).join(' ')} ${a.name}`);
}

function qemuImg(ctx, argv) {
  ctx.log.push(`qemu-img ${argv.join(' ')}`);
  return must(ctx.budget, 'qemu-img', argv, { cwd: ctx.dir });
}

/** qemu-img makes a LUKS image, `argvFor(iterTime)`: the case's encrypt.iter-time first, others after a PBKDF2 timing failure (lib.mjs qemuLuks). */
function qemuImgLuks(ctx, luks, argvFor) {
  const first = luks.options['encrypt.iter-time'];
  const r = qemuLuks(ctx.budget, argvFor, [first, ...RETRY_ITER_TIMES.filter((t) => t !== first)], { cwd: ctx.dir });
  ctx.log.push(`qemu-img ${r.argv.join(' ')}`);
  if (r.status !== 0) throw new PrepError(`qemu-img ${r.argv.join(' ')}: exit ${r.status}: ${`${r.stderr}${r.stdout}`.trim().split('\n')[0]}`);
}

/** A raw file filled with patterns and zero runs, through qemu-io. */
function rawFilled(ctx, name, size, r) {
  const p = join(ctx.dir, name);
  writeFileSync(p, '');
  qemuImg(ctx, ['create', '-q', '-f', 'raw', p, String(size)]);
  qemuIo(ctx, 'raw', p, fillScript(r, size, { compress: false, zeroes: false }));
  return p;
}

/** A base image of `fmt` for a backing chain, filled by qemu-io (VMDK through a raw and convert). */
function baseImage(ctx, fmt, size, r) {
  const p = join(ctx.dir, `base.${fmt}`);
  if (fmt === 'raw') return rawFilled(ctx, 'base.raw', size, r);
  if (fmt === 'vmdk') {
    const raw = rawFilled(ctx, 'base-src.raw', size, r);
    qemuImg(ctx, ['convert', '-q', '-f', 'raw', '-O', 'vmdk', raw, p]);
    return p;
  }
  qemuImg(ctx, ['create', '-q', '-f', fmt, p, String(size)]);
  qemuIo(ctx, fmt, p, fillScript(r, size, { compress: fmt === 'qcow2', zeroes: fmt === 'qcow2' }));
  return p;
}

/** Random valid qcow2 options, with `force` overriding some of them. */
function qcow2Options(r, force) {
  const o = {};
  o.compat = force.compat ?? (r.chance(0.3) ? '0.10' : '1.1');
  o.cluster_size = force.cluster_size ?? r.pick(CLUSTERS);
  const v3 = o.compat === '1.1';
  if (v3) {
    o.refcount_bits = force.refcount_bits ?? (r.chance(0.5) ? r.pick(REFCOUNT_BITS) : 16);
    if (force.lazy_refcounts ?? r.chance(0.3)) o.lazy_refcounts = 'on';
    if (o.cluster_size >= 16384 && (force.extended_l2 ?? r.chance(0.3))) o.extended_l2 = 'on';
    if (force.compression_type ?? r.chance(0.4)) o.compression_type = force.compression_type ?? 'zstd';
  }
  const extras = {
    data_file: v3 && (force.data_file ?? r.chance(0.12)),
    prealloc: force.preallocation ?? (r.chance(0.2) ? r.pick(['metadata', 'falloc', 'full']) : undefined),
    backing: force.backing ?? (r.chance(0.3) ? { depth: 1 + r.int(3), base: r.pick(['raw', 'qcow2', 'vpc', 'vmdk']), sizes: r.pick(['shorter', 'longer', 'same']) } : undefined),
    snapshot: force.snapshot ?? r.chance(0.2),
    bitmap: v3 && (force.bitmap ?? r.chance(0.2)),
    amend: force.amend ?? (r.chance(0.15) ? (v3 ? '0.10' : '1.1') : undefined),
    resize: force.resize ?? (r.chance(0.2) ? r.pick(['grow', 'shrink']) : undefined),
    convertCompressed: force.convertCompressed ?? r.chance(0.1),
    chainOp: force.chainOp ?? (r.chance(0.3) ? r.pick(['commit', 'rebase', 'rebase-u']) : undefined),
    // qemu-io aborts after its writes: with lazy refcounts the image stays dirty, refcounts behind (valid: a crash).
    crash: force.crash ?? r.chance(0.3),
  };
  // qemu-img amend to 0.10 needs what v2 can express; a 1-bit refcount cannot count a snapshot's second reference.
  if (extras.amend === '0.10' && (o.refcount_bits !== 16 || o.extended_l2 || o.compression_type || extras.bitmap || extras.data_file)) extras.amend = undefined;
  if (o.refcount_bits === 1) extras.snapshot = false;
  // qemu-img resizes no v2 image with snapshots.
  if (extras.snapshot && (o.compat === '0.10' || extras.amend === '0.10')) extras.resize = undefined;
  if (extras.backing) extras.convertCompressed = false;
  if (extras.convertCompressed) {
    extras.data_file = false;
    extras.prealloc = undefined;
  }
  if (extras.data_file) {
    o.data_file = 'data.bin';
    if (force.data_file_raw ?? r.chance(0.5)) o.data_file_raw = 'on';
    extras.backing = undefined;
    extras.snapshot = false;
  }
  if (extras.prealloc && !extras.backing) o.preallocation = extras.prealloc;
  if (o.preallocation === 'full' || o.preallocation === 'falloc') extras.snapshot = false;
  return { o, extras };
}

/**
 * LUKS for a qcow2 read case (`force.luks`: true, false, or the whole
 * encrypt.* option set, such as one only qemu-img takes), drawn from a
 * generator of its own so that the case's other draws stay those of
 * earlier seeds.
 */
function caseLuks(seed, force) {
  const lr = rng(~seed >>> 0);
  const want = force.luks ?? lr.chance(0.15);
  if (!want) return undefined;
  return { pass: luksPassphrase(lr), options: typeof want === 'object' ? want : luksOptions(lr) };
}

function qcow2Case(seed, force, label) {
  const r = rng(seed);
  const { o, extras } = qcow2Options(r, force);
  const luks = caseLuks(seed, force);
  if (luks) {
    // qemu-img refuses compression beside encryption; amend, commit and rebase would need the passphrase on every layer's command line: left out.
    extras.convertCompressed = false;
    extras.amend = undefined;
    extras.chainOp = undefined;
  }
  const opts = [...Object.entries(o).map(([k, v]) => `${k}=${v}`), ...(luks ? optionList(luks.options) : [])].join(',');
  // The options with another encrypt.iter-time, for a retry (lib.mjs qemuLuks).
  const optsFor = (t) => opts.replace(/encrypt\.iter-time=\d+/, `encrypt.iter-time=${t}`);
  const sec = luks ? secretObject(luks.pass) : [];
  const desc = [
    opts,
    extras.convertCompressed && 'qemu-img convert -c',
    extras.backing && `backing depth ${extras.backing.depth} base ${extras.backing.base} ${extras.backing.sizes}${extras.backing.depth >= 2 && extras.chainOp ? ` then qemu-img ${extras.chainOp}` : ''}`,
    extras.snapshot && 'snapshot',
    extras.bitmap && 'bitmap',
    extras.amend && `amend compat=${extras.amend}`,
    extras.resize && `resize ${extras.resize}`,
    extras.crash && o.lazy_refcounts && 'qemu-io abort (dirty)',
  ]
    .filter(Boolean)
    .join('; ');
  return {
    format: 'qcow2',
    label: label ?? 'random',
    options: [...Object.keys(o), ...(luks ? optionList(luks.options) : []), ...['backing', 'snapshot', 'bitmap', 'amend', 'resize', 'convertCompressed', 'chainOp', 'crash'].filter((k) => extras[k])],
    desc,
    build(ctx) {
      const size = oddSize(r);
      const top = join(ctx.dir, 'top.qcow2');
      // How qemu-img and qemu-io name the top image: with its passphrase when encrypted.
      const a = imageArgs('qcow2', top, luks?.pass);
      const named = luks ? [...a.flags, a.name] : [top];
      const cluster = o.cluster_size;
      // qemu-io writes no compressed cluster into a data file or an encrypted image.
      const compress = !o.data_file && !luks;
      let size2 = size;
      if (extras.backing) {
        const { depth, base, sizes } = extras.backing;
        const baseSize = sizes === 'shorter' ? size - MiB - 512 * r.int(100) : sizes === 'longer' ? size + MiB + 512 * r.int(100) : size;
        let below = baseImage(ctx, base, baseSize, r);
        let belowFmt = base;
        for (let d = 1; d < depth; d++) {
          const mid = join(ctx.dir, `mid${d}.qcow2`);
          qemuImg(ctx, ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${r.pick(CLUSTERS)}`, '-b', below, '-F', belowFmt, mid, String(size + 512 * r.int(50) - 512 * r.int(50))]);
          qemuIo(ctx, 'qcow2', mid, fillScript(r, size - 512 * 50, { cluster: 512, compress: false, count: 4 }));
          below = mid;
          belowFmt = 'qcow2';
        }
        const argvFor = (t) => ['create', '-q', ...sec, '-f', 'qcow2', '-o', optsFor(t), '-b', below, '-F', belowFmt, top, String(size)];
        if (luks) qemuImgLuks(ctx, luks, argvFor);
        else qemuImg(ctx, argvFor(undefined));
      } else if (extras.convertCompressed) {
        // qemu-img convert -c: every cluster with data compressed.
        const raw = rawFilled(ctx, 'src.raw', size, r);
        qemuImg(ctx, ['convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', '-o', opts, raw, top]);
      } else if (luks) qemuImgLuks(ctx, luks, (t) => ['create', '-q', ...sec, '-f', 'qcow2', '-o', optsFor(t), top, String(size)]);
      else qemuImg(ctx, ['create', '-q', '-f', 'qcow2', '-o', opts, top, String(size)]);
      if (!extras.convertCompressed) qemuIo(ctx, 'qcow2', top, fillScript(r, size, { cluster, compress: compress && !o.preallocation }), luks?.pass);
      // qemu-img commit / rebase over the chain before the rest (qcow2 layers only: commit writes into the one below).
      if (extras.backing && extras.chainOp && extras.backing.depth >= 2) {
        const base = join(ctx.dir, `base.${extras.backing.base}`);
        if (extras.chainOp === 'commit') qemuImg(ctx, ['commit', '-q', top]);
        else qemuImg(ctx, ['rebase', ...(extras.chainOp === 'rebase-u' ? ['-u'] : []), '-b', base, '-F', extras.backing.base, top]);
      }
      if (extras.snapshot) {
        qemuImg(ctx, ['snapshot', '-c', 'snap1', ...named]);
        qemuIo(ctx, 'qcow2', top, fillScript(r, size, { cluster, compress: false, count: 5 }), luks?.pass);
        if (o.refcount_bits !== 2 && r.chance(0.5)) {
          qemuImg(ctx, ['snapshot', '-c', 'snap2', ...named]);
          qemuIo(ctx, 'qcow2', top, fillScript(r, size, { cluster, compress: false, count: 3 }), luks?.pass);
        }
      }
      if (extras.bitmap) {
        qemuImg(ctx, ['bitmap', '--add', ...(r.chance(0.5) ? ['-g', String(r.pick([65536, 1 << 20, 512 << 10]))] : []), ...named, 'bm0']);
        if (r.chance(0.5)) qemuImg(ctx, ['bitmap', '--add', '--disable', ...named, 'bm1']);
        qemuIo(ctx, 'qcow2', top, fillScript(r, size, { cluster, compress: false, count: 3 }), luks?.pass);
      }
      if (extras.amend) qemuImg(ctx, ['amend', '-o', `compat=${extras.amend}`, top]);
      if (extras.resize === 'grow') {
        size2 = size + MiB + 512 * r.int(1000);
        qemuImg(ctx, ['resize', '-q', ...named, String(size2)]);
        qemuIo(ctx, 'qcow2', top, [`write -P 0x77 ${size2 - 1000} 1000`], luks?.pass);
      } else if (extras.resize === 'shrink') {
        size2 = size - MiB + 512 * r.int(1000);
        qemuImg(ctx, ['resize', '-q', '--shrink', ...named, String(size2)]);
      }
      if (extras.crash && o.lazy_refcounts) {
        const script = fillScript(r, size2, { cluster, compress: false, count: 4 });
        const argv = [...a.flags, ...script.flatMap((c) => ['-c', c]), '-c', 'flush', '-c', 'abort', a.name];
        ctx.log.push(`qemu-io ${argv.join(' ')}`);
        // abort ends qemu-io with SIGABRT on purpose.
        run(ctx.budget, 'qemu-io', argv, { cwd: ctx.dir });
      }
      return { path: top, fmt: 'qcow2', pass: luks?.pass };
    },
  };
}

function vpcCase(seed, force, label) {
  const r = rng(seed);
  const sub = force.subformat ?? r.pick(['dynamic', 'fixed']);
  const forceSize = force.force_size ?? r.pick(['on', 'off', undefined]);
  const viaConvert = force.convert ?? r.chance(0.3);
  const opts = [`subformat=${sub}`, forceSize && `force_size=${forceSize}`].filter(Boolean).join(',');
  return {
    format: 'vpc',
    label: label ?? 'random',
    options: ['subformat', ...(forceSize ? ['force_size'] : []), ...(viaConvert ? ['convert'] : [])],
    desc: `${opts}${viaConvert ? '; qemu-img convert -O vpc' : ''}`,
    build(ctx) {
      // Sizes that are not a whole CHS geometry, so force_size matters.
      const size = force.size ?? r.pick([oddSize(r), 7 * MiB + 12345 * 512, 33 * MiB + 512 * 17, 5 * MiB]);
      const p = join(ctx.dir, 'disk.vhd');
      if (viaConvert) {
        const raw = rawFilled(ctx, 'src.raw', size, r);
        qemuImg(ctx, ['convert', '-q', '-f', 'raw', '-O', 'vpc', '-o', opts, raw, p]);
      } else {
        qemuImg(ctx, ['create', '-q', '-f', 'vpc', '-o', opts, p, String(size)]);
        const info = JSON.parse(must(ctx.budget, 'qemu-img', ['info', '--output=json', '-f', 'vpc', p]));
        qemuIo(ctx, 'vpc', p, fillScript(r, info['virtual-size'], { compress: false, zeroes: false }));
      }
      return { path: p, fmt: 'vpc' };
    },
  };
}

/**
 * qemu's luks format: qemu-img create (or convert -O luks) with random
 * options from the cipher set `set` (luks.mjs luksFormatOptions), a
 * preallocation (a file option qemu-img takes for luks), a size that may
 * end inside a sector; qemu-io writes; then perhaps qemu-img resize and
 * qemu-img amend (a second passphrase in another slot, the first erased
 * now and then: the case reads with the second). Every qemu-img command
 * that makes key material is tried again on a PBKDF2 timing failure.
 */
function luksCase(seed, force, label, set) {
  const r = rng(seed);
  const o = luksFormatOptions(r, set, force.options ?? {});
  const pass = luksPassphrase(r);
  const via = force.via ?? (r.chance(0.3) ? 'convert' : 'create');
  const prealloc = force.preallocation ?? (r.chance(0.3) ? r.pick(['off', 'metadata', 'falloc', 'full']) : undefined);
  const resize = force.resize ?? (r.chance(0.2) ? r.pick(['grow', 'shrink']) : undefined);
  const amend = force.amend ?? (r.chance(0.2) ? r.pick(['add', 'replace']) : undefined);
  const unaligned = force.unaligned ?? r.chance(0.3);
  const opts = [...optionList(o), ...(prealloc ? [`preallocation=${prealloc}`] : [])];
  const optsFor = (t) => [luksWithIterTime(o, t), ...(prealloc ? [`preallocation=${prealloc}`] : [])].join(',');
  const iterTimes = [o['iter-time'], ...RETRY_ITER_TIMES.filter((t) => t !== o['iter-time'])];
  const desc = [opts.join(','), via === 'convert' && 'qemu-img convert -O luks', unaligned && 'size not a whole sector', resize && `resize ${resize}`, amend && `amend ${amend === 'add' ? 'a second passphrase' : 'a second passphrase, the first erased'}`]
    .filter(Boolean)
    .join('; ');
  return {
    format: 'luks',
    label: label ?? 'random',
    options: [
      ...optionList(o).filter((x) => !x.startsWith('key-secret=') && !x.startsWith('iter-time=')),
      ...(prealloc ? [`preallocation=${prealloc}`] : []),
      via,
      ...(unaligned ? ['unaligned size'] : []),
      ...(resize ? [`resize ${resize}`] : []),
      ...(amend ? [`amend ${amend}`] : []),
    ],
    desc,
    build(ctx) {
      const size = oddSize(r, 2, 8) + (unaligned ? 1 + r.int(511) : 0);
      const p = join(ctx.dir, 'disk.luks');
      const sec = secretObject(pass);
      const make = (argvFor) => {
        const q = qemuLuks(ctx.budget, argvFor, iterTimes, { cwd: ctx.dir });
        ctx.log.push(`qemu-img ${q.argv.join(' ')}`);
        if (q.status !== 0) throw new PrepError(`qemu-img ${q.argv.join(' ')}: exit ${q.status}: ${`${q.stderr}${q.stdout}`.trim().split('\n')[0]}`);
      };
      if (via === 'convert') {
        const raw = rawFilled(ctx, 'src.raw', size, r);
        make((t) => ['convert', '-q', ...sec, '-f', 'raw', '-O', 'luks', '-o', optsFor(t), raw, p]);
      } else make((t) => ['create', '-q', ...sec, '-f', 'luks', '-o', optsFor(t), p, String(size)]);
      let named = imageArgs('luks', p, pass);
      qemuIo(ctx, 'luks', p, fillScript(r, size, { cluster: 4096, compress: false, count: via === 'convert' ? 3 : 8 }), pass);
      let readPass = pass;
      let cur = size;
      if (resize) {
        const size2 = resize === 'grow' ? size + MiB + 512 * r.int(1000) + (unaligned ? 7 : 0) : size - MiB + 512 * r.int(1000);
        qemuImg(ctx, ['resize', '-q', ...(resize === 'shrink' ? ['--shrink'] : []), ...named.flags, named.name, String(size2)]);
        if (resize === 'grow') qemuIo(ctx, 'luks', p, [`write -P 0x77 ${size2 - 1000} 1000`], pass);
        cur = size2;
      }
      if (amend) {
        const second = `${pass}-2`;
        const slot = 1 + r.int(7);
        const both = [...sec, ...secretObject(second, 'sec1')];
        make((t) => ['amend', ...both, '--image-opts', named.name, '-o', `state=active,new-secret=sec1,keyslot=${slot},iter-time=${t}`]);
        if (amend === 'replace') qemuImg(ctx, ['amend', ...both, '--image-opts', imageArgs('luks', p, second, 'sec1').name, '-o', `state=inactive,old-secret=${SECRET_ID}`]);
        readPass = second;
        named = imageArgs('luks', p, second);
        qemuIo(ctx, 'luks', p, [`write -P 0x6b ${r.int(cur - 70000)} 65537`], second);
      }
      return { path: p, fmt: 'luks', pass: readPass };
    },
  };
}

const VMDK_SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'];

function vmdkCase(seed, force, label) {
  const r = rng(seed);
  const o = { subformat: force.subformat ?? r.pick(VMDK_SUBFORMATS) };
  const adapter = force.adapter_type ?? (r.chance(0.6) ? r.pick(['ide', 'lsilogic', 'buslogic', 'legacyESX']) : undefined);
  if (adapter) o.adapter_type = adapter;
  if (force.compat6 ?? r.chance(0.2)) o.compat6 = 'on';
  else if (force.hwversion ?? r.chance(0.3)) o.hwversion = force.hwversion ?? r.pick(['4', '6', '7', '10', '13']);
  if (force.toolsversion ?? r.chance(0.1)) o.toolsversion = '10240';
  // qemu-img refuses zeroed grains and backing files for flat extents.
  const flat = o.subformat.endsWith('Flat');
  if (!flat && (force.zeroed_grain ?? r.chance(0.4))) o.zeroed_grain = 'on';
  const backing = !flat && o.subformat !== 'streamOptimized' && (force.backing ?? r.chance(0.2));
  const opts = Object.entries(o)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return {
    format: 'vmdk',
    label: label ?? 'random',
    options: [...Object.keys(o), ...(backing ? ['backing'] : [])],
    desc: `${opts}${backing ? '; -b base.vmdk' : ''}`,
    build(ctx) {
      const size = oddSize(r, 2, 8);
      const p = join(ctx.dir, 'disk.vmdk');
      if (o.subformat === 'streamOptimized') {
        const raw = rawFilled(ctx, 'src.raw', size, r);
        qemuImg(ctx, ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', opts, raw, p]);
        return { path: p, fmt: 'vmdk' };
      }
      if (backing) {
        const base = baseImage(ctx, 'vmdk', size, r);
        qemuImg(ctx, ['create', '-q', '-f', 'vmdk', '-o', opts, '-b', base, '-F', 'vmdk', p]);
      } else qemuImg(ctx, ['create', '-q', '-f', 'vmdk', '-o', opts, p, String(size)]);
      // Zero writes only where the image can store them (zeroed grains); elsewhere qemu writes zeros as data.
      qemuIo(ctx, 'vmdk', p, fillScript(r, size, { cluster: 65536, compress: false, zeroes: o.zeroed_grain === 'on' }));
      return { path: p, fmt: 'vmdk' };
    },
  };
}

/**
 * The read cases: first one per option value (so every value is covered
 * whatever the count), then random combinations.
 */
export function readCases(seed, randomCount, formats, set = luksCipherSet('aes')) {
  const forced = [];
  const q = (force, label) => forced.push(['qcow2', force, label]);
  q({ compat: '0.10' }, 'compat=0.10');
  q({ compat: '1.1' }, 'compat=1.1');
  for (const c of CLUSTERS) q({ cluster_size: c, backing: false }, `cluster_size=${c}`);
  for (const b of REFCOUNT_BITS) q({ compat: '1.1', refcount_bits: b, snapshot: b > 1 }, `refcount_bits=${b}`);
  q({ compat: '1.1', lazy_refcounts: true }, 'lazy_refcounts');
  for (const c of [512, 65536, 2097152]) q({ compat: '1.1', lazy_refcounts: true, crash: true, cluster_size: c, data_file: false }, `lazy_refcounts crash (dirty) cluster ${c}`);
  for (const c of [16384, 65536, 2097152]) q({ compat: '1.1', cluster_size: c, extended_l2: true }, `extended_l2 cluster ${c}`);
  q({ compat: '1.1', compression_type: 'zstd' }, 'zstd');
  q({ compat: '1.1', compression_type: false }, 'zlib');
  for (const c of [512, 65536, 2097152]) for (const z of [false, 'zstd']) q({ compat: '1.1', cluster_size: c, compression_type: z, convertCompressed: true, backing: false }, `convert -c cluster ${c} ${z || 'zlib'}`);
  q({ compat: '0.10', cluster_size: 4096, convertCompressed: true, backing: false }, 'convert -c compat=0.10');
  for (const p of ['metadata', 'falloc', 'full']) q({ preallocation: p, backing: false, cluster_size: 65536 }, `preallocation=${p}`);
  q({ compat: '1.1', data_file: true, data_file_raw: false }, 'data_file');
  q({ compat: '1.1', data_file: true, data_file_raw: true }, 'data_file_raw');
  for (const base of ['raw', 'qcow2', 'vpc', 'vmdk']) for (const sizes of ['shorter', 'longer', 'same']) q({ data_file: false, backing: { depth: 1 + (base.length % 3), base, sizes } }, `backing ${base} ${sizes}`);
  q({ data_file: false, backing: { depth: 3, base: 'qcow2', sizes: 'shorter' } }, 'backing depth 3');
  for (const op of ['commit', 'rebase', 'rebase-u']) for (const base of ['qcow2', 'raw']) q({ data_file: false, snapshot: false, backing: { depth: 2, base, sizes: 'longer' }, chainOp: op }, `chain then qemu-img ${op} over ${base}`);
  q({ data_file: false, snapshot: true, preallocation: false }, 'snapshot');
  q({ compat: '1.1', bitmap: true, data_file: false }, 'bitmap');
  q({ compat: '1.1', amend: '0.10', refcount_bits: 16, extended_l2: false, compression_type: false, bitmap: false, data_file: false }, 'amend 1.1->0.10');
  q({ compat: '0.10', amend: '1.1' }, 'amend 0.10->1.1');
  q({ resize: 'grow' }, 'resize grow');
  q({ resize: 'shrink', snapshot: false, bitmap: false }, 'resize shrink');
  // LUKS (luks.mjs), also where img writes none itself: compat=0.10, 512-byte clusters, a data file, preallocation.
  q({ luks: true, backing: false, snapshot: false, resize: false }, 'luks');
  q({ luks: true, compat: '0.10', backing: false }, 'luks compat=0.10');
  q({ luks: true, cluster_size: 512, backing: false }, 'luks cluster_size=512');
  q({ luks: true, compat: '1.1', data_file: true, data_file_raw: false }, 'luks data_file');
  q({ luks: true, compat: '1.1', data_file: true, data_file_raw: true }, 'luks data_file_raw');
  q({ luks: true, preallocation: 'metadata', backing: false, cluster_size: 65536 }, 'luks preallocation=metadata');
  q({ luks: true, snapshot: true, data_file: false, preallocation: false }, 'luks snapshot');
  q({ luks: true, data_file: false, backing: { depth: 2, base: 'qcow2', sizes: 'shorter' } }, 'luks over a backing chain');
  q({ luks: true, compat: '1.1', lazy_refcounts: true, crash: true, data_file: false }, 'luks lazy_refcounts crash (dirty)');
  // qemu-img takes ivgen-hash-alg beside plain64 and stores it in the cipher name ("xts-plain64:sha256"); img create refuses it.
  q({ luks: { 'encrypt.format': 'luks', 'encrypt.key-secret': SECRET_ID, 'encrypt.ivgen-alg': 'plain64', 'encrypt.ivgen-hash-alg': 'sha256', 'encrypt.iter-time': '10' }, backing: false }, 'luks plain64 with ivgen-hash-alg (qemu-img only)');
  const v = (force, label) => forced.push(['vpc', force, label]);
  for (const sub of ['dynamic', 'fixed']) for (const fs of ['on', 'off', undefined]) for (const convert of [false, true]) v({ subformat: sub, force_size: fs, convert }, `${sub} force_size=${fs ?? 'default'}${convert ? ' convert' : ''}`);
  v({ subformat: 'dynamic', size: 127 * MiB + 3 * 512 }, 'dynamic odd CHS size');
  const k = (force, label) => forced.push(['vmdk', force, label]);
  for (const s of VMDK_SUBFORMATS) k({ subformat: s }, s);
  for (const a of ['ide', 'lsilogic', 'buslogic', 'legacyESX']) k({ adapter_type: a }, `adapter_type=${a}`);
  for (const h of ['4', '6', '8', '11', '14', '21']) k({ hwversion: h, compat6: false }, `hwversion=${h}`);
  k({ compat6: true }, 'compat6');
  for (const s of ['monolithicSparse', 'twoGbMaxExtentSparse', 'streamOptimized']) k({ subformat: s, zeroed_grain: true }, `zeroed_grain ${s}`);
  for (const s of ['monolithicSparse', 'twoGbMaxExtentSparse']) k({ subformat: s, backing: true }, `backing ${s}`);
  // qemu's luks format: each cipher and mode of the set, each IV generator and hash, preallocation, odd sizes, resize, key slots.
  // luks cases come after the random ones, so the ids and seeds of the other formats' cases stay those of earlier runs.
  const forcedLuks = [];
  const l = (force, label) => forcedLuks.push(['luks', force, label]);
  for (const alg of set.algs) l({ options: { 'cipher-alg': alg } }, `luks cipher-alg=${alg}`);
  for (const mode of set.modes) l({ options: { 'cipher-mode': mode } }, `luks cipher-mode=${mode}`);
  for (const iv of ['plain', 'plain64', 'essiv']) l({ options: { 'ivgen-alg': iv } }, `luks ivgen-alg=${iv}`);
  for (const h of ['md5', 'sha256']) l({ options: { 'ivgen-alg': 'essiv', 'ivgen-hash-alg': h } }, `luks essiv ivgen-hash-alg=${h}`);
  l({ options: { 'ivgen-alg': 'plain64', 'ivgen-hash-alg': 'sha256' } }, 'luks plain64 with ivgen-hash-alg');
  for (const h of LUKS_VALUES['encrypt.hash-alg']) l({ options: { 'hash-alg': h } }, `luks hash-alg=${h}`);
  for (const p of ['off', 'metadata', 'falloc', 'full']) l({ preallocation: p, resize: false, via: 'create' }, `luks preallocation=${p}`);
  l({ unaligned: true, resize: false, via: 'create' }, 'luks size not a whole sector');
  l({ via: 'convert', unaligned: true }, 'luks qemu-img convert -O luks');
  for (const rs of ['grow', 'shrink']) for (const u of [false, true]) l({ resize: rs, unaligned: u, amend: false }, `luks resize ${rs}${u ? ' (size not a whole sector)' : ''}`);
  for (const a of ['add', 'replace']) l({ amend: a }, `luks amend ${a}`);
  const make = { qcow2: qcow2Case, vpc: vpcCase, vmdk: vmdkCase, luks: (s, f, lb) => luksCase(s, f, lb, set) };
  const out = [];
  let i = 0;
  for (const [fmt, force, label] of forced) {
    if (formats.includes(fmt)) out.push({ id: `r${i}`, ...make[fmt](seed * 7919 + i, force, label) });
    i++;
  }
  const r = rng(seed);
  // Random cases only of the formats that have a maker (raw is covered by the fixed cases alone).
  const randomFormats = formats.filter((f) => typeof make[f] === 'function');
  for (let j = 0; randomFormats.length && j < randomCount; j++, i++) {
    const fmt = r.pick(randomFormats);
    out.push({ id: `r${i}`, ...make[fmt](seed * 7919 + i, {}, undefined) });
  }
  for (const [fmt, force, label] of forcedLuks) {
    if (formats.includes(fmt)) out.push({ id: `r${i}`, ...make[fmt](seed * 7919 + i, force, label) });
    i++;
  }
  return out;
}
