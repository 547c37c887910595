#!/usr/bin/env node
// The hostile input campaign for qcow2 (not a CI test; see README.md,
// "Hostile input campaign"). Seeded and reproducible: case N of seed S is
// always the same damaged image and the same operations.
//
//   node packages/qcow2/test/fuzz-campaign.mjs [--seed 1] [--minutes 20 | --cases 500]
//        [--case N] [--mutator l2] [--ops write,repair-all,cli-convert] [--out /tmp/fuzzq/campaign]
//
// Each case takes a seed image (every fixture in test-images/qcow2 and
// images made here by qemu-img: snapshots, bitmaps, extended L2, zlib and
// zstd compression, external data file, backing chain, refcount widths 1
// to 64, the corrupt images of @img/testkit), damages it (fuzz-mutate.mjs),
// and hands it to a worker process (fuzz-worker.mjs) that drives the read
// entry points, two mutating ones on fresh copies and one or two CLI
// commands. The worker runs as `nobody` (a damaged image may name
// /etc/passwd as its backing or data file) with a bounded heap; an
// operation that takes longer than FUZZ_OP_MS (10 s) or a worker whose RSS
// passes FUZZ_RSS_MIB (300) is a finding. New kinds of finding are saved
// under --out/failures with the image that produced them.
import { fork, spawnSync } from 'node:child_process';
import { chownSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { QCOW2_CORRUPTIONS, seededRandom, testImagesDir, writeCorruptQcow2 } from '@img/testkit';
import { mutateQcow2 } from './fuzz-mutate.mjs';

const { values: args } = parseArgs({
  options: {
    seed: { type: 'string', default: '1' },
    cases: { type: 'string' },
    minutes: { type: 'string' },
    case: { type: 'string' },
    first: { type: 'string', default: '0' },
    mutator: { type: 'string' },
    ops: { type: 'string' },
    out: { type: 'string', default: '/tmp/fuzzq/campaign' },
    work: { type: 'string', default: '/dev/shm/fuzzq/work' },
    keep: { type: 'boolean', default: false },
    // Only the seed images whose names match this regular expression (e.g. "luks|aes").
    seeds: { type: 'string' },
  },
});

const MUTATING_OPS = ['write', 'repair-leaks', 'repair-all', 'amend', 'snapshots', 'snapshot-apply', 'resize', 'bitmaps', 'rebase-unsafe', 'make-empty', 'sparsify', 'compact'];
const CLI_OPS = ['cli-info', 'cli-map', 'cli-check', 'cli-check-r', 'cli-convert', 'img-convert', 'cli-compare', 'cli-snapshot', 'cli-amend', 'cli-commit', 'cli-rebase', 'cli-bitmap', 'cli-resize'];
const OP_MS = Number(process.env.FUZZ_OP_MS ?? 10_000);
const RSS_MIB = Number(process.env.FUZZ_RSS_MIB ?? 300);
const seed = Number(args.seed);
const work = args.work;
const out = args.out;
const deadline = args.minutes ? Date.now() + Number(args.minutes) * 60_000 : Infinity;
const total = args.case !== undefined ? 1 : args.cases ? Number(args.cases) : args.minutes ? Infinity : 100;

// ---- seed images -----------------------------------------------------------------

function sh(cmd, cmdArgs, cwd) {
  const r = spawnSync(cmd, cmdArgs, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${cmdArgs.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** The files an image names (backing file, external data file), found in its own directory, recursively. */
function companions(path, seen = new Set()) {
  const b = readFileSync(path);
  if (b.length < 72 || b.readUInt32BE(0) !== 0x514649fb) return [];
  const names = [];
  const bo = Number(b.readBigUInt64BE(8));
  const bs = b.readUInt32BE(16);
  if (bo && bs) names.push(b.subarray(bo, bo + bs).toString('utf8'));
  const version = b.readUInt32BE(4);
  const cs = 2 ** b.readUInt32BE(20);
  for (let at = version >= 3 ? b.readUInt32BE(100) : 72; at + 8 <= Math.min(cs, b.length);) {
    const type = b.readUInt32BE(at);
    const len = b.readUInt32BE(at + 4);
    if (type === 0) break;
    if (type === 0x44415441) names.push(b.subarray(at + 8, at + 8 + len).toString('utf8'));
    at += 8 + Math.ceil(len / 8) * 8;
  }
  const list = [];
  for (const n of names) {
    const p = join(dirname(path), n);
    if (seen.has(p) || !existsSync(p)) continue;
    seen.add(p);
    list.push(p, ...companions(p, seen));
  }
  return list;
}

/** Fixtures plus images qemu-img makes here: every feature the brief lists. */
function buildSeeds(dir) {
  mkdirSync(dir, { recursive: true });
  const seeds = [];
  const fixtures = join(testImagesDir, 'qcow2');
  for (const f of readdirSync(fixtures).sort()) {
    if (!f.endsWith('.qcow2')) continue;
    const p = join(fixtures, f);
    seeds.push({ name: f, path: p, companions: companions(p) });
  }
  const made = (name, build) => {
    const d = join(dir, name);
    const p = join(d, 'img.qcow2');
    if (!existsSync(p)) {
      rmSync(d, { recursive: true, force: true });
      mkdirSync(d, { recursive: true });
      build(d, p);
    }
    seeds.push({ name, path: p, companions: companions(p) });
  };
  const io = (p, ...cmds) => sh('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), p], dirname(p));
  const create = (p, size, o) => sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', o, p, size]);
  made('snapshots-v3', (d, p) => {
    create(p, '8M', 'cluster_size=65536');
    io(p, 'write -P 1 0 1M');
    sh('qemu-img', ['snapshot', '-c', 's1', p]);
    io(p, 'write -P 2 512k 1M', 'write -z 3M 64k');
    sh('qemu-img', ['snapshot', '-c', 's2', p]);
    io(p, 'write -P 3 2M 64k', 'discard 0 64k');
  });
  made('snapshots-v2', (d, p) => {
    create(p, '4M', 'cluster_size=4096,compat=0.10');
    io(p, 'write -P 1 0 256k');
    sh('qemu-img', ['snapshot', '-c', 's1', p]);
    io(p, 'write -P 2 128k 256k');
  });
  made('bitmaps', (d, p) => {
    create(p, '8M', 'cluster_size=65536');
    sh('qemu-img', ['bitmap', '--add', p, 'b1']);
    sh('qemu-img', ['bitmap', '--add', '-g', '4096', p, 'b2']);
    io(p, 'write -P 7 0 300k', 'write -P 8 5M 64k');
    sh('qemu-img', ['bitmap', '--disable', p, 'b2']);
  });
  made('extended-l2', (d, p) => {
    create(p, '8M', 'cluster_size=65536,extended_l2=on');
    io(p, 'write -P 1 4k 4k', 'write -P 2 64k 64k', 'write -z 200k 8k', 'write -P 3 1M 2k');
  });
  for (const [type, cluster] of [
    ['zlib', 4096],
    ['zstd', 65536],
    ['zlib', 512],
  ]) {
    made(`compressed-${type}-${cluster}`, (d, p) => {
      const raw = join(d, 'src.raw');
      const bytes = Buffer.alloc(2 * 1024 * 1024);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) % 251 < 120 ? (i >> 9) & 0xff : 0;
      writeFileSync(raw, bytes);
      sh('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${type},cluster_size=${cluster}`, raw, p]);
      rmSync(raw);
      io(p, 'write -P 9 64k 4k');
    });
  }
  made('data-file', (d, p) => {
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'data_file=data.img,data_file_raw=on', p, '4M'], d);
    io(p, 'write -P 5 0 128k', 'write -P 6 1M 64k');
  });
  made('data-file-nonraw', (d, p) => {
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'data_file=data.img', p, '4M'], d);
    io(p, 'write -P 5 0 128k');
  });
  made('chain', (d, p) => {
    const base = join(d, 'base.qcow2');
    create(base, '4M', 'cluster_size=65536');
    io(base, 'write -P 1 0 2M');
    sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2'], d);
    io(p, 'write -P 2 64k 64k', 'write -z 1M 64k', 'discard 2M 64k');
  });
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    made(`refcount-${bits}`, (d, p) => {
      create(p, '4M', `cluster_size=4096,refcount_bits=${bits}`);
      io(p, 'write -P 1 0 64k');
      if (bits > 1) sh('qemu-img', ['snapshot', '-c', 's1', p]);
      io(p, 'write -P 2 32k 64k');
    });
  }
  made('prealloc-metadata', (d, p) => {
    create(p, '4M', 'cluster_size=65536,preallocation=metadata');
    io(p, 'write -P 4 64k 64k');
  });
  made('lazy', (d, p) => {
    create(p, '4M', 'cluster_size=4096,lazy_refcounts=on');
    io(p, 'write -P 4 0 64k');
  });
  // Encrypted seeds (the worker opens every image with this passphrase, and judges them with qemu-img given it).
  // qemu-img times PBKDF2 for encrypt.iter-time and here now and then fails "Unable to get accurate CPU usage": retried.
  const encrypted = (name, o) =>
    made(name, (d, p) => {
      for (const ms of [100, 200, 500, 1000, 100, 200]) {
        try {
          sh('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', 'secret,id=fz,data=fuzz', '-o', `${o},encrypt.key-secret=fz${o.includes('luks') ? `,encrypt.iter-time=${ms}` : ''}`, p, '4M']);
          break;
        } catch (e) {
          if (!/accurate CPU usage/.test(String(e))) throw e;
        }
      }
      // qemu-img never timed it: img makes the LUKS image (qemu-io writes into it below, qemu-img judges it).
      if (!existsSync(p)) sh(process.execPath, [new URL('../../convert/dist/bin/img.js', import.meta.url).pathname, 'create', '-q', '-f', 'qcow2', '--object', 'secret,id=fz,data=fuzz', '-o', `${o},encrypt.key-secret=fz,encrypt.iter-time=100`, p, '4M']);
      sh('qemu-io', ['--object', 'secret,id=fz,data=fuzz', '--image-opts', `driver=qcow2,file.filename=${p},encrypt.key-secret=fz`, '-c', 'write -P 7 0 64k', '-c', 'write -P 8 1M 12k'], d);
    });
  encrypted('luks-xts', 'encrypt.format=luks,cluster_size=4096');
  encrypted('luks-cbc-essiv', 'encrypt.format=luks,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv');
  // The pure-TypeScript ciphers: Serpent, Twofish (CTR) and CAST5 (64-bit blocks, essiv over md5).
  encrypted('luks-serpent-xts', 'encrypt.format=luks,encrypt.cipher-alg=serpent-256,cluster_size=4096');
  encrypted('luks-twofish-ctr', 'encrypt.format=luks,encrypt.cipher-alg=twofish-128,encrypt.cipher-mode=ctr');
  encrypted('luks-cast5-cbc-essiv', 'encrypt.format=luks,encrypt.cipher-alg=cast5-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=md5');
  encrypted('aes', 'encrypt.format=aes,cluster_size=4096');
  for (const kind of QCOW2_CORRUPTIONS) {
    for (const version of [2, 3]) {
      made(`corrupt-${kind}-v${version}`, (d, p) => writeCorruptQcow2(p, kind, version));
    }
  }
  return seeds;
}

// ---- the worker ------------------------------------------------------------------

const nobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : undefined;

class Worker {
  constructor() {
    this.child = fork(new URL('./fuzz-worker.mjs', import.meta.url).pathname, [], {
      execArgv: [`--max-old-space-size=${process.env.FUZZ_HEAP_MIB ?? 256}`],
      cwd: work,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      ...(nobody ?? {}),
    });
    this.stderr = '';
    this.child.stderr.on('data', (d) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.child.stdout.on('data', () => undefined);
    this.ready = new Promise((resolve) => this.child.once('message', resolve));
    this.cases = 0;
  }

  /** Runs one case; resolves with the worker's result or with a hang/crash/memory finding (the worker is then dead). */
  run(c) {
    this.cases++;
    return new Promise((resolve) => {
      let op = 'start';
      let timer;
      const arm = () => {
        clearTimeout(timer);
        // CLI steps bound their own child (10 s) and then judge it with qemu-img.
        const ms = op.startsWith('cli') || op.startsWith('img-') || op.endsWith(':judge') ? OP_MS * 2 + 5000 : OP_MS;
        timer = setTimeout(() => finish({ findings: [{ kind: 'hang', op, detail: `${op} did not return within ${ms} ms` }], dead: true }), ms);
      };
      const poll = setInterval(() => {
        try {
          const status = readFileSync(`/proc/${this.child.pid}/status`, 'utf8');
          const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
          if (kib > RSS_MIB * 1024) finish({ findings: [{ kind: 'memory', op, detail: `worker RSS ${Math.round(kib / 1024)} MiB during ${op}` }], dead: true });
        } catch {
          // The worker has gone; 'exit' reports it.
        }
      }, 100);
      const onMessage = (m) => {
        if (m.op) {
          op = m.op;
          arm();
        } else if (m.done) finish(m.done);
      };
      const onExit = (code, signal) => finish({ findings: [{ kind: 'crash', op, detail: `worker exited (${code ?? signal}) during ${op}: ${this.stderr.slice(-1500)}` }], dead: true });
      let finished = false;
      const finish = (result) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        clearInterval(poll);
        this.child.off('message', onMessage);
        this.child.off('exit', onExit);
        if (result.dead) this.kill();
        resolve(result);
      };
      this.child.on('message', onMessage);
      this.child.once('exit', onExit);
      arm();
      this.child.send(c);
    });
  }

  kill() {
    this.dead = true;
    this.child.kill('SIGKILL');
  }
}

// ---- the campaign ----------------------------------------------------------------

function signature(f) {
  let text = f.detail.split('\n')[0];
  text = text
    .replace(/0x[0-9a-f]+/gi, 'X')
    .replace(/\d+/g, 'N')
    .replace(/\(mutation: .*\)/, '')
    .replace(/\/[\w./-]+/g, 'P')
    .slice(0, 140);
  const frame = /at .*?(packages\/[\w/-]+\.[jt]s:\d+)/.exec(f.detail)?.[1] ?? '';
  return `${f.kind} | ${f.op.replace(/ .*/, '')} | ${text} | ${frame}`;
}

function chownTree(p) {
  if (!nobody) return;
  chownSync(p, nobody.uid, nobody.gid);
  if (statSync(p).isDirectory()) for (const f of readdirSync(p)) chownTree(join(p, f));
}

function pickOps(r) {
  const chosen = randomOps(r);
  if (!args.ops) return chosen;
  // The same random draws as without --ops, so that the case's operation parameters stay the same.
  const list = args.ops.split(',');
  return { mutating: list.filter((o) => MUTATING_OPS.includes(o)), cli: list.filter((o) => CLI_OPS.includes(o)) };
}

function randomOps(r) {
  const pool = [...MUTATING_OPS];
  const mutating = [];
  for (let i = 0; i < 2; i++) mutating.push(...pool.splice(Math.floor(r() * pool.length), 1));
  const cli = [CLI_OPS[Math.floor(r() * CLI_OPS.length)]];
  if (r() < 0.3) cli.push(CLI_OPS[Math.floor(r() * CLI_OPS.length)]);
  return { mutating, cli: [...new Set(cli)] };
}

async function main() {
  mkdirSync(work, { recursive: true });
  chmodSync(work, 0o777);
  mkdirSync(join(out, 'failures'), { recursive: true });
  const seeds = buildSeeds(join(dirname(work), 'seeds')).filter((s) => args.seeds === undefined || new RegExp(args.seeds).test(s.name));
  if (seeds.length === 0) throw new Error(`no seed image matches --seeds ${args.seeds}`);
  console.log(`qcow2 hostile input campaign: seed ${seed}, ${seeds.length} seed images, op limit ${OP_MS} ms, RSS limit ${RSS_MIB} MiB`);
  const known = new Map();
  const totals = { cases: 0, findings: 0, stats: {} };
  let worker;
  const first = args.case !== undefined ? Number(args.case) : Number(args.first);
  for (let n = first; n < first + total && Date.now() < deadline; n++) {
    const r = seededRandom((Math.imul(seed, 0x9e3779b1) + n * 0x85ebca6b) >>> 0);
    const s = seeds[Math.floor(r() * seeds.length)];
    const original = new Uint8Array(readFileSync(s.path));
    const { bytes, what } = mutateQcow2(original, r, args.mutator);
    const dir = join(work, `c${n}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir);
    writeFileSync(join(dir, 'img.qcow2'), bytes);
    writeFileSync(join(dir, 'seed.qcow2'), original);
    for (const p of s.companions) copyFileSync(p, join(dir, basename(p)));
    chownTree(dir);
    const ops = pickOps(r);
    const c = { dir, what, seedName: s.name, opSeed: Math.floor(r() * 2 ** 32), ...ops };
    if (!worker || worker.dead || worker.cases >= 200) {
      worker?.kill();
      worker = new Worker();
      await worker.ready;
    }
    const result = await worker.run(c);
    totals.cases++;
    for (const [k, v] of Object.entries(result.stats ?? {})) totals.stats[k] = (totals.stats[k] ?? 0) + v;
    let keep = args.keep || args.case !== undefined;
    for (const f of result.findings) {
      totals.findings++;
      const sig = signature(f);
      const entry = known.get(sig);
      if (entry) {
        entry.count++;
        continue;
      }
      const id = String(known.size + 1).padStart(3, '0');
      known.set(sig, { id, count: 1, case: n, seed: s.name, what, kind: f.kind, op: f.op });
      const file = join(out, 'failures', `${id}-${f.kind}-case${n}`);
      writeFileSync(`${file}.json`, JSON.stringify({ seed, case: n, seedImage: s.name, mutation: what, ops, finding: f, baseline: result.baseline }, null, 2));
      copyFileSync(join(dir, 'img.qcow2'), `${file}.qcow2`);
      console.log(`case ${n} [${s.name}] NEW ${f.kind} in ${f.op}: ${f.detail.split('\n')[0].slice(0, 300)}\n    mutation: ${what.join('; ')}`);
      keep = keep || args.case !== undefined;
    }
    if (args.case !== undefined) {
      console.log(JSON.stringify({ seed: s.name, what, ops, result }, null, 2));
      console.log(`case directory kept: ${dir}`);
      if (worker.stderr) console.log(`worker stderr:\n${worker.stderr}`);
    } else if (!keep) rmSync(dir, { recursive: true, force: true });
    if (totals.cases % 25 === 0) {
      console.log(`${new Date().toISOString().slice(11, 19)} ${totals.cases} cases, ${totals.findings} findings, ${known.size} distinct`);
      writeSummary(known, totals);
    }
  }
  worker?.kill();
  writeSummary(known, totals);
  console.log(`done: ${totals.cases} cases, ${totals.findings} findings, ${known.size} distinct (${join(out, 'summary.json')})`);
}

function writeSummary(known, totals) {
  const distinct = [...known.entries()].map(([sig, e]) => ({ signature: sig, ...e }));
  writeFileSync(join(out, 'summary.json'), JSON.stringify({ seed, ...totals, distinct }, null, 2));
}

await main();
