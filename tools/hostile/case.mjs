// The child of the hostile-input campaign: reads one case per stdin line
// (JSON), drives every API entry point over it, and answers one JSON line
// per case: the failures (anything but an ImageError, an untrusted open
// that asked for a file, a write that made the image worse) and maxRSS.
// The parent enforces the time limit and restarts it after a crash.
import { copyFileSync, cpSync, createReadStream, readFileSync, rmSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { ImageError } from '../../packages/block/dist/index.js';
import { FileStorage, fileResolver } from '../../packages/block/dist/node/index.js';
import { openVhd, checkVhd, compactVhd, readVhdStream, sparsifyVhd } from '../../packages/vhd/dist/index.js';
import { openVmdk, checkVmdk, openOva, readVmdkStream, readOvaStream } from '../../packages/vmdk/dist/node/root.js';
import { convertFile, openImageFile } from '../../packages/convert/dist/node.js';
import { firstDifference } from '../../packages/convert/dist/cli/commands/compare.js';
import { rng } from './lib.mjs';

const READ_CAP = 8 << 20;

/** Runs `fn`; an ImageError is an answer, anything else a failure. */
async function step(failures, what, fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    if (ImageError.isInstance(e)) {
      if (typeof e.code !== 'string' || !e.code.startsWith('ERR_IMG_')) failures.push(`${what}: ImageError without a stable code: ${e.code}`);
      else if (/\n/.test(e.message.trim())) failures.push(`${what}: ImageError message of several lines: ${JSON.stringify(e.message.slice(0, 300))}`);
      return { ok: false, code: e.code, message: e.message };
    }
    failures.push(
      `${what}: ${e?.constructor?.name ?? typeof e} escaped: ${String(e?.message ?? e).slice(0, 300)}\n${String(e?.stack ?? '')
        .split('\n')
        .slice(1, 6)
        .join('\n')}`,
    );
    return { ok: false };
  }
}

/** Reads, maps and describes an open disk. */
async function exercise(failures, what, disk, r) {
  let dataBytes;
  await step(failures, `${what} extents`, async () => {
    let n = 0;
    let end = 0;
    let data = 0;
    for await (const e of disk.extents()) {
      if (e.offset !== end) failures.push(`${what} extents: gap or overlap at ${e.offset} (expected ${end})`);
      end = e.offset + e.length;
      if (e.kind === 'data') data += e.length;
      if (++n > 2_000_000) throw new Error('more than 2M extents');
    }
    if (end !== disk.size && n > 0) failures.push(`${what} extents: cover ends at ${end}, size ${disk.size}`);
    dataBytes = data;
  });
  await step(failures, `${what} read head`, () => disk.read(0, Math.min(disk.size, READ_CAP)));
  for (let i = 0; i < 3 && disk.size > 0; i++) {
    const len = 1 + r.int(Math.min(disk.size, 300_000));
    const off = r.int(Math.max(1, disk.size - len + 1));
    await step(failures, `${what} read ${off}+${len}`, () => disk.read(off, len));
  }
  await step(failures, `${what} info`, async () => disk.info?.());
  return dataBytes;
}

async function* chunks(path, r) {
  const size = statSync(path).size;
  const hwm = 1 + r.int(70_000);
  if (size > 64 << 20) return;
  for await (const c of createReadStream(path, { highWaterMark: hwm })) yield new Uint8Array(c.buffer, c.byteOffset, c.byteLength);
}

/** The format driver's own open, untrusted, with a resolver that must never be asked. */
async function directOpen(kind, storage, resolver) {
  const options = { untrusted: true, resolver, readOnly: true };
  if (kind === 'vhd') return openVhd(storage, options);
  if (kind === 'ova') return openOva(storage, options);
  return openVmdk(storage, options);
}

/** Runs case `c`; answers its failures and the bytes of data its disk holds as a trusted open sees them (if it opens). */
async function runCase(c) {
  const failures = [];
  let dataBytes;
  const r = rng(c.seed);
  const main = join(c.dir, c.main);
  const asked = [];
  const spy = async (request) => {
    asked.push(request.name);
    throw new Error(`untrusted open asked the resolver for "${request.name}"`);
  };

  // 1. the format's own open, untrusted (no probing: format confusion included)
  const s1 = await step(failures, 'FileStorage.open', () => FileStorage.open(main, { readOnly: true }));
  if (s1.ok) {
    const d = await step(failures, `open${c.kind} untrusted`, () => directOpen(c.kind, s1.value, spy));
    if (d.ok) {
      await exercise(failures, `open${c.kind} untrusted`, d.value, r);
      await step(failures, 'close', () => d.value.close());
    } else await s1.value.close().catch(() => undefined);
  }
  if (asked.length) failures.push(`UNTRUSTED: the resolver was asked for ${JSON.stringify(asked)}`);

  // 2. openImageFile: probed, untrusted (inspect first) and trusted (files beside it)
  for (const untrusted of [true, false]) {
    const d = await step(failures, `openImageFile untrusted=${untrusted}`, () => openImageFile(main, { untrusted, resolver: fileResolver }));
    if (d.ok) {
      const data = await exercise(failures, `openImageFile untrusted=${untrusted}`, d.value, r);
      if (!untrusted) dataBytes = data;
      await step(failures, 'close', () => d.value.close());
    }
  }

  // 3. check
  await step(failures, 'check', async () => {
    const s = await FileStorage.open(main, { readOnly: true });
    try {
      if (c.kind === 'vhd') return await checkVhd(s);
      if (c.kind === 'vmdk') return await checkVmdk(s, { untrusted: true });
      return undefined;
    } finally {
      await s.close();
    }
  });

  // 4. streams (pipe readers)
  if (c.stream) {
    await step(failures, `read ${c.kind} stream`, async () => {
      const input = chunks(main, r);
      const src = c.kind === 'vhd' ? await readVhdStream(input) : c.kind === 'ova' ? await readOvaStream(input) : await readVmdkStream(input);
      let bytes = 0;
      for await (const p of src.pieces) {
        bytes += p.data.length;
        if (p.offset < 0 || (src.size >= 0 && p.offset + p.data.length > src.size)) failures.push(`stream piece ${p.offset}+${p.data.length} outside size ${src.size}`);
        if (bytes > 256 << 20) break;
      }
    });
  }

  // 5. convert (untrusted, to a random format), then compare with the original's raw
  const dst = r.pick(['raw', 'qcow2', 'vhd', 'vmdk']);
  const out = join(c.outDir, `out.${dst}`);
  const conv = await step(failures, `convertFile -> ${dst}`, () => convertFile({ srcFormat: c.format, dstFormat: dst, input: main, output: out, untrusted: true }));
  if (conv.ok && c.reference) {
    await step(failures, 'compare', async () => {
      const a = await openImageFile(out, { format: dst });
      const b = await openImageFile(c.reference, { format: 'raw' });
      try {
        return await firstDifference(a, b, false);
      } finally {
        await a.close();
        await b.close();
      }
    });
  }
  rmSync(out, { force: true });

  // 6. writes into a damaged writable image: never worse than before
  if (c.writable) await writeCase(failures, c, r);
  // 7. in-place maintenance of a damaged VHD (compact, sparsify, check -r all, resize): the guest bytes stay as they were
  if (c.writable && c.kind === 'vhd') await maintainCase(failures, c, r);
  // 8. a chain: writes into the child with its parent open (partial grains and blocks read the parent)
  if (c.parent) await chainCase(failures, c, r);
  return { failures, dataBytes };
}

/**
 * Writes into the child of a chain opened with its parent (trusted, the
 * files beside it): the parent's file must not change at all, and where
 * the chain read whole before, it reads whole after, as the writes say.
 */
async function chainCase(failures, c, r) {
  const wdir = join(c.outDir, 'chain');
  cpSync(c.dir, wdir, { recursive: true });
  const w = join(wdir, c.main);
  const parentPath = join(wdir, c.parent);
  const parentBefore = readFileSync(parentPath);
  const open = (readOnly) => openImageFile(w, { format: c.format, readOnly, resolver: fileResolver });
  const before = await step(failures, 'chain: snapshot before write', () => chainSnapshot(() => open(true)));
  const model = before.ok && before.value?.bytes ? before.value.bytes.slice() : undefined;
  // Small and unaligned writes (half of them within 4 KiB): a partial grain or sector run reads the rest from the parent.
  const written = await writeThree(failures, r, 'chain: ', () => open(false), model, { zeroChance: 0.25, small: true });
  if (!readFileSync(parentPath).equals(parentBefore)) failures.push(`WORSE: a write into the child ${c.main} changed its parent ${c.parent}`);
  const after = await step(failures, 'chain: snapshot after write', () => chainSnapshot(() => open(true)));
  if (model) checkModel(failures, after, model, written, 'the chain');
  rmSync(wdir, { recursive: true, force: true });
}

/**
 * Opens a disk writable with `openWritable`, makes three writes or zero
 * writes of random places (each also made in `model`, the expected bytes),
 * then flushes and closes it. Answers whether it opened and every write and
 * the flush succeeded (only then must the disk read as the model). The
 * draws are made in a fixed order, so a seed's cases stay the same.
 */
async function writeThree(failures, r, label, openWritable, model, { zeroChance, small }) {
  const d = await step(failures, `${label}open writable`, openWritable);
  if (!d.ok) return false;
  const disk = d.value;
  let allWritten = true;
  for (let i = 0; i < 3; i++) {
    const len = 1 + r.int(Math.min(Math.max(disk.size, 1), small && r.chance(0.5) ? 4096 : 200_000));
    const off = r.int(Math.max(1, disk.size - len + 1));
    if (off + len > disk.size) break;
    const zero = r.chance(zeroChance);
    const data = new Uint8Array(len).fill(1 + r.int(255));
    const res = await step(failures, `${label}${zero ? 'writeZeroes' : 'write'} ${off}+${len}`, () => (zero ? disk.writeZeroes(off, len) : disk.write(off, data)));
    if (res.ok && model) model.set(zero ? new Uint8Array(len) : data, off);
    if (!res.ok) allWritten = false;
  }
  const f = await step(failures, `${label}flush`, () => disk.flush());
  if (!f.ok) allWritten = false;
  await step(failures, `${label}close writable`, () => disk.close());
  return allWritten;
}

/** After writes to something that read whole before (`model`: what it must read now): a failure where it no longer opens or reads otherwise. */
function checkModel(failures, after, model, written, what) {
  if (!after.ok || !after.value) {
    failures.push(`WORSE: ${what} read whole before the writes and no longer opens or reads after them`);
    return;
  }
  if (!written || !after.value.bytes) return;
  const a = after.value.bytes;
  let diff = -1;
  for (let i = 0; i < a.length; i++)
    if (a[i] !== model[i]) {
      diff = i;
      break;
    }
  if (diff >= 0 || a.length !== model.length) failures.push(`WORSE: after the writes ${what} reads differently from the model at byte ${diff}`);
}

/** Reads a whole disk or chain that `open` opens (small disks only), or undefined when it does not open or read. */
async function chainSnapshot(open) {
  let disk;
  try {
    disk = await open();
    if (disk.size > 64 << 20) return { size: disk.size };
    return { size: disk.size, bytes: await disk.read(0, disk.size) };
  } catch (e) {
    if (!ImageError.isInstance(e)) throw e;
    return undefined;
  } finally {
    await disk?.close().catch(() => undefined);
  }
}

async function maintainCase(failures, c, r) {
  const w = join(c.outDir, 'm.vhd');
  copyFileSync(join(c.dir, c.main), w);
  const before = await step(failures, 'snapshot before maintenance', () => snapshot(w, 'vhd'));
  const op = r.pick(['compact', 'sparsify', 'repair', 'resize']);
  const res = await step(failures, op, async () => {
    const s = await FileStorage.open(w, { readOnly: false });
    try {
      if (op === 'compact') return await compactVhd(s);
      if (op === 'sparsify') return await sparsifyVhd(s);
      if (op === 'repair') return await checkVhd(s, { repair: 'all' });
      const d = await openVhd(s, { readOnly: false, noBacking: true });
      try {
        await d.resize(d.size + 512 * (1 + r.int(8192)));
      } finally {
        await d.close();
      }
      return undefined;
    } finally {
      await s.close().catch(() => undefined);
    }
  });
  const after = await step(failures, `snapshot after ${op}`, () => snapshot(w, 'vhd'));
  if (before.ok && before.value?.bytes) {
    if (!after.ok || !after.value?.bytes) failures.push(`WORSE: the image read whole before ${op} (${res.ok ? 'which succeeded' : `which failed: ${res.code}`}) and not after it`);
    else {
      const a = after.value.bytes;
      const b = before.value.bytes;
      let diff = -1;
      for (let i = 0; i < b.length; i++)
        if (a[i] !== b[i]) {
          diff = i;
          break;
        }
      // resize grows: the old bytes must stay and the new ones read as zeros
      const grownZero = a.length >= b.length && a.subarray(b.length).every((x) => x === 0);
      if (diff >= 0 || !grownZero || (op !== 'resize' && a.length !== b.length)) failures.push(`WORSE: after ${op} (${res.ok ? 'ok' : res.code}) the disk reads differently at byte ${diff} (size ${b.length} -> ${a.length})`);
    }
  }
  rmSync(w, { force: true });
}

/** Reads the whole disk (small seeds only), or undefined when it cannot be read. */
function snapshot(path, format) {
  return chainSnapshot(() => openImageFile(path, { format, noBacking: true }));
}

async function writeCase(failures, c, r) {
  // The whole directory: a descriptor's extent files are written too.
  const wdir = join(c.outDir, 'w');
  cpSync(c.dir, wdir, { recursive: true });
  const w = join(wdir, c.main);
  const before = await step(failures, 'snapshot before write', () => snapshot(w, c.format));
  const model = before.ok && before.value?.bytes ? before.value.bytes.slice() : undefined;
  const written = await writeThree(failures, r, '', () => openImageFile(w, { format: c.format, readOnly: false, noBacking: true }), model, { zeroChance: 0.3, small: false });
  const after = await step(failures, 'snapshot after write', () => snapshot(w, c.format));
  if (before.ok && before.value?.bytes) checkModel(failures, after, model, written, 'the image');
  rmSync(wdir, { recursive: true, force: true });
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  process.stdout.write(JSON.stringify({ id: c.id, phase: 'start' }) + '\n');
  const rssBefore = process.resourceUsage().maxRSS;
  let failures;
  let dataBytes;
  try {
    ({ failures, dataBytes } = await runCase(c));
  } catch (e) {
    failures = [`harness: ${e?.stack ?? e}`];
  }
  process.stdout.write(JSON.stringify({ id: c.id, phase: 'done', failures, dataBytes, maxRSS: process.resourceUsage().maxRSS, rssBefore }) + '\n');
}
