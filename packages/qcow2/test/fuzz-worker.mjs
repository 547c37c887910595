// The child process of the hostile input campaign (fuzz-campaign.mjs): it
// receives one damaged image at a time over IPC, drives every entry point
// on it (each mutating one on a fresh copy), judges the outcome against
// qemu-img, and sends back what it found. The parent runs it as an
// unprivileged user with a heap bound, kills it when an operation takes
// too long or its RSS grows too large, and starts another.
import { spawnSync } from 'node:child_process';
import { copyFileSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { ImageError } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { amendQcow2, checkQcow2, compactQcow2, editQcow2Bitmaps, listQcow2Bitmaps, openQcow2, readQcow2DirtyBitmap, readQcow2Stream, sparsifyQcow2 } from '@img/qcow2';
import { seededRandom } from '@img/testkit';

const MiB = 1024 * 1024;
/** Guest content is compared (ours against qemu's, before against after) up to this virtual size. */
const MAX_COMPARE = 32 * MiB;
const CLI_TIMEOUT = Number(process.env.FUZZ_OP_MS ?? 10_000);
const RSS_LIMIT_KIB = Number(process.env.FUZZ_RSS_MIB ?? 300) * 1024;
const IMG_BIN = new URL('../../convert/dist/bin/img.js', import.meta.url).pathname;
const IMG_CONVERT_BIN = new URL('../../convert/dist/bin/img-convert.js', import.meta.url).pathname;

let findings = [];
let errorsSeen = [];
const stats = {};
const count = (k) => (stats[k] = (stats[k] ?? 0) + 1);

function finding(kind, op, detail) {
  findings.push({ kind, op, detail: String(detail).slice(0, 4000) });
}

// ---- qemu-img as the oracle --------------------------------------------------

function run(cmd, args, cwd, timeout = CLI_TIMEOUT) {
  // stderr goes to a file, of which the first 16 KiB are kept: qemu-img check prints a line per damaged entry
  // (millions for a crafted table), and holding that would count against the worker's own RSS limit.
  const errFile = join(cwd, `.stderr-${process.pid}`);
  const fd = openSync(errFile, 'w');
  let r;
  try {
    r = spawnSync(cmd, args, { cwd, timeout, encoding: 'utf8', maxBuffer: 64 * MiB, killSignal: 'SIGKILL', stdio: ['ignore', 'pipe', fd] });
  } finally {
    closeSync(fd);
  }
  const stderr = fileChunk(errFile, 0, 16 * 1024).toString('utf8');
  rmSync(errFile, { force: true });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr, error: r.error };
}

/** The passphrase of the encrypted seeds (LUKS, AES): every open is given it; it unlocks only those. */
const PASSPHRASE = 'fuzz';

/**
 * How qemu-img names `file`: with the seeds' secret where its header says it is encrypted (crypt_method at 0x20),
 * for its backing file too where it has one (rebase-unsafe makes an encrypted seed the backing of its copy).
 */
function qemuImage(file, cwd) {
  let method = 0;
  let backing = false;
  try {
    const fd = openSync(resolve(cwd, file), 'r');
    const b = Buffer.alloc(36);
    readSync(fd, b, 0, 36, 0);
    closeSync(fd);
    method = b.readUInt32BE(32);
    backing = b.readBigUInt64BE(8) !== 0n;
  } catch {
    method = 0;
  }
  if (method === 0) return ['-f', 'qcow2', file];
  return ['--object', `secret,id=fz,data=${PASSPHRASE}`, '--image-opts', `driver=qcow2,file.filename=${file},encrypt.key-secret=fz${backing ? ',backing.encrypt.key-secret=fz' : ''}`];
}

/** qemu-img check: status 0 clean, 1 could not check, 2 corrupt, 3 leaks only. */
function qcheck(file, cwd) {
  const r = run('qemu-img', ['check', '--output=json', ...qemuImage(file, cwd)], cwd);
  let json;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    json = undefined;
  }
  const status = r.signal ? -1 : r.status;
  return { status, timedOut: r.error?.code === 'ETIMEDOUT', corruptions: json?.corruptions ?? 0, leaks: json?.leaks ?? 0, errors: json?.['check-errors'] ?? 0, text: `${status} ${r.stdout.trim().replace(/\s+/g, ' ').slice(0, 300)} ${r.stderr.trim().slice(0, 300)}` };
}

const cleanish = (q) => q.status === 0 || q.status === 3;

/** The virtual size in the header, as qemu reads it (to skip huge content comparisons). */
function headerSize(file) {
  try {
    const fd = openSync(file, 'r');
    const b = Buffer.alloc(32);
    readSync(fd, b, 0, 32, 0);
    closeSync(fd);
    return Number(b.readBigUInt64BE(24));
  } catch {
    return Infinity;
  }
}

/** qemu's guest view as a raw file, or undefined when qemu cannot read it (or it is too large to compare). */
function qraw(file, cwd, out) {
  if (headerSize(file) > MAX_COMPARE) return undefined;
  const r = run('qemu-img', ['convert', ...qemuImage(file, cwd), '-O', 'raw', out], cwd);
  return r.status === 0 && !r.signal ? out : undefined;
}

function fileChunk(path, offset, length) {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    const n = readSync(fd, b, 0, length, offset);
    return b.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/**
 * Compares guest bytes [0, length) of `actual` (a chunk reader) with the raw
 * file `before` changed by `patches` ({offset, length, fill} or {dontCare}).
 * Returns the first differing offset or -1.
 */
async function firstDifference(actual, before, length, patches = []) {
  for (let at = 0; at < length; at += MiB) {
    const n = Math.min(MiB, length - at);
    const want = Buffer.alloc(n);
    want.set(fileChunk(before, at, n));
    const care = new Uint8Array(n).fill(1);
    for (const p of patches) {
      const s = Math.max(p.offset, at);
      const e = Math.min(p.offset + p.length, at + n);
      if (s >= e) continue;
      if (p.dontCare) care.fill(0, s - at, e - at);
      else {
        want.fill(p.fill, s - at, e - at);
        care.fill(1, s - at, e - at);
      }
    }
    const got = await actual(at, n);
    for (let i = 0; i < n; i++) if (care[i] && got[i] !== want[i]) return at + i;
  }
  return -1;
}

const rawReader = (path) => async (at, n) => {
  const b = Buffer.alloc(n);
  b.set(fileChunk(path, at, n));
  return b;
};

// ---- one step under watch ------------------------------------------------------

/** Runs `fn`, telling the parent which step is running; only ImageErrors may escape, with a one-line message naming the file. */
async function step(op, file, fn) {
  process.send?.({ op });
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    if (!ImageError.isInstance(e)) {
      finding('exception', op, `${e?.constructor?.name}: ${e?.message}\n${e?.stack ?? ''}`);
      return { ok: false, error: e };
    }
    count(`error ${e.code}`);
    // The messages themselves, for a case run alone (--case): what each refusal said.
    if (errorsSeen.length < 40) errorsSeen.push(`${op}: ${e.code}: ${e.message.slice(0, 300)}`);
    judgeMessage(op, file, e);
    return { ok: false, error: e };
  }
}

function judgeMessage(op, file, e) {
  if (!/^ERR_IMG_[A-Z_]+$/.test(e.code)) finding('message', op, `code ${e.code}: ${e.message}`);
  if (/\n/.test(e.message)) finding('message', op, `not one line: ${e.message.slice(0, 600)}`);
  if (['ERR_IMG_CORRUPT', 'ERR_IMG_UNSUPPORTED'].includes(e.code)) {
    if (file && !e.message.includes(basename(file)) && !e.message.includes(file)) finding('message', op, `names no file: ${e.message}`);
    if (e.code === 'ERR_IMG_CORRUPT' && (e.data?.field === undefined || e.data?.offset === undefined)) finding('message-detail', op, `${e.code} without field/offset: ${e.message}`);
  }
}

// ---- the case ------------------------------------------------------------------

async function withDisk(file, options, fn) {
  const storage = await FileStorage.open(file, { readOnly: options.readOnly ?? true });
  let disk;
  try {
    disk = await openQcow2(storage, { resolver: fileResolver, passphrase: PASSPHRASE, ...options });
  } catch (e) {
    await storage.close();
    throw e;
  }
  try {
    return await fn(disk);
  } finally {
    await disk.close();
    await storage.close().catch(() => undefined);
  }
}

/** Read-only entry points: open, read (against qemu), extents, info, snapshots, untrusted, bitmaps, check, stream. */
async function readOnly(c) {
  const file = c.image;
  let size;
  const opened = await step('read', file, () =>
    withDisk(file, {}, async (disk) => {
      size = disk.size;
      for await (const _ of disk.extents()) continue;
      for await (const _ of disk.extents({ hostOffsets: true })) continue;
      for await (const _ of disk.extents({ topOnly: true })) continue;
      await disk.info();
      if (c.raw && size <= MAX_COMPARE) {
        const bad = await firstDifference((at, n) => disk.read(at, n), c.raw, Math.min(size, statSync(c.raw).size));
        if (bad >= 0) finding('read-differs', 'read', `our read differs from qemu-img convert at guest offset ${bad} (mutation: ${c.what.join('; ')})`);
        else count('read equal to qemu');
      } else if (size <= MAX_COMPARE) {
        for (let at = 0; at < size; at += MiB) await disk.read(at, Math.min(MiB, size - at));
      } else {
        // Huge virtual size: a sample of reads.
        for (const at of [0, size - 1, Math.floor(size / 2)]) await disk.read(Math.max(0, at - 4096), Math.min(8192, size));
      }
      for (const s of disk.snapshots) {
        const snap = await step('snapshot-read', file, async () => {
          const d = await disk.openSnapshot(s.id);
          try {
            if (d.size <= MAX_COMPARE) for (let at = 0; at < d.size; at += MiB) await d.read(at, Math.min(MiB, d.size - at));
            for await (const _ of d.extents()) continue;
          } finally {
            await d.close();
          }
        });
        if (!snap.ok && !ImageError.isInstance(snap.error)) break;
      }
    }),
  );
  count(opened.ok ? 'open ok' : 'open refused');
  if (!opened.ok && c.raw) count('qemu reads, we refuse');
  if (opened.ok && !c.raw && c.baseline.status !== 1 && headerSize(file) <= MAX_COMPARE) count('we read, qemu refuses');
  await step('untrusted', file, () => withDisk(file, { untrusted: true }, async (disk) => disk.read(0, Math.min(disk.size, 65536))));
  await step('open-no-backing', file, () => withDisk(file, { noBacking: true }, async (disk) => disk.read(0, Math.min(disk.size, 65536))));
  await step('bitmaps', file, async () => {
    const storage = await FileStorage.open(file);
    try {
      for (const b of await listQcow2Bitmaps(storage)) await readQcow2DirtyBitmap(storage, b.name);
    } finally {
      await storage.close();
    }
  });
  const ours = await step('check', file, async () => {
    const storage = await FileStorage.open(file);
    try {
      return await checkQcow2(storage);
    } finally {
      await storage.close();
    }
  });
  if (ours.ok && c.baseline.status === 0 && ours.value.corruptions > 0) count('we see corruption qemu does not');
  if (ours.ok && c.baseline.status === 2 && ours.value.corruptions === 0) count('qemu sees corruption we do not');
  await step('stream', 'stream', async () => {
    const bytes = readFileSync(file);
    const src = await readQcow2Stream(
      (async function* () {
        for (let at = 0; at < bytes.length; at += 65536) yield bytes.subarray(at, at + 65536);
      })(),
    );
    let total = 0;
    for await (const p of src.pieces) {
      if (p.offset + p.data.length > src.size) throw new Error(`stream piece ${p.offset}+${p.data.length} past the disk size ${src.size}`);
      if ((total += p.data.length) > 256 * MiB) break;
    }
  });
}

/** A fresh copy of the damaged image and its companions in a directory of its own. */
function freshCopy(c, name) {
  const dir = join(c.dir, name);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(c.dir)) {
    const p = join(c.dir, f);
    if (statSync(p).isFile() && !f.endsWith('.raw')) copyFileSync(p, join(dir, f));
  }
  return { dir, file: join(dir, 'img.qcow2') };
}

/**
 * Runs a mutating operation on a fresh copy and judges it: qemu-img check
 * no worse than before, our own check does not throw anything but an
 * ImageError, and the guest content is what the operation promises
 * (`expect`: 'same', the patches it reports, or nothing to compare).
 */
async function mutating(c, op, body) {
  const { dir, file } = freshCopy(c, op);
  const model = { patches: [], expect: 'same', length: undefined, grownTo: undefined, repair: undefined };
  const res = await step(op, file, () => body(file, dir, model));
  count(`${op} ${res.ok ? 'done' : 'refused'}`);
  judgeAfter(c, op, file, dir, res.ok, model);
  return res;
}

function judgeAfter(c, op, file, dir, ok, model) {
  process.send?.({ op: `${op}:judge` });
  const before = c.baseline;
  const after = qcheck(file, dir);
  if (cleanish(before) && !cleanish(after)) finding('worse', op, `qemu-img check before: ${before.text}; after (${ok ? 'op succeeded' : 'op failed'}): ${after.text}`);
  else if (before.status === 2 && after.status === 2 && after.corruptions > before.corruptions) finding('worse', op, `corruptions ${before.corruptions} -> ${after.corruptions} (${ok ? 'op succeeded' : 'op failed'}); after: ${after.text}`);
  else if (before.status !== 1 && after.status === 1) finding('worse', op, `qemu-img check can no longer check it (${ok ? 'op succeeded' : 'op failed'}): ${after.text}; before: ${before.text}`);
  // A repair that reports corruptions left (as qemu-img check -r all does for what it cannot fix) is judged as no worse only.
  if (ok && model.repair === 'all' && model.repairClean !== false && before.status !== 1 && before.status !== -1 && after.status !== 0) finding('repair-incomplete', op, `after a successful repair of everything qemu-img check says ${after.text}; before: ${before.text}`);
  if (ok && model.repair === 'leaks' && model.repairClean !== false && before.status === 3 && after.status === 3) finding('repair-incomplete', op, `leaks left after a successful leak repair: ${after.text}`);
  if (c.raw && model.expect !== 'none' && (ok || model.expect === 'same')) {
    const out = join(dir, 'after.raw');
    const got = qraw(file, dir, out);
    if (!got) {
      if (cleanish(before)) finding('worse', op, `qemu can no longer read the guest content (${ok ? 'op succeeded' : 'op failed'}): ${after.text}`);
    } else {
      const length = ok && model.grownTo !== undefined ? Math.min(model.grownTo, statSync(got).size) : Math.min(model.length ?? Infinity, statSync(c.raw).size, statSync(got).size);
      // A failed operation may have done any prefix of its guest writes, never anything else.
      const patches = ok ? model.patches.filter((p) => !p.undone) : model.patches.map((p) => ({ ...p, dontCare: true }));
      // A failed or successful repair of a corrupt image may change what corrupt clusters read.
      if (!(model.repair && before.status === 2)) {
        const differs = firstDifference(rawReader(got), c.raw, length, patches);
        pendingChecks.push(
          differs.then((bad) => {
            if (bad >= 0) finding('content', op, `guest byte ${bad} is not what the operation promises (${ok ? 'op succeeded' : 'op failed'}; patches ${JSON.stringify(model.patches.slice(0, 8))})`);
          }),
        );
      }
    }
  }
  // Our own check of the result must still only throw ImageErrors.
  pendingChecks.push(
    step(`${op}:recheck`, file, async () => {
      const storage = await FileStorage.open(file);
      try {
        const r = await checkQcow2(storage);
        if (ok && model.repair === 'all' && model.repairClean !== false && r.corruptions > 0) finding('repair-incomplete', op, `our own check after our repair: ${r.corruptions} corruptions: ${r.messages.slice(0, 3).join(' | ')}`);
      } finally {
        await storage.close();
      }
    }),
  );
}
let pendingChecks = [];

/** Random write-path operations on the writable disk, recorded as content patches. */
async function writeSession(disk, r, model, n) {
  const size = disk.size;
  const cs = disk.clusterSize;
  for (let i = 0; i < n && size > 0; i++) {
    const kind = r();
    const offset = r() < 0.5 ? Math.floor(r() * size) : Math.floor((r() * size) / cs) * cs;
    const length = Math.max(1, Math.min(size - offset, Math.floor(r() * 3 * cs) + 1));
    const fill = 1 + Math.floor(r() * 254);
    if (process.env.FUZZ_TRACE) process.stderr.write(`write session: kind ${kind.toFixed(2)} offset ${offset} length ${length} fill ${fill}\n`);
    if (kind < 0.4) {
      model.patches.push({ offset, length, fill });
      await disk.write(offset, new Uint8Array(length).fill(fill));
    } else if (kind < 0.6) {
      model.patches.push({ offset, length, fill: 0 });
      await disk.writeZeroes(offset, length);
    } else if (kind < 0.75) {
      model.patches.push({ offset, length, dontCare: true });
      await disk.discard(offset, length);
    } else if (kind < 0.9) {
      const at = Math.floor((r() * size) / cs) * cs;
      if (at + cs <= size) {
        model.patches.push({ offset: at, length: cs, fill });
        await disk.writeCompressed(at, new Uint8Array(cs).fill(fill));
      }
    } else await disk.flush();
  }
}

const MUTATING = {
  async write(c, r) {
    await mutating(c, 'write', (file, _dir, model) => withDisk(file, { readOnly: false }, (disk) => writeSession(disk, r, model, 2 + Math.floor(r() * 5))));
  },
  async 'repair-leaks'(c) {
    await mutating(c, 'repair-leaks', async (file, _dir, model) => {
      model.repair = 'leaks';
      const storage = await FileStorage.open(file, { readOnly: false });
      try {
        model.repairClean = (await checkQcow2(storage, { repair: 'leaks' })).leaks === 0;
      } finally {
        await storage.close();
      }
    });
  },
  async 'repair-all'(c) {
    await mutating(c, 'repair-all', async (file, _dir, model) => {
      model.repair = 'all';
      const storage = await FileStorage.open(file, { readOnly: false });
      try {
        const result = await checkQcow2(storage, { repair: 'all' });
        model.repairClean = result.corruptions === 0 && result.leaks === 0;
      } finally {
        await storage.close();
      }
    });
  },
  async amend(c, r) {
    const options = [{ compat: '0.10' }, { compat: '1.1' }, { lazy_refcounts: 'on' }, { lazy_refcounts: 'off' }, { compat: '1.1', lazy_refcounts: 'on' }];
    const pickd = options[Math.floor(r() * options.length)];
    await mutating(c, 'amend', async (file) => {
      const storage = await FileStorage.open(file, { readOnly: false });
      try {
        // amendQcow2 takes the typed keys; -o spellings go through parseAmendOptions' messages (the CLI amend step covers them).
        await amendQcow2(storage, { ...(pickd.compat ? { compat: pickd.compat } : {}), ...(pickd.lazy_refcounts ? { lazyRefcounts: pickd.lazy_refcounts === 'on' } : {}) });
      } finally {
        await storage.close();
      }
    });
  },
  async snapshots(c, r) {
    await mutating(c, 'snapshots', (file, _dir, model) =>
      withDisk(file, { readOnly: false }, async (disk) => {
        await disk.createSnapshot('fuzz');
        // These writes are undone by the apply below: on success they must not show, on failure they may.
        const scratch = { patches: [] };
        await writeSession(disk, r, scratch, 2).finally(() => model.patches.push(...scratch.patches.map((p) => ({ ...p, undone: true }))));
        // Back to the snapshot just taken: the content before the writes.
        await disk.applySnapshot('fuzz');
        await disk.deleteSnapshot('fuzz');
        if (disk.snapshots.length && r() < 0.5) await disk.deleteSnapshot(disk.snapshots[Math.floor(r() * disk.snapshots.length)].id);
        await writeSession(disk, r, model, 2);
      }),
    );
  },
  async 'snapshot-apply'(c, r) {
    await mutating(c, 'snapshot-apply', (file, _dir, model) =>
      withDisk(file, { readOnly: false }, async (disk) => {
        model.expect = 'none';
        const list = disk.snapshots;
        await disk.applySnapshot(list.length ? list[Math.floor(r() * list.length)].id : '1');
      }),
    );
  },
  async resize(c, r) {
    await mutating(c, 'resize', (file, _dir, model) =>
      withDisk(file, { readOnly: false }, async (disk) => {
        const old = disk.size;
        const shrink = r() < 0.4;
        const to = shrink ? Math.floor((old * r()) / 512) * 512 : old + Math.ceil((r() * 4 * MiB) / 512) * 512;
        // Drawn after the size, so that the sizes of earlier seeds' cases stay as they were.
        const preallocation = !shrink && to > old && r() < 0.4 ? ['falloc', 'full', 'metadata'][Math.floor(r() * 3)] : 'off';
        model.length = Math.min(old, to);
        // A grow that succeeds adds zeros (whatever a backing file holds there): compared too.
        model.grownTo = to > old ? to : undefined;
        if (preallocation !== 'off') count(`resize preallocation ${preallocation}`);
        await disk.resize(to, { shrink, preallocation });
      }),
    );
  },
  async bitmaps(c, r) {
    await mutating(c, 'bitmaps', async (file) => {
      const storage = await FileStorage.open(file, { readOnly: false });
      try {
        const names = (await listQcow2Bitmaps(storage).catch(() => [])).map((b) => b.name);
        const ops = [{ op: 'add', name: 'fuzz', granularity: 2 ** (9 + Math.floor(r() * 12)) }];
        for (const name of names) ops.push(r() < 0.5 ? { op: 'clear', name } : r() < 0.5 ? { op: 'disable', name } : { op: 'remove', name });
        if (names.length && r() < 0.5) ops.push({ op: 'merge', name: 'fuzz', source: names[0] });
        await editQcow2Bitmaps(storage, ops);
      } finally {
        await storage.close();
      }
    });
  },
  async 'rebase-unsafe'(c, r) {
    await mutating(c, 'rebase-unsafe', (file, _dir, model) =>
      withDisk(file, { readOnly: false, noBacking: true }, async (disk) => {
        model.expect = 'none';
        await disk.setBacking(r() < 0.5 ? undefined : 'seed.qcow2', r() < 0.5 ? 'qcow2' : undefined);
      }),
    );
  },
  async 'make-empty'(c) {
    await mutating(c, 'make-empty', (file, _dir, model) =>
      withDisk(file, { readOnly: false }, async (disk) => {
        model.expect = 'none';
        await disk.makeEmpty();
      }),
    );
  },
  async sparsify(c) {
    await mutating(c, 'sparsify', async (file) => {
      const storage = await FileStorage.open(file, { readOnly: false });
      try {
        await sparsifyQcow2(storage, { resolver: fileResolver });
      } finally {
        await storage.close();
      }
    });
  },
  async compact(c) {
    await mutating(c, 'compact', async (file) => {
      const storage = await FileStorage.open(file, { readOnly: false });
      try {
        await compactQcow2(storage);
      } finally {
        await storage.close();
      }
    });
  },
};

// ---- the command line ----------------------------------------------------------

/** Runs a bin under /usr/bin/time with a heap bound; judges exit status, stderr and memory. */
function cli(op, bin, args, cwd, allowed) {
  process.send?.({ op });
  const rssFile = join(cwd, `${op}.rss`);
  // timeout(1) kills the bin itself (status 137) when it runs too long; a bin killed by a signal of its own ends with 128 + signal.
  const r = run('/usr/bin/time', ['-f', '%M', '-o', rssFile, 'timeout', '-s', 'KILL', String(CLI_TIMEOUT / 1000), process.execPath, '--max-old-space-size=256', bin, ...args], cwd, CLI_TIMEOUT + 5000);
  const where = `${basename(bin)} ${args.join(' ')}`;
  if (r.signal || r.status === 137 || r.status === 124) {
    finding('hang', op, `${where}: killed after the time limit (${CLI_TIMEOUT} ms)`);
    return r;
  }
  if (r.status > 128) {
    finding('crash', op, `${where}: exit ${r.status}: ${r.stderr.slice(0, 1500)}`);
    return r;
  }
  const rss = Number(existsSync(rssFile) ? readFileSync(rssFile, 'utf8').trim().split('\n').pop() : 0);
  if (rss > RSS_LIMIT_KIB) finding('memory', op, `${where}: peak RSS ${Math.round(rss / 1024)} MiB`);
  // /usr/bin/time prints "Command exited with non-zero status N" into its -o file, not stderr.
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '' && !/^\r?\[[#-]+\]/.test(l));
  if (/internal error|^\s+at .+[:(]/m.test(r.stderr)) finding('cli-stack', op, `${where}: exit ${r.status}: ${r.stderr.slice(0, 1500)}`);
  if (!allowed.includes(r.status)) finding('cli-exit', op, `${where}: exit ${r.status}: ${r.stderr.slice(0, 800)}`);
  if (r.status !== 0 && lines.length !== 1 && !(op.startsWith('cli-check') && r.status !== 1) && !(op === 'cli-compare' && r.status === 1)) finding('cli-stderr', op, `${where}: exit ${r.status} with ${lines.length} stderr lines: ${r.stderr.slice(0, 800)}`);
  if (r.status !== 0 && lines.length && !/: ERR_IMG_[A-Z_]+: /.test(lines[0]) && !(op.startsWith('cli-check') && r.status !== 1) && !(op === 'cli-compare' && r.status === 1)) finding('cli-message', op, `${where}: exit ${r.status}: ${lines[0].slice(0, 400)}`);
  count(`${op} exit ${r.status}`);
  return r;
}

const CLI = {
  'cli-info'(c) {
    cli('cli-info', IMG_BIN, ['info', '--output=json', 'img.qcow2'], c.dir, [0, 1]);
    cli('cli-info-human', IMG_BIN, ['info', '--backing-chain', 'img.qcow2'], c.dir, [0, 1]);
  },
  'cli-map'(c) {
    cli('cli-map', IMG_BIN, ['map', '--output=json', 'img.qcow2'], c.dir, [0, 1]);
  },
  'cli-check'(c) {
    cli('cli-check', IMG_BIN, ['check', 'img.qcow2'], c.dir, [0, 1, 2, 3, 63]);
  },
  'cli-check-r'(c, r) {
    const mode = r() < 0.5 ? 'leaks' : 'all';
    const { dir, file } = freshCopy(c, `cli-check-r-${mode}`);
    const res = cli('cli-check-r', IMG_BIN, ['check', '-r', mode, 'img.qcow2'], dir, [0, 1, 2, 3, 63]);
    const ok = res.status === 0 || (mode === 'leaks' && res.status === 2);
    judgeAfter(c, `cli-check-r ${mode}`, file, dir, ok, { patches: [], expect: 'same', repair: mode, repairClean: res.status === 0 });
  },
  'cli-convert'(c, r) {
    const target = r() < 0.5 ? 'raw' : 'qcow2';
    const out = join(c.dir, `out-${target}.raw`);
    const res = cli('cli-convert', IMG_BIN, ['convert', '-f', 'qcow2', '-O', target, 'img.qcow2', out], c.dir, [0, 1]);
    if (res.status !== 0) return;
    if (target === 'qcow2') {
      const q = qcheck(out, c.dir);
      if (q.status !== 0) finding('convert-output', 'cli-convert', `qemu-img check of our qcow2 output: ${q.text}`);
    }
    if (c.raw) {
      const got = target === 'raw' ? out : qraw(out, c.dir, join(c.dir, 'out.raw'));
      if (got) {
        pendingChecks.push(
          firstDifference(rawReader(got), c.raw, statSync(c.raw).size).then((bad) => {
            if (bad >= 0) finding('read-differs', 'cli-convert', `img convert -O ${target} differs from qemu-img convert at guest byte ${bad} (mutation: ${c.what.join('; ')})`);
          }),
        );
      }
    }
  },
  'img-convert'(c) {
    cli('img-convert', IMG_CONVERT_BIN, ['qcow2', 'vhd', 'img.qcow2', join(c.dir, 'out-vhd.raw')], c.dir, [0, 1]);
  },
  'cli-compare'(c) {
    // As qemu-img compare (a0dd6bf): 2 an image did not open, 3 its block status failed, 4 a read failed.
    cli('cli-compare', IMG_BIN, ['compare', '-f', 'qcow2', '-F', 'qcow2', 'img.qcow2', 'seed.qcow2'], c.dir, [0, 1, 2, 3, 4]);
  },
  'cli-snapshot'(c, r) {
    const { dir, file } = freshCopy(c, 'cli-snapshot');
    cli('cli-snapshot-l', IMG_BIN, ['snapshot', '-l', 'img.qcow2'], dir, [0, 1]);
    const act = r() < 0.5 ? ['-c', 'fz'] : r() < 0.5 ? ['-d', '1'] : ['-a', '1'];
    const res = cli('cli-snapshot', IMG_BIN, ['snapshot', ...act, 'img.qcow2'], dir, [0, 1]);
    judgeAfter(c, `cli-snapshot ${act[0]}`, file, dir, res.status === 0, { patches: [], expect: act[0] === '-a' ? 'none' : 'same' });
  },
  'cli-amend'(c, r) {
    const { dir, file } = freshCopy(c, 'cli-amend');
    const o = r() < 0.5 ? 'compat=0.10' : r() < 0.5 ? 'compat=1.1' : 'lazy_refcounts=on';
    const res = cli('cli-amend', IMG_BIN, ['amend', '-f', 'qcow2', '-o', o, 'img.qcow2'], dir, [0, 1]);
    judgeAfter(c, `cli-amend ${o}`, file, dir, res.status === 0, { patches: [], expect: 'same' });
  },
  'cli-commit'(c) {
    const { dir, file } = freshCopy(c, 'cli-commit');
    const res = cli('cli-commit', IMG_BIN, ['commit', 'img.qcow2'], dir, [0, 1]);
    judgeAfter(c, 'cli-commit', file, dir, res.status === 0, { patches: [], expect: 'same' });
  },
  'cli-rebase'(c, r) {
    const { dir, file } = freshCopy(c, 'cli-rebase');
    const args = r() < 0.5 ? ['rebase', '-u', '-b', '', 'img.qcow2'] : ['rebase', '-b', '', 'img.qcow2'];
    const res = cli('cli-rebase', IMG_BIN, args, dir, [0, 1]);
    // A safe rebase onto nothing keeps the guest content; an unsafe one need not.
    judgeAfter(c, `cli-rebase ${args[1]}`, file, dir, res.status === 0, { patches: [], expect: args[1] === '-u' ? 'none' : 'same' });
  },
  'cli-bitmap'(c) {
    const { dir, file } = freshCopy(c, 'cli-bitmap');
    const res = cli('cli-bitmap', IMG_BIN, ['bitmap', '--add', 'img.qcow2', 'fz'], dir, [0, 1]);
    judgeAfter(c, 'cli-bitmap', file, dir, res.status === 0, { patches: [], expect: 'same' });
  },
  'cli-resize'(c) {
    const { dir, file } = freshCopy(c, 'cli-resize');
    const res = cli('cli-resize', IMG_BIN, ['resize', '-f', 'qcow2', 'img.qcow2', '+1M'], dir, [0, 1]);
    judgeAfter(c, 'cli-resize', file, dir, res.status === 0, { patches: [], expect: 'same', length: Math.min(headerSize(file), headerSize(c.image)) });
  },
};

export const MUTATING_OPS = Object.keys(MUTATING);
export const CLI_OPS = Object.keys(CLI);

async function runCase(c) {
  findings = [];
  errorsSeen = [];
  pendingChecks = [];
  for (const k of Object.keys(stats)) delete stats[k];
  c.image = join(c.dir, 'img.qcow2');
  process.send?.({ op: 'baseline:judge' });
  c.baseline = qcheck(c.image, c.dir);
  count(`qemu check ${c.baseline.status}`);
  if (c.baseline.timedOut) {
    // qemu-img check was killed at its time limit (seed 1112 case 60: a backing file naming the image itself, which
    // qemu-img 7.2 checks and converts for minutes): qemu judges nothing of this image, so only the read-only entry
    // points run (a qemu-img convert and a judge after each operation took 10 s each, past the step's limit).
    await readOnly(c);
    await Promise.all(pendingChecks);
    return { findings, stats: { ...stats }, baseline: c.baseline.text, errors: errorsSeen };
  }
  c.raw = qraw(c.image, c.dir, join(c.dir, 'before.raw'));
  const r = seededRandom(c.opSeed);
  await readOnly(c);
  for (const op of c.mutating) await MUTATING[op](c, r);
  for (const op of c.cli) await CLI[op](c, r);
  await Promise.all(pendingChecks);
  return { findings, stats: { ...stats }, baseline: c.baseline.text, errors: errorsSeen };
}

if (process.send) {
  process.on('message', (msg) => {
    runCase(msg)
      .then((result) => process.send({ done: result }))
      .catch((e) => process.send({ done: { findings: [...findings, { kind: 'harness', op: 'case', detail: String(e?.stack ?? e) }], stats } }));
  });
  process.send({ ready: true });
}
