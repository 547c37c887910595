#!/usr/bin/env node
// Hostile-input campaign for VHD, VMDK and OVA (not a CI test).
//
//   nice node tools/hostile/campaign.mjs [--seed 1] [--cases 300] [--kinds vhd,vmdk,ova]
//        [--work /tmp/fuzzv] [--timeout 10000] [--rss-mib 300] [--cli 0.5] [--only 17]
//        [--copy-cap-mib 1024]
//
// Builds seed images (test-images, qemu-img's VHD and VMDK subformats, this
// project's writers, hand-built tars), damages a copy per case with a
// structure-aware mutation (tools/hostile/mutate.mjs), and drives every
// entry point: the API in a child process (tools/hostile/case.mjs) and the
// `img` / `img-convert` bins (info, check, map, compare, convert, and a pipe
// for streamOptimized and OVA). A case fails when anything but an
// ImageError escapes, a call runs past the time limit, a process grows past
// the RSS limit, a bin prints a stack or more than one line on stderr, an
// untrusted run opens a file the image names, or a write into a damaged
// image leaves it worse. Case i is reproducible alone with --only i.
//
// Chains (ours-vhd-diff, ti-chain) get a family of their own with
// probability --chain (mutateChain: the parent's bytes, or the links
// between parent and child: unique ids, timestamps, CIDs, sizes, a parent
// that names the child or itself), drawn from a generator of its own so
// that the cases of earlier seeds stay what they were; every case of a
// chain seed also writes into the child with its parent open and fails
// if the parent's file changes or the chain no longer reads as written.
// --seeds limits the pool (--seeds ours-vhd-diff,ti-chain for chains only).
//
// A damaged image may describe far more data than its file holds (a
// descriptor naming one sparse file in 32000 extents: 125 GiB of data from
// 1.5 MB), which a trusted copy reads at disk speed, well past the time
// limit. The bins that copy every data byte (convert, compare) are left out
// of a case whose disk, as the trusted API open saw it, holds more than
// --copy-cap-mib of data: their time is not a hang.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { gzipSync } from 'node:zlib';
import { campaignArgs, caseSeed, rng, listTar, buildTar } from './lib.mjs';
import { mutateChain, mutateDescriptorText, mutateEmbeddedDescriptor, mutateKdmv, mutateOva, mutateVhd, randomBytes, resize, TRAP } from './mutate.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
const repo = join(here, '../..');
const IMG = join(repo, 'packages/convert/dist/bin/img.js');
const IMG_CONVERT = join(repo, 'packages/convert/dist/bin/img-convert.js');

function args() {
  const a = campaignArgs(
    { seed: 1, cases: 300, kinds: 'vhd,vmdk,ova', work: '/tmp/fuzzv', timeout: 10_000, 'rss-mib': 300, cli: 0.5, chain: 0.5, seeds: undefined, only: undefined, 'copy-cap-mib': 1024 },
    'usage: nice node tools/hostile/campaign.mjs [--seed 1] [--cases 300] [--kinds vhd,vmdk,ova] [--seeds ours-vhd-diff,ti-chain] [--chain 0.5] [--work /tmp/fuzzv] [--timeout 10000] [--rss-mib 300] [--cli 0.5] [--copy-cap-mib 1024] [--only 17] [--keep]\n',
  );
  a.chain = Number(a.chain);
  a.seeds = a.seeds === undefined ? undefined : String(a.seeds).split(',');
  a.seed = Number(a.seed);
  a.cases = Number(a.cases);
  a.timeout = Number(a.timeout);
  a.cli = Number(a.cli);
  a.rssKiB = Number(a['rss-mib']) * 1024;
  a.copyCap = Number(a['copy-cap-mib']) * 2 ** 20;
  a.kinds = String(a.kinds).split(',');
  return a;
}

const opt = args();
/** Seeds that are a chain: the child's parent file (damaged, or its links to the child, by the chain family). */
const CHAINS = { 'ours-vhd-diff': 'p.vhd', 'ti-chain': 'chain-base.vmdk' };
const W = opt.work;
const SEEDS = join(W, 'seeds');
const REFS = join(W, 'refs');

function run(cmd, argv, options = {}) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: 120_000, ...options });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')}: ${r.status} ${r.stderr}`);
  return r.stdout;
}

/** A 4 MiB raw disk with data, zeros and holes in several grains and blocks. */
function referenceRaw(path) {
  const b = new Uint8Array(4 << 20);
  const r = rng(7);
  for (const [at, len] of [
    [0, 70_000],
    [1 << 20, 200_000],
    [(2 << 20) + 4096, 512],
    [(4 << 20) - 65536, 65536],
  ])
    for (let i = 0; i < len; i++) b[at + i] = 1 + r.int(255);
  writeFileSync(path, b);
}

/** Seeds: { name, kind, format, main, stream, writable } with their files in seeds/<name>/. */
function buildSeeds() {
  const list = [];
  const add = (name, kind, format, main, extra = {}) => list.push({ name, kind, format, main, stream: false, writable: false, ...extra });
  if (existsSync(join(SEEDS, 'index.json'))) return JSON.parse(readFileSync(join(SEEDS, 'index.json'), 'utf8'));
  rmSync(SEEDS, { recursive: true, force: true });
  mkdirSync(SEEDS, { recursive: true });
  mkdirSync(REFS, { recursive: true });
  const ref = join(W, 'ref.raw');
  referenceRaw(ref);
  const dirOf = (name) => {
    const d = join(SEEDS, name);
    mkdirSync(d, { recursive: true });
    return d;
  };
  const ti = join(repo, 'test-images');
  // VHD: the fixtures, qemu-img's subformats, ours (dynamic, fixed, differencing)
  for (const f of readdirSync(join(ti, 'vhd'))) {
    if (f === 'dynamic-40g.vhd') continue;
    copyFileSync(join(ti, 'vhd', f), join(dirOf(`ti-${f}`), f));
    add(`ti-${f}`, 'vhd', 'vhd', f, { writable: f.startsWith('dynamic'), stream: true });
  }
  for (const [name, o] of [
    ['q-dynamic', 'subformat=dynamic'],
    ['q-fixed', 'subformat=fixed'],
    ['q-dynamic-force', 'subformat=dynamic,force_size=on'],
    ['q-fixed-force', 'subformat=fixed,force_size=on'],
  ]) {
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', o, ref, join(dirOf(name), 'd.vhd')]);
    add(name, 'vhd', 'vhd', 'd.vhd', { writable: o.includes('dynamic'), stream: true, reference: ref });
  }
  run('node', [IMG_CONVERT, '-f', 'raw', '-O', 'vhd', ref, join(dirOf('ours-vhd'), 'd.vhd')]);
  add('ours-vhd', 'vhd', 'vhd', 'd.vhd', { writable: true, stream: true, reference: ref });
  {
    const d = dirOf('ours-vhd-diff');
    run('node', [IMG_CONVERT, '-f', 'raw', '-O', 'vhd', ref, join(d, 'p.vhd')]);
    run('node', [IMG, 'create', '-f', 'vhd', '-b', 'p.vhd', '-F', 'vhd', join(d, 'c.vhd')]);
    add('ours-vhd-diff', 'vhd', 'vhd', 'c.vhd', { writable: true, stream: true });
  }
  // VMDK: the fixtures (with their extent files), qemu-img's five subformats, ours
  const tv = join(ti, 'vmdk');
  const groups = {
    'ti-sparse': ['sparse.vmdk'],
    'ti-zeroed': ['zeroed-grain.vmdk'],
    'ti-stream-qemu': ['stream-qemu.vmdk'],
    'ti-stream-vmdkstream': ['stream-vmdkstream.vmdk'],
    'ti-flat': ['flat.vmdk', 'flat-flat.vmdk'],
    'ti-split-sparse': ['split-sparse.vmdk', 'split-sparse-s001.vmdk'],
    'ti-split-flat': ['split-flat.vmdk', 'split-flat-f001.vmdk', 'split-flat-f002.vmdk'],
    'ti-vmfs': ['vmfs.vmdk', 'vmfs-flat.vmdk'],
    'ti-chain': ['chain-top.vmdk', 'chain-base.vmdk'],
  };
  for (const [name, files] of Object.entries(groups)) {
    const d = dirOf(name);
    for (const f of files) cpSync(join(tv, f), join(d, f));
    add(name, 'vmdk', 'vmdk', files[0], { writable: ['ti-sparse', 'ti-zeroed', 'ti-split-sparse', 'ti-flat'].includes(name), stream: name.startsWith('ti-stream') });
  }
  for (const sub of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized']) {
    const d = dirOf(`q-${sub}`);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${sub}`, ref, join(d, 'd.vmdk')]);
    add(`q-${sub}`, 'vmdk', 'vmdk', 'd.vmdk', { writable: sub === 'monolithicSparse' || sub === 'twoGbMaxExtentSparse' || sub === 'monolithicFlat', stream: sub === 'streamOptimized', reference: ref });
  }
  for (const sub of ['monolithicSparse', 'streamOptimized', 'twoGbMaxExtentSparse']) {
    const d = dirOf(`ours-${sub}`);
    run('node', [IMG_CONVERT, '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${sub}`, ref, join(d, 'd.vmdk')]);
    add(`ours-${sub}`, 'vmdk', 'vmdk', 'd.vmdk', { writable: sub !== 'streamOptimized', stream: sub === 'streamOptimized', reference: ref });
  }
  // OVA: ours, and hand-built tar variants of its members
  {
    const d = dirOf('ours-ova');
    run('node', [IMG_CONVERT, '-f', 'raw', '-O', 'ova', ref, join(d, 'd.ova')]);
    add('ours-ova', 'ova', 'ova', 'd.ova', { stream: true, reference: ref });
    const members = listTar(new Uint8Array(readFileSync(join(d, 'd.ova'))));
    const plain = members.map((m) => ({ name: m.name, data: m.data }));
    const variants = {
      'ova-gnu-longname': plain.map((m) => (m.name.endsWith('.vmdk') ? { ...m, longName: 'a'.repeat(150) + '.vmdk' } : m)),
      'ova-pax': plain.map((m) => ({ ...m, pax: { path: m.name, mtime: '1.5' } })),
      'ova-disk-first': [...plain].reverse(),
      'ova-no-mf': plain.filter((m) => !m.name.endsWith('.mf')),
      'ova-dir-prefix': [{ name: 'vm/', type: '5', data: new Uint8Array(0) }, ...plain],
      // ovftool --compress: the disk member gzipped, the OVF's File saying so with the stored size (no manifest).
      'ova-gzip': plain
        .filter((m) => !m.name.endsWith('.mf'))
        .map((m) => {
          if (m.name.endsWith('.vmdk')) return { ...m, data: new Uint8Array(gzipSync(m.data)) };
          if (!m.name.endsWith('.ovf')) return m;
          const disk = plain.find((x) => x.name.endsWith('.vmdk'));
          const text = new TextDecoder().decode(m.data).replace(/(<File [^>]*ovf:size=")\d+(")/, `$1${gzipSync(disk.data).length}$2 ovf:compression="gzip"`);
          return { ...m, data: new TextEncoder().encode(text) };
        }),
    };
    for (const [name, ms] of Object.entries(variants)) {
      writeFileSync(join(dirOf(name), 'd.ova'), buildTar(ms));
      add(name, 'ova', 'ova', 'd.ova', { stream: true });
    }
  }
  for (const s of list) {
    // The raw image of every readable seed, for compare.
    if (s.reference) continue;
    const out = join(REFS, `${s.name}.raw`);
    const r = spawnSync('node', [IMG_CONVERT, '-O', 'raw', join(SEEDS, s.name, s.main), out], { encoding: 'utf8' });
    if (r.status === 0) s.reference = out;
  }
  writeFileSync(join(SEEDS, 'index.json'), JSON.stringify(list, null, 1));
  return list;
}

/** Damages case `i`'s copy of its seed; returns what was done. */
function makeCase(seeds, i) {
  const r = rng(caseSeed(opt.seed, i));
  const pool = seeds.filter((s) => opt.kinds.includes(s.kind) && (!opt.seeds || opt.seeds.includes(s.name)));
  const seed = r.pick(pool);
  const dir = join(W, 'cases', String(i));
  rmSync(dir, { recursive: true, force: true });
  cpSync(join(SEEDS, seed.name), dir, { recursive: true });
  const files = readdirSync(dir);
  const siblings = files.filter((f) => f !== seed.main);
  let target = seed.main;
  let m;
  const bytesOf = (f) => new Uint8Array(readFileSync(join(dir, f)));
  if (seed.kind === 'vhd') {
    const b = bytesOf(target);
    const k = r();
    m = k < 0.75 ? mutateVhd(b, r) : k < 0.9 ? randomBytes(b, r) : resize(b, r);
  } else if (seed.kind === 'ova') {
    m = mutateOva(bytesOf(target), r);
  } else {
    const b = bytesOf(target);
    const isSparse = b.length >= 4 && b[0] === 0x4b && b[1] === 0x44 && b[2] === 0x4d && b[3] === 0x56;
    const k = r();
    if (!isSparse) {
      if (k < 0.6 || siblings.length === 0) {
        const t = mutateDescriptorText(new TextDecoder().decode(b), r, siblings);
        m = { bytes: new TextEncoder().encode(t.text), note: `descriptor: ${t.note}` };
      } else {
        // Damage an extent file instead of the descriptor.
        target = r.pick(siblings);
        const e = bytesOf(target);
        m = e[0] === 0x4b ? mutateKdmv(e, r) : k < 0.85 ? randomBytes(e, r) : resize(e, r);
        m.note = `${target}: ${m.note}`;
      }
    } else if (k < 0.25) m = mutateEmbeddedDescriptor(b, r, siblings);
    else if (k < 0.85) m = mutateKdmv(b, r);
    else if (k < 0.95) m = randomBytes(b, r);
    else m = resize(b, r);
  }
  // The chain family (its own generator, so that the draws above stay those of earlier campaigns): the parent or
  // the links between parent and child instead; writes then go through the chain (case.mjs, chainCase).
  const parent = CHAINS[seed.name];
  const rc = rng(caseSeed(opt.seed, i) ^ 0x2c1b3c6d);
  if (parent && rc() < opt.chain) {
    const mc = mutateChain(seed.kind, bytesOf(seed.main), bytesOf(parent), { child: seed.main, parent }, rc);
    for (const [f, bytes] of Object.entries(mc.files)) writeFileSync(join(dir, f), bytes);
    m = { note: mc.note };
  } else writeFileSync(join(dir, target), m.bytes);
  const outDir = join(W, 'out', String(i));
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  return { id: i, seed: caseSeed(opt.seed, i), dir, main: seed.main, kind: seed.kind, format: seed.format, stream: seed.stream, writable: seed.writable, reference: seed.reference, outDir, seedName: seed.name, note: m.note, parent };
}

// ---------------------------------------------------------------- the API child

class Child {
  constructor() {
    this.proc = spawn('nice', ['-n', '10', process.execPath, '--max-old-space-size=256', join(here, 'case.mjs')], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.waiters = new Map();
    this.stderr = '';
    this.exited = new Promise((res) => this.proc.on('exit', (code, signal) => res({ code, signal })));
    this.proc.stderr.on('data', (d) => (this.stderr = (this.stderr + d).slice(-4000)));
    createInterface({ input: this.proc.stdout }).on('line', (line) => {
      let msg;
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (msg.phase === 'done') this.waiters.get(msg.id)?.(msg);
    });
  }
  async run(c, timeoutMs) {
    const done = new Promise((res) => this.waiters.set(c.id, res));
    this.proc.stdin.write(JSON.stringify(c) + '\n');
    let timer;
    const timeout = new Promise((res) => (timer = setTimeout(() => res({ timeout: true }), timeoutMs)));
    const exit = this.exited.then((e) => ({ exit: e }));
    const r = await Promise.race([done, timeout, exit]);
    clearTimeout(timer);
    this.waiters.delete(c.id);
    return r;
  }
  kill() {
    this.proc.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------- the bins

/** The bins that read every data byte of the disk (left out past --copy-cap-mib of data). */
const COPIES_ALL = new Set(['convert', 'compare']);
// compare, as qemu-img compare (a0dd6bf): 2 an image did not open, 3 its block status failed, 4 a read failed.
const OK_STATUS = { info: [0, 1], map: [0, 1], check: [0, 1, 2, 3, 63], compare: [0, 1, 2, 3, 4], convert: [0, 1], pipe: [0, 1] };

function cliCommands(c, r) {
  const main = join(c.dir, c.main);
  const out = join(c.outDir, 'cli.out');
  const all = [
    ['info', IMG, ['info', main]],
    ['info', IMG, ['info', '--untrusted', '--output=json', main], true],
    ['check', IMG, ['check', main]],
    ['check', IMG, ['check', '--untrusted', main], true],
    ['map', IMG, ['map', '--output=json', main]],
    ['convert', IMG_CONVERT, ['-O', 'raw', main, out]],
    ['convert', IMG_CONVERT, ['--untrusted', '-O', r.pick(['raw', 'qcow2', 'vhd', 'vmdk']), main, out], true],
  ];
  if (c.reference) all.push(['compare', IMG, ['compare', main, c.reference]]);
  if (c.stream) all.push(['pipe', IMG_CONVERT, [c.format, 'raw', '-', out], false, main]);
  const n = 1 + r.int(2);
  const picked = [];
  for (let k = 0; k < n; k++) picked.push(r.pick(all));
  return picked;
}

function runCli(c, [what, bin, argv, untrusted, stdinFile]) {
  const trace = join(c.outDir, 'strace.log');
  const time = join(c.outDir, 'time.log');
  const node = [process.execPath, '--max-old-space-size=256', bin, ...argv];
  const cmd = ['-f', 'RSS %M', '-o', time, ...(untrusted ? ['strace', '-f', '-qq', '--seccomp-bpf', '-e', 'trace=open,openat,openat2', '-o', trace] : []), ...node];
  const r = spawnSync('/usr/bin/time', cmd, {
    encoding: 'utf8',
    timeout: opt.timeout,
    killSignal: 'SIGKILL',
    input: stdinFile ? readFileSync(stdinFile) : '',
    maxBuffer: 64 << 20,
  });
  const failures = [];
  const label = `${what} (${[bin.endsWith('img.js') ? 'img' : 'img-convert', ...argv].join(' ')})`;
  if (r.error?.code === 'ETIMEDOUT' || r.signal) failures.push(`HANG/KILL: ${label}: ${r.signal ?? r.error?.code}`);
  else {
    const stderr = (r.stderr ?? '').split('\n').filter((l) => l.trim() && !/^Command (exited|terminated)/.test(l));
    const status = r.status;
    if (!OK_STATUS[what].includes(status)) failures.push(`EXIT ${status}: ${label}: ${stderr.slice(0, 3).join(' | ')}`);
    if (stderr.some((l) => /^\s+at\s/.test(l))) failures.push(`STACK: ${label}: ${stderr.slice(0, 6).join(' | ')}`);
    // check prints one line per problem on stderr, as qemu-img check does: a report, not an error.
    else if (what === 'check') {
      if (status === 1 && stderr.length === 0) failures.push(`SILENT: ${label} failed without a message`);
    } else if (stderr.length > 1) failures.push(`STDERR LINES ${stderr.length}: ${label}: ${stderr.slice(0, 3).join(' | ')}`);
    else if (stderr.length === 1 && status !== 0 && !/^(img|img-convert)( [a-z]+)?: ERR_IMG_[A-Z0-9_]+: /.test(stderr[0])) failures.push(`NO CODE: ${label}: ${stderr[0].slice(0, 300)}`);
  }
  if (existsSync(time)) {
    const m = /RSS (\d+)/.exec(readFileSync(time, 'utf8'));
    if (m && Number(m[1]) > opt.rssKiB) failures.push(`RSS ${Math.round(Number(m[1]) / 1024)} MiB: ${label}`);
  }
  if (untrusted && existsSync(trace)) {
    const main = join(c.dir, c.main);
    for (const line of readFileSync(trace, 'utf8').split('\n')) {
      const m = /open(?:at2?)?\((?:AT_FDCWD|\d+), "([^"]*)"/.exec(line) ?? /open\("([^"]*)"/.exec(line);
      if (!m) continue;
      const p = m[1];
      if (p === TRAP || p === '/etc/passwd' || (p.startsWith(c.dir + '/') && p !== main)) failures.push(`UNTRUSTED OPEN of ${p}: ${label}`);
    }
  }
  rmSync(join(c.outDir, 'cli.out'), { force: true });
  return failures;
}

// ---------------------------------------------------------------- main

async function main() {
  mkdirSync(W, { recursive: true });
  // The trap's path is fixed (the mutations name it), whatever --work says.
  mkdirSync(dirname(TRAP), { recursive: true });
  writeFileSync(TRAP, 'trap: an untrusted open must never read this file\n');
  const seeds = buildSeeds();
  console.log(`seeds: ${seeds.length} (${seeds.map((s) => s.name).join(', ')})`);
  const ids = opt.only !== undefined ? String(opt.only).split(',').map(Number) : Array.from({ length: opt.cases }, (_, i) => i);
  const failDir = join(W, 'failures');
  mkdirSync(failDir, { recursive: true });
  let child = new Child();
  let failed = 0;
  const started = Date.now();
  for (const i of ids) {
    const c = makeCase(seeds, i);
    const failures = [];
    const res = await child.run(c, opt.timeout * 3);
    if (res.timeout) {
      failures.push(`HANG: API entry points did not finish within ${opt.timeout * 3} ms`);
      child.kill();
      child = new Child();
    } else if (res.exit) {
      failures.push(`CRASH: the API child exited (${res.exit.code ?? res.exit.signal}): ${child.stderr.slice(-1500)}`);
      child = new Child();
    } else {
      failures.push(...res.failures);
      if (res.maxRSS > opt.rssKiB && res.maxRSS > res.rssBefore) {
        failures.push(`RSS: the API child grew to ${Math.round(res.maxRSS / 1024)} MiB`);
        child.kill();
        child = new Child();
      }
    }
    const r = rng(c.seed ^ 0x5bd1e995);
    if (r() < opt.cli)
      for (const cmd of cliCommands(c, r)) {
        if (COPIES_ALL.has(cmd[0]) && res.dataBytes > opt.copyCap) {
          if (process.env.VERBOSE) console.log(`case ${i}: ${cmd[0]} left out: the disk holds ${res.dataBytes} bytes of data`);
          continue;
        }
        failures.push(...runCli(c, cmd));
      }
    if (failures.length) {
      failed++;
      const keep = join(failDir, String(i));
      rmSync(keep, { recursive: true, force: true });
      cpSync(c.dir, keep, { recursive: true });
      writeFileSync(join(keep, 'case.json'), JSON.stringify({ ...c, failures }, null, 1));
      console.log(`case ${i} [${c.seedName}] ${c.note}\n  ${failures.join('\n  ')}`);
    } else if (process.env.VERBOSE) console.log(`case ${i} [${c.seedName}] ok: ${c.note}`);
    rmSync(c.dir, { recursive: true, force: true });
    rmSync(c.outDir, { recursive: true, force: true });
    if (i % 25 === 0) console.log(`.. ${i + 1} cases, ${failed} failed, ${Math.round((Date.now() - started) / 1000)} s`);
  }
  child.proc.stdin.end();
  console.log(`done: ${ids.length} cases (seed ${opt.seed}), ${failed} failed, ${Math.round((Date.now() - started) / 1000)} s; failures kept in ${failDir}`);
}

await main();
