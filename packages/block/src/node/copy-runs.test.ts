import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statfsSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { pageCacheBytes as cached, shmDir, tempDir } from '@img/testkit';
import { seededRandom } from '@img/testkit';
import { ImageError } from '../errors.js';
import { MemoryStorage } from '../memory-storage.js';
import { createRaw, openRaw } from '../raw.js';
import { sparseCopy } from '../sparse-copy.js';
import { findZeroRuns } from '../zero.js';
import { FileStorage } from './file-storage.js';
import { seekAddon } from './seek.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const native = seekAddon()?.copyRuns !== undefined;

/** Bytes with data, short and long zero stretches, at odd places: what zero detection has to split. */
function patterned(size: number, seed: number): Uint8Array {
  const rnd = seededRandom(seed);
  const out = new Uint8Array(size);
  let pos = 0;
  while (pos < size) {
    const len = Math.min(size - pos, 1 + Math.floor(rnd() * 20 * KiB));
    if (rnd() < 0.5) for (let i = pos; i < pos + len; i++) out[i] = 1 + Math.floor(rnd() * 255);
    pos += len;
  }
  return out;
}

/**
 * What the native loop must write for one run, computed with the JS zero
 * detector: chunks end at multiples of `chunk` in destination offsets, and
 * each chunk is split by findZeroRuns.
 */
function expectedWrites(src: Uint8Array, s: number, d: number, n: number, chunk: number, minZeroRun: number, granule = 512): { written: number; image: Map<number, Uint8Array> } {
  const image = new Map<number, Uint8Array>();
  let written = 0;
  for (let pos = 0; pos < n;) {
    const next = Math.min(n, Math.floor((d + pos) / chunk + 1) * chunk - d);
    const bytes = new Uint8Array(next - pos);
    bytes.set(src.subarray(Math.min(src.length, s + pos), Math.min(src.length, s + next)));
    for (const r of findZeroRuns(bytes, minZeroRun, granule, d + pos)) {
      if (r.zero) continue;
      image.set(d + pos + r.start, bytes.subarray(r.start, r.end));
      written += r.end - r.start;
    }
    pos = next;
  }
  return { written, image };
}

describe.skipIf(!native)('native batch copy (copy.c)', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());
  let serial = 0;
  const file = (bytes?: Uint8Array) => {
    const path = join(tmp.path, `f${serial++}.bin`);
    writeFileSync(path, bytes ?? new Uint8Array(0));
    return path;
  };

  it('copies unaligned runs, writing exactly the data runs findZeroRuns finds, chunk by chunk', async () => {
    const data = patterned(3 * MiB + 777, 1);
    const srcPath = file(data);
    const dstPath = file();
    const src = await FileStorage.open(srcPath, { lock: false });
    const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
    expect(src.canCopyRunsTo?.(dst)).toBe(true);
    // Odd offsets and lengths; a run that crosses chunk boundaries several times; destination offsets unlike the source's.
    const runs = [
      [1, 5 * MiB + 3, 100_001],
      [200_000, 1000, 1 * MiB + 12345],
      [2 * MiB + 511, 7 * MiB - 513, 600_000],
      [0, 9 * MiB, 64 * KiB],
    ];
    const chunk = 256 * KiB;
    const res = await src.copyRunsTo(dst, Float64Array.from(runs.flat()), { minZeroRun: 4096, chunkSize: chunk });
    const total = runs.reduce((n, r) => n + r[2]!, 0);
    const out = new Uint8Array(readFileSync(dstPath));
    let written = 0;
    const want = new Uint8Array(out.length);
    for (const [s, d, n] of runs) {
      const e = expectedWrites(data, s!, d!, n!, chunk, 4096);
      written += e.written;
      for (const [at, bytes] of e.image) want.set(bytes, at);
    }
    expect(res).toEqual({ bytesRead: total, bytesWritten: written, bytesSkipped: total - written });
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThan(total);
    expect(Buffer.compare(out, want)).toBe(0);
    // The file ends at the end of the last data written, not of the last run: zero runs were not written.
    await src.close();
    await dst.close();
  });

  it('zeroTarget: over a target full of old data, the zero runs (and the source holes inside the runs) are zeroed, through a mapping or a buffer', async () => {
    const data = patterned(3 * MiB + 777, 5);
    const srcPath = file(data);
    // A hole of 1 MiB in the source, inside a run: SEEK_DATA finds it, and it must be zeroed in the target too.
    const hole = new Uint8Array(readFileSync(srcPath));
    hole.fill(0, MiB, 2 * MiB);
    const holePath = file();
    {
      const fd = openSync(holePath, 'w');
      writeSync(fd, hole, 0, MiB, 0);
      writeSync(fd, hole, 2 * MiB, hole.length - 2 * MiB, 2 * MiB);
      closeSync(fd);
    }
    const runs = [
      [1, 5 * MiB + 3, 100_001],
      [200_000, 1000, 2 * MiB + 12345],
      [2 * MiB + 511, 7 * MiB - 513, 600_000],
    ];
    const total = runs.reduce((n, r) => n + r[2]!, 0);
    for (const source of [srcPath, holePath]) {
      const bytes = new Uint8Array(readFileSync(source));
      for (const copyRange of [true, false]) {
        const old = new Uint8Array(9 * MiB).fill(0xaa);
        const dstPath = file(old);
        const src = await FileStorage.open(source, { lock: false });
        const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
        const res = await src.copyRunsTo(dst, Float64Array.from(runs.flat()), { minZeroRun: 4096, chunkSize: 256 * KiB, copyRange, zeroTarget: true });
        await src.close();
        await dst.close();
        const out = new Uint8Array(readFileSync(dstPath));
        const want = old.slice();
        for (const [s, d, n] of runs) want.set(bytes.subarray(s!, s! + n!), d!);
        expect(Buffer.compare(out, want), `${source === holePath ? 'with a hole' : 'no hole'}, copyRange ${copyRange}`).toBe(0);
        expect(res.bytesRead).toBe(total);
        expect(res.bytesWritten + res.bytesSkipped).toBe(total);
        expect(res.bytesSkipped).toBeGreaterThan(0);
      }
    }
    // Without zeroTarget the same copy leaves the old bytes where the zero runs are: the check above can fail.
    const dstPath = file(new Uint8Array(9 * MiB).fill(0xaa));
    const src = await FileStorage.open(srcPath, { lock: false });
    const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
    await src.copyRunsTo(dst, Float64Array.from(runs.flat()), { minZeroRun: 4096, chunkSize: 256 * KiB });
    await src.close();
    await dst.close();
    const out = new Uint8Array(readFileSync(dstPath));
    const want = new Uint8Array(9 * MiB).fill(0xaa);
    for (const [s, d, n] of runs) want.set(data.subarray(s!, s! + n!), d!);
    expect(Buffer.compare(out, want)).not.toBe(0);
  });

  it('writes the same bytes whether chunks are scanned through a mapping (copyRange) or read into a buffer', async () => {
    const data = patterned(2 * MiB + 4097, 3);
    const srcPath = file(data);
    const src = await FileStorage.open(srcPath, { lock: false });
    const runs = Float64Array.of(3, 1 * MiB + 5, 900_001, 1 * MiB, 0, 1 * MiB + 4097, 0, 4 * MiB, 12_345);
    const outs: Uint8Array[] = [];
    const results = [];
    for (const copyRange of [true, false]) {
      const dstPath = file();
      const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
      results.push(await src.copyRunsTo(dst, runs, { minZeroRun: 4096, chunkSize: 256 * KiB, copyRange }));
      await dst.close();
      outs.push(new Uint8Array(readFileSync(dstPath)));
    }
    await src.close();
    expect(results[0]).toEqual(results[1]);
    expect(results[0]!.bytesWritten).toBeGreaterThan(0);
    expect(Buffer.compare(outs[0]!, outs[1]!)).toBe(0);
  });

  it('copies many batches into two destinations at once, on several pool threads taking turns to write each file, byte for byte', async () => {
    const data = patterned(4 * MiB, 11);
    const src = await FileStorage.open(file(data), { lock: false });
    const paths = [file(), file()];
    const dsts = await Promise.all(paths.map((p) => FileStorage.open(p, { readOnly: false, lock: false })));
    // 64 KiB pieces of the source, each destination getting them in its own order (the second one reversed).
    const piece = 64 * KiB;
    const count = data.length / piece;
    const jobs: Promise<unknown>[] = [];
    for (const [k, dst] of dsts.entries()) {
      for (const copyRange of [true, false]) {
        for (let b = 0; b < count / 2; b += 4) {
          const runs: number[] = [];
          for (let i = b; i < b + 4; i++) {
            const at = (copyRange ? 0 : count / 2) + (k ? count / 2 - 1 - i : i);
            runs.push(at * piece, at * piece, piece);
          }
          jobs.push(src.copyRunsTo(dst, Float64Array.from(runs), { minZeroRun: 4096, chunkSize: 128 * KiB, copyRange }));
        }
      }
    }
    await Promise.all(jobs);
    await Promise.all(dsts.map((d) => d.close()));
    await src.close();
    for (const p of paths) {
      const out = new Uint8Array(readFileSync(p));
      const want = new Uint8Array(data.length);
      for (let i = 0; i < count; i++) for (const [at, bytes] of expectedWrites(data, i * piece, i * piece, piece, 128 * KiB, 4096).image) want.set(bytes, at);
      expect(Buffer.compare(Buffer.concat([out, new Uint8Array(data.length - out.length)]), want)).toBe(0);
    }
  });

  it('survives a source truncated while its chunks are scanned through a mapping (SIGBUS is caught)', () => {
    // In a child process: without the guard, a page past the new end of the file kills the process with SIGBUS.
    const script = `
      import { FileStorage } from './dist/node/index.js';
      import { mkdtempSync, rmSync, writeFileSync, openSync, ftruncateSync, closeSync } from 'node:fs';
      import { join } from 'node:path';
      import { tmpdir } from 'node:os';
      const dir = mkdtempSync(join(tmpdir(), 'img-sigbus-'));
      let done = 0;
      try {
        for (let round = 0; round < 12; round++) {
          const bytes = new Uint8Array(16 << 20).fill(round + 1);
          const path = join(dir, 'src' + round);
          writeFileSync(path, bytes);
          const src = await FileStorage.open(path, { lock: false });
          const dst = await FileStorage.create(join(dir, 'dst' + round), { lock: false });
          const runs = [];
          for (let at = 0; at < bytes.length; at += 1 << 20) runs.push(at, at, 1 << 20);
          const copy = src.copyRunsTo(dst, Float64Array.from(runs), { minZeroRun: 4096, chunkSize: 1 << 20 }).then(() => 'ok', (e) => e.code ?? String(e));
          await new Promise((r) => setTimeout(r, round % 4));
          const fd = openSync(path, 'r+');
          ftruncateSync(fd, 4096 * (round % 3));
          closeSync(fd);
          await copy;
          done++;
          await src.close();
          await dst.close();
        }
      } finally { rmSync(dir, { recursive: true, force: true }); }
      console.log(JSON.stringify({ done }));
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: new URL('../..', import.meta.url).pathname, encoding: 'utf8' });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ done: 12 });
  });

  it.each(['1', '0'])('copies byte for byte with IMG_COPY_SLOTS=%s, many batches in flight, from a source out of the page cache', (slots) => {
    // In a child process: the number of copy slots is read once per process. One slot and eight batches make
    // seven wait for it; a source dropped from the page cache makes reads give the slot back while they wait.
    const script = `
      import { FileStorage } from './dist/node/index.js';
      import { execFileSync } from 'node:child_process';
      import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
      import { join } from 'node:path';
      import { tmpdir } from 'node:os';
      const dir = mkdtempSync(join(tmpdir(), 'img-slots-'));
      try {
        const bytes = new Uint8Array(24 << 20);
        for (let i = 0; i < bytes.length; i += 4096) bytes[i + (i % 4093)] = (i / 4096) % 255 + 1;
        bytes.fill(0, 5 << 20, 9 << 20);
        const path = join(dir, 'src');
        writeFileSync(path, bytes);
        // Written back first: the kernel drops only clean pages (where the file system keeps a page cache at all).
        const fd = openSync(path, 'r+');
        fsyncSync(fd);
        closeSync(fd);
        try { execFileSync('dd', ['if=' + path, 'iflag=nocache', 'count=0'], { stdio: 'ignore' }); } catch {}
        const src = await FileStorage.open(path, { lock: false });
        const dst = await FileStorage.create(join(dir, 'dst'), { lock: false });
        const batches = [];
        for (let b = 0; b < 8; b++) {
          const runs = [];
          for (let at = b * (3 << 20); at < (b + 1) * (3 << 20); at += 1 << 20) runs.push(at, at, 1 << 20);
          batches.push(src.copyRunsTo(dst, Float64Array.from(runs), { minZeroRun: 4096, chunkSize: 1 << 20 }));
        }
        const done = await Promise.all(batches);
        await dst.truncate(bytes.length);
        await src.close();
        await dst.close();
        const same = Buffer.compare(readFileSync(join(dir, 'dst')), Buffer.from(bytes)) === 0;
        console.log(JSON.stringify({ same, skipped: done.reduce((n, r) => n + r.bytesSkipped, 0) }));
      } finally { rmSync(dir, { recursive: true, force: true }); }
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('../..', import.meta.url).pathname,
      env: { ...process.env, IMG_COPY_SLOTS: slots },
      encoding: 'utf8',
    });
    const got = JSON.parse(out.trim().split('\n').pop()!) as { same: boolean; skipped: number };
    expect(got.same).toBe(true);
    // The 4 MiB of zeros at least (more where zero granules of neighbouring blocks meet).
    expect(got.skipped).toBeGreaterThanOrEqual(4 << 20);
  });

  it('classifies zero runs that straddle chunk and batch boundaries as the JS detector does (readRuns)', async () => {
    // Zero stretches placed across 64 KiB chunk edges, some shorter than minZeroRun.
    const data = new Uint8Array(512 * KiB).fill(7);
    for (const [a, b] of [
      [60 * KiB, 70 * KiB],
      [128 * KiB - 1024, 128 * KiB + 1024],
      [200 * KiB, 200 * KiB + 1536],
      [300 * KiB + 100, 340 * KiB + 100],
    ])
      data.fill(0, a, b);
    const src = await FileStorage.open(file(data), { lock: false });
    const chunk = 64 * KiB;
    // Two batches that split the data in the middle of a zero stretch.
    const cut = 65 * KiB;
    for (const runs of [
      [0, 0, cut],
      [cut, cut, data.length - cut],
    ]) {
      const buffer = new Uint8Array(runs[2]!);
      const res = await src.readRuns!(Float64Array.from(runs), buffer, { minZeroRun: 8192, chunkSize: chunk });
      expect(res.bytesRead).toBe(runs[2]);
      expect(Buffer.compare(buffer, data.subarray(runs[0]!, runs[0]! + runs[2]!))).toBe(0);
      const want: number[] = [];
      const e = expectedWrites(data, runs[0]!, runs[1]!, runs[2]!, chunk, 8192);
      for (const [at, bytes] of [...e.image].sort((x, y) => x[0] - y[0])) {
        const start = at - runs[1]!;
        if (want.length && want[want.length - 1] === start) want[want.length - 1] = start + bytes.length;
        else want.push(start, start + bytes.length);
      }
      expect(res.pieces).toEqual([want]);
    }
    await src.close();
  });

  it.each([
    ['a disk file system', undefined],
    ['tmpfs', '/dev/shm'],
  ])('skips the file holes of a sparse source on %s with the same result as reading them (short holes inside data, holes across chunk edges and EOF), and reads them as zeros when told not to probe (probeHoles: false)', async (_, where) => {
    if (where !== undefined && !existsSync(where)) return;
    const dir = where === undefined ? tmp.path : mkdtempSync(join(where, 'img-holes-'));
    try {
      const path = join(dir, `holes${serial++}.bin`);
      // Data at 4 KiB-aligned places (file systems make holes in whole blocks); everything else is a hole.
      const size = 2 * MiB + 40 * KiB;
      const data = new Uint8Array(size);
      const fd = openSync(path, 'w');
      for (const [a, n] of [
        [0, 8 * KiB],
        [12 * KiB, 4 * KiB], // a 4 KiB hole between data: shorter than minZeroRun, written as zeros
        [60 * KiB, 12 * KiB], // data across the 64 KiB chunk edge
        [200 * KiB, 4 * KiB],
        [1 * MiB, 300 * KiB],
        [2 * MiB, 8 * KiB],
      ] as const) {
        const bytes = patterned(n, a + 1).map((b) => b | 1);
        data.set(bytes, a);
        writeSync(fd, bytes, 0, n, a);
      }
      ftruncateSync(fd, size - 16 * KiB); // the last 16 KiB lie past the end of the file
      closeSync(fd);
      const src = await FileStorage.open(path, { lock: false });
      const chunk = 64 * KiB;
      const runs = [
        [0, 0, 300 * KiB],
        [300 * KiB + 512, 5 * MiB + 512, size - 300 * KiB - 512], // unaligned, runs past EOF
      ];
      for (const [minZeroRun, probeHoles] of [
        [8192, true],
        [4096, true],
        [4096, false],
      ] as const) {
        const dstPath = file();
        const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
        const res = await src.copyRunsTo(dst, Float64Array.from(runs.flat()), { minZeroRun, chunkSize: chunk, probeHoles });
        await dst.close();
        const want = new Uint8Array(8 * MiB);
        let written = 0;
        for (const [s, d, n] of runs) {
          const e = expectedWrites(data, s!, d!, n!, chunk, minZeroRun);
          written += e.written;
          for (const [at, bytes] of e.image) want.set(bytes, at);
        }
        const total = runs.reduce((n, r) => n + r[2]!, 0);
        expect(res).toEqual({ bytesRead: total, bytesWritten: written, bytesSkipped: total - written });
        const out = new Uint8Array(readFileSync(dstPath));
        expect(Buffer.compare(out, want.subarray(0, out.length))).toBe(0);
        expect(want.subarray(out.length).every((b) => b === 0)).toBe(true);

        // readRuns: the same bytes in the buffer (holes as zeros, over old contents) and the same data pieces.
        for (const [s, d, n] of runs) {
          const buffer = new Uint8Array(n!).fill(0xee);
          const got = await src.readRuns!(Float64Array.of(s!, d!, n!), buffer, { minZeroRun, chunkSize: chunk, probeHoles });
          expect(got.bytesRead).toBe(n);
          const logical = new Uint8Array(n!);
          logical.set(data.subarray(s!, Math.min(size, s! + n!)));
          expect(Buffer.compare(buffer, logical)).toBe(0);
          const pieces: number[] = [];
          const e = expectedWrites(data, s!, d!, n!, chunk, minZeroRun);
          for (const [at, bytes] of [...e.image].sort((x, y) => x[0] - y[0])) {
            const start = at - d!;
            if (pieces.length && pieces[pieces.length - 1] === start) pieces[pieces.length - 1] = start + bytes.length;
            else pieces.push(start, start + bytes.length);
          }
          expect(got.pieces).toEqual([pieces]);
        }
      }
      await src.close();
    } finally {
      if (where !== undefined) rmSync(dir, { recursive: true, force: true });
    }
  });

  it('writes the whole pages of data around the page cache into a direct target (O_DIRECT), the same bytes as through it', async () => {
    const data = patterned(6 * MiB + 777, 21);
    const src = await FileStorage.open(file(data), { lock: false });
    // No zeros: each chunk is one data piece, whatever minZeroRun says.
    const solid = await FileStorage.open(file(patterned(6 * MiB + 777, 22).map((b) => b | 1)), { lock: false });
    const cases = [
      // Destinations at page boundaries, as image writers place data (odd sources and lengths): only a piece's
      // unaligned tail passes through the cache (the short run's, and the last page of each run's last chunk).
      { src: solid, runs: Float64Array.of(1, 4 * MiB, 3 * MiB + 100_001, 200_000, 12 * MiB, MiB + 12_345, 0, 16 * MiB, 4 * MiB), maxCached: 64 * KiB },
      // Zero runs split chunks into pieces at 512-byte granules, and a destination off the page grid puts a whole
      // chunk through the cache: only the bytes are compared.
      { src, runs: Float64Array.of(1, 4 * MiB, 3 * MiB + 100_001, 200_000, 12 * MiB, MiB + 12_345, 0, 16 * MiB, 4 * MiB), maxCached: Infinity },
      { src, runs: Float64Array.of(1, 5 * MiB + 3, 100_001, 200_000, 1000, MiB + 12_345, 3 * MiB, 16 * MiB + 512, 4 * MiB), maxCached: Infinity },
    ];
    for (const { src, runs, maxCached } of cases) {
      for (const minZeroRun of [4096, 0]) {
        const outs: Buffer[] = [];
        const results = [];
        for (const direct of [false, true]) {
          const path = file();
          const dst = await FileStorage.open(path, { readOnly: false, lock: false, direct });
          if (!direct) expect(dst.direct).toBe(false);
          results.push(await src.copyRunsTo(dst, runs, { minZeroRun, chunkSize: MiB }));
          const inCache = dst.direct ? cached(path) : undefined;
          if (inCache !== undefined) expect(inCache).toBeLessThanOrEqual(maxCached);
          await dst.close();
          outs.push(readFileSync(path));
        }
        expect(results[1]).toEqual(results[0]);
        expect(Buffer.compare(outs[1]!, outs[0]!)).toBe(0);
      }
    }
    // On ext4 (the usual /tmp) the option takes; a read-only open never has a direct descriptor.
    const probe = await FileStorage.open(file(data), { readOnly: false, lock: false, direct: true });
    if (statfsSync(tmp.path).type === 0xef53) expect(probe.direct).toBe(true);
    await probe.close();
    const ro = await FileStorage.open(file(data), { lock: false, direct: true });
    expect(ro.direct).toBe(false);
    await ro.close();
    await src.close();
    await solid.close();
  });

  it("direct: 'auto' picks the page cache or the disk per piece, in copyRunsTo and in big writes, and writes the same bytes either way; only whole pages go around the cache", async () => {
    const ext4 = statfsSync(tmp.path).type === 0xef53;
    const data = patterned(6 * MiB + 777, 31);
    const src = await FileStorage.open(file(data), { lock: false });
    const solid = await FileStorage.open(file(patterned(6 * MiB + 777, 32).map((b) => b | 1)), { lock: false });
    const cases = [
      // Page-aligned destinations (a qcow2 or raw output), odd sources: all but the unaligned tails around the cache when forced.
      { src: solid, runs: Float64Array.of(1, 4 * MiB, 3 * MiB + 100_001, 200_000, 12 * MiB, MiB + 12_345, 0, 16 * MiB, 4 * MiB), maxCached: 64 * KiB },
      // A VHD's blocks: one 512-byte sector past a page; the chunk is placed in the buffer as on the disk, so its whole pages still go around.
      { src: solid, runs: Float64Array.of(0, 2 * MiB + 512, 2 * MiB, 2 * MiB, 6 * MiB + 1024, 2 * MiB), maxCached: 64 * KiB },
      // Zero runs split the chunks; odd destinations.
      { src, runs: Float64Array.of(1, 5 * MiB + 3, 100_001, 200_000, 1000, MiB + 12_345, 3 * MiB, 16 * MiB + 512, 4 * MiB), maxCached: Infinity },
    ];
    const saved = process.env.IMG_COPY_DIRECT_AUTO;
    try {
      for (const { src, runs, maxCached } of cases) {
        for (const minZeroRun of [4096, 0]) {
          const outs: Buffer[] = [];
          const results = [];
          // Plain, then auto as it measures, then auto made to take each path every time.
          for (const mode of [undefined, '', 'cache', 'direct']) {
            if (mode) process.env.IMG_COPY_DIRECT_AUTO = mode;
            else delete process.env.IMG_COPY_DIRECT_AUTO;
            const path = file();
            const dst = await FileStorage.open(path, { readOnly: false, lock: false, direct: mode === undefined ? false : 'auto' });
            expect(dst.direct).toBe(false);
            if (mode !== undefined && ext4) expect(dst.directAuto).toBe(true);
            results.push(await src.copyRunsTo(dst, runs, { minZeroRun, chunkSize: MiB }));
            const inCache = mode === 'direct' && dst.directAuto ? cached(path) : undefined;
            if (inCache !== undefined) expect(inCache).toBeLessThanOrEqual(maxCached);
            if (mode === 'cache' && dst.directAuto) expect(cached(path) ?? Infinity).toBeGreaterThan(MiB);
            await dst.close();
            outs.push(readFileSync(path));
          }
          for (let i = 1; i < outs.length; i++) {
            expect(results[i]).toEqual(results[0]);
            expect(Buffer.compare(outs[i]!, outs[0]!)).toBe(0);
          }
        }
      }
    } finally {
      if (saved === undefined) delete process.env.IMG_COPY_DIRECT_AUTO;
      else process.env.IMG_COPY_DIRECT_AUTO = saved;
    }
    // The format's own big writes (write(), as an inflated stream or compressed clusters are written) take the same
    // paths: odd positions, a buffer that does not sit in memory as on the disk, one smaller than the threshold.
    {
      const bytes = patterned(3 * MiB + 4321, 33).map((b) => b | 1);
      const writes: Array<[number, Uint8Array]> = [
        [0, bytes.subarray(0, MiB)],
        [2 * MiB + 512, bytes.subarray(100, 100 + MiB + 7000)],
        [5 * MiB + 1, bytes.subarray(1, 600 * KiB)],
        [7 * MiB, bytes.subarray(0, 100 * KiB)],
        [8 * MiB + 4096, bytes.subarray(4096, 3 * MiB)],
      ];
      const outs: Buffer[] = [];
      try {
        for (const mode of [undefined, '', 'cache', 'direct']) {
          if (mode) process.env.IMG_COPY_DIRECT_AUTO = mode;
          else delete process.env.IMG_COPY_DIRECT_AUTO;
          const path = file();
          const dst = await FileStorage.open(path, { readOnly: false, lock: false, direct: mode === undefined ? false : 'auto' });
          await Promise.all(writes.map(([at, b]) => dst.write(at, b)));
          // All but the pages the unaligned ends share, and the small write, around the cache when forced.
          if (mode === 'direct' && dst.directAuto) expect(cached(path) ?? 0).toBeLessThanOrEqual(100 * KiB + 6 * 4 * KiB);
          await dst.close();
          outs.push(readFileSync(path));
        }
      } finally {
        if (saved === undefined) delete process.env.IMG_COPY_DIRECT_AUTO;
        else process.env.IMG_COPY_DIRECT_AUTO = saved;
      }
      for (let i = 1; i < outs.length; i++) expect(Buffer.compare(outs[i]!, outs[0]!)).toBe(0);
    }
    // Off in tmpfs (nothing under the cache) and for read-only opens.
    if (existsSync('/dev/shm')) {
      const shm = mkdtempSync('/dev/shm/img-auto-');
      try {
        const p = join(shm, 'x');
        writeFileSync(p, '');
        const dst = await FileStorage.open(p, { readOnly: false, lock: false, direct: 'auto' });
        expect(dst.directAuto).toBe(false);
        await dst.close();
      } finally {
        rmSync(shm, { recursive: true, force: true });
      }
    }
    const ro = await FileStorage.open(file(data), { lock: false, direct: 'auto' });
    expect(ro.directAuto).toBe(false);
    await ro.close();
    await src.close();
    await solid.close();
  });

  it('reads past the end of the source as zeros (short reads at EOF), and writes them when nothing is skipped', async () => {
    const data = new Uint8Array(10_000).fill(9);
    const src = await FileStorage.open(file(data), { lock: false });
    const dstPath = file();
    const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
    // Skipping zeros: only the 10,000 - 4,000 bytes that exist are written.
    let res = await src.copyRunsTo(dst, Float64Array.of(4000, 0, 20_000), { minZeroRun: 4096 });
    expect(res).toEqual({ bytesRead: 20_000, bytesWritten: 6144, bytesSkipped: 13_856 });
    expect(readFileSync(dstPath).length).toBe(6144); // whole 512-byte granules: the tail of the last one is zero
    // -S 0, with and without copy_file_range: every byte, the missing ones as zeros.
    for (const copyRange of [true, false]) {
      res = await src.copyRunsTo(dst, Float64Array.of(4000, 100_000, 20_000), { minZeroRun: 0, copyRange });
      expect(res.bytesWritten).toBe(20_000);
      const out = readFileSync(dstPath);
      expect(out.length).toBe(120_000);
      expect(out.subarray(100_000, 106_000).every((b) => b === 9)).toBe(true);
      expect(out.subarray(106_000, 120_000).every((b) => b === 0)).toBe(true);
    }
    // readRuns: the buffer gets zeros for the missing bytes (and old contents are overwritten).
    const buffer = new Uint8Array(20_000).fill(0xee);
    const got = await src.readRuns!(Float64Array.of(4000, 0, 20_000), buffer, { minZeroRun: 0 });
    expect(got.pieces).toEqual([[0, 20_000]]);
    expect(buffer.subarray(6000).every((b) => b === 0)).toBe(true);
    await src.close();
    await dst.close();
  });

  it('stops between chunks when the signal aborts mid-batch, and the files stay usable', async () => {
    const data = patterned(8 * MiB, 2);
    const src = await FileStorage.open(file(data), { lock: false });
    const dstPath = file();
    const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
    const runs: number[] = [];
    // 512 MiB of runs read in 4 KiB chunks: far longer than the abort below takes to arrive.
    for (let i = 0; i < 64; i++) runs.push(0, i * 8 * MiB, 8 * MiB);
    const ac = new AbortController();
    const p = src.copyRunsTo(dst, Float64Array.from(runs), { minZeroRun: 4096, chunkSize: 4096, signal: ac.signal });
    setTimeout(() => ac.abort(), 5);
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(ImageError.isInstance(err) && err.code).toBe('ERR_IMG_ABORTED');
    expect(readFileSync(dstPath).length).toBeLessThan(64 * 8 * MiB);
    // An abort before the call: nothing starts.
    await expect(src.copyRunsTo(dst, Float64Array.of(0, 0, 4096), { minZeroRun: 0, signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_IMG_ABORTED' });
    const after = await src.copyRunsTo(dst, Float64Array.of(0, 0, 4096), { minZeroRun: 0 });
    expect(after.bytesWritten).toBe(4096);
    await src.close();
    await dst.close();
  });

  it('refuses bad runs, a read-only or closed target and itself with ImageErrors, and reports a failed write with the target file', async () => {
    const src = await FileStorage.open(file(new Uint8Array(4096).fill(1)), { lock: false });
    const roPath = file();
    const ro = await FileStorage.open(roPath, { lock: false });
    const dstPath = file();
    const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
    expect(src.canCopyRunsTo?.(ro)).toBe(false);
    expect(src.canCopyRunsTo?.(new MemoryStorage())).toBe(false);
    await expect(src.copyRunsTo(ro, Float64Array.of(0, 0, 10), { minZeroRun: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_READ_ONLY' });
    await expect(src.copyRunsTo(new MemoryStorage(), Float64Array.of(0, 0, 10), { minZeroRun: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(src.copyRunsTo(dst, Float64Array.of(0, 0), { minZeroRun: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(src.copyRunsTo(dst, Float64Array.of(0, -1, 10), { minZeroRun: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(src.copyRunsTo(dst, Float64Array.of(0.5, 0, 10), { minZeroRun: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(src.copyRunsTo(dst, Float64Array.of(0, 0, 10), { minZeroRun: 0, chunkSize: 100 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    await expect(src.readRuns!(Float64Array.of(0, 0, 100), new Uint8Array(99), { minZeroRun: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG' });
    // ext4 and most file systems refuse a file offset of 2^52 (EFBIG or EINVAL): an ERR_IMG_IO naming the target.
    const err = await src.copyRunsTo(dst, Float64Array.of(0, 2 ** 52, 4096), { minZeroRun: 0, copyRange: false }).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (err !== undefined) {
      expect(err).toMatchObject({ code: 'ERR_IMG_IO' });
      expect((err as Error).message).toContain(dstPath);
      expect((err as Error).message).toMatch(/write at 4503599627370496 failed: .* \(E[A-Z]+\)/);
    }
    await dst.close();
    expect(src.canCopyRunsTo?.(dst)).toBe(false);
    await expect(src.copyRunsTo(dst, Float64Array.of(0, 0, 10), { minZeroRun: 0 })).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
    await src.close();
    await ro.close();
  });

  it('sparseCopy gives the same bytes, counts and progress through the native loop as through JavaScript, into a raw file and into another disk', async () => {
    const size = 24 * MiB;
    const srcPath = join(tmp.path, 'sparse-src.raw');
    const s = await FileStorage.create(srcPath, { lock: false });
    await s.truncate(size);
    const rnd = seededRandom(3);
    for (let i = 0; i < 40; i++) {
      const at = Math.floor(rnd() * (size - 300 * KiB));
      await s.write(at, patterned(1 + Math.floor(rnd() * 300 * KiB), 10 + i));
    }
    await s.close();
    const src = await openRaw(await FileStorage.open(srcPath, { lock: false }));
    const results = [];
    const images = [];
    for (const batchRuns of [true, false]) {
      const outPath = join(tmp.path, `out-${batchRuns}.raw`);
      const dst = await createRaw(await FileStorage.create(outPath, { lock: false }), { size });
      const seen: number[] = [];
      results.push(await sparseCopy(src, dst, { batchRuns, onProgress: (p) => seen.push(p.bytesDone) }));
      expect(seen[seen.length - 1]).toBe(size);
      expect([...seen].sort((a, b) => a - b)).toEqual(seen);
      await dst.close();
      images.push(readFileSync(outPath));
      // Into a disk that is not a local file: runs are read in batches and written through it.
      const mem = await createRaw(new MemoryStorage(), { size });
      results.push(await sparseCopy(src, mem, { batchRuns, chunkSize: MiB }));
      images.push(Buffer.from(await mem.read(0, size)));
    }
    expect(results[0]).toEqual(results[2]);
    expect(results[1]).toEqual(results[3]);
    expect(results[0]!.bytesWritten).toBeGreaterThan(0);
    for (const img of images.slice(1)) expect(Buffer.compare(img, images[0]!)).toBe(0);
    expect(Buffer.compare(images[0]!, readFileSync(srcPath))).toBe(0);
    // qemu-img agrees the copy is the source (skipped where qemu-img is absent).
    try {
      execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', srcPath, join(tmp.path, 'out-true.raw')]);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    await src.close();
  });

  it('sparseCopy sends the end of a file-to-file copy in small batches, so the copy threads finish together', async () => {
    // 100 MiB of data in 1 MiB runs with 1 MiB holes between: batches of 32 MiB, then the last full one and the rest split.
    const size = 200 * MiB;
    const srcPath = join(tmp.path, 'tail-src.raw');
    const s = await FileStorage.create(srcPath, { lock: false });
    await s.truncate(size);
    for (let i = 0; i < 100; i++) await s.write(2 * i * MiB, patterned(MiB, 200 + i).fill(7, 0, 1));
    await s.close();
    const file = await FileStorage.open(srcPath, { lock: false });
    const sizes: number[] = [];
    const copyRunsTo = file.copyRunsTo!.bind(file);
    file.copyRunsTo = (target, runs, options) => {
      let bytes = 0;
      for (let k = 2; k < runs.length; k += 3) bytes += runs[k]!;
      sizes.push(bytes);
      return copyRunsTo(target, runs, options);
    };
    const src = await openRaw(file);
    const outPath = join(tmp.path, 'tail-out.raw');
    const dst = await createRaw(await FileStorage.create(outPath, { lock: false }), { size });
    const result = await sparseCopy(src, dst, { chunkSize: MiB });
    await dst.close();
    await src.close();
    expect(sizes.reduce((a, b) => a + b, 0)).toBe(100 * MiB);
    expect(result.bytesRead).toBe(100 * MiB);
    // Two full batches (64 MiB), then the held third (32 MiB) and the last 4 MiB in 4 MiB pieces.
    expect(sizes).toEqual([32 * MiB, 32 * MiB, ...Array.from({ length: 9 }, () => 4 * MiB)]);
    expect(Buffer.compare(readFileSync(outPath), readFileSync(srcPath))).toBe(0);
  });

  it('sparseCopy through readRuns reports a destination write that fails, and stops writing the batch', async () => {
    const size = 16 * MiB;
    const src = await openRaw(await FileStorage.open(file(patterned(size, 5)), { lock: false }));
    const dst = await createRaw(new MemoryStorage(), { size });
    let writes = 0;
    let after = 0;
    const boom = new Error('disk full');
    const p = sparseCopy(src, dst, {
      chunkSize: 256 * KiB,
      concurrency: 1,
      writeData: async (o, d) => {
        if (writes > 0 && after === 0 && o >= 5 * MiB) {
          after = writes;
          throw boom;
        }
        writes++;
        await dst.write(o, d);
      },
    });
    await expect(p).rejects.toBe(boom);
    // Nothing more is written once a write has failed.
    expect(writes).toBe(after);
    await src.close();
  });

  it('sparseCopy into a raw file aborts mid-copy with ERR_IMG_ABORTED', async () => {
    const size = 64 * MiB;
    const srcPath = file(patterned(size, 4));
    const src = await openRaw(await FileStorage.open(srcPath, { lock: false }));
    const dst = await createRaw(await FileStorage.create(join(tmp.path, 'aborted.raw'), { lock: false }), { size });
    const ac = new AbortController();
    const p = sparseCopy(src, dst, { signal: ac.signal, chunkSize: 64 * KiB, onProgress: () => ac.abort() });
    // Whether the native loop or the JavaScript one saw the signal, the error names the copy.
    await expect(p).rejects.toMatchObject({ code: 'ERR_IMG_ABORTED', message: `copy from ${srcPath} to ${join(tmp.path, 'aborted.raw')} aborted` });
    await dst.close();
    await src.close();
  });

  describe('blocks allocated before the writes (fallocate; by default on ext4, IMG_COPY_PREALLOC=1 forces it here)', () => {
    /** 8 MiB of data with zero stretches of every size, 256 KiB ones among them. */
    const source = () => {
      const data = patterned(8 * MiB, 9);
      for (let at = 300 * KiB; at < data.length; at += MiB) data.fill(0, at, at + 256 * KiB);
      return data;
    };
    /** Runs `fn` with IMG_COPY_PREALLOC set to `mode`, then puts the variable back. */
    const withPrealloc = async <T>(mode: string, fn: () => Promise<T>): Promise<T> => {
      const before = process.env.IMG_COPY_PREALLOC;
      process.env.IMG_COPY_PREALLOC = mode;
      try {
        return await fn();
      } finally {
        if (before === undefined) delete process.env.IMG_COPY_PREALLOC;
        else process.env.IMG_COPY_PREALLOC = before;
      }
    };
    /** Copies runs with IMG_COPY_PREALLOC set to `prealloc`; what the target file holds and how many bytes of blocks it has. */
    const copyWith = async (prealloc: string, data: Uint8Array, runs: number[], options: { preallocate?: 'holes' | 'any' | 'never'; presize?: number; signal?: AbortSignal; chunkSize?: number }) => {
      const srcPath = file(data);
      const dstPath = file();
      if (options.presize) {
        const fd = openSync(dstPath, 'r+');
        ftruncateSync(fd, options.presize);
        closeSync(fd);
      }
      const src = await FileStorage.open(srcPath, { lock: false });
      const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
      let error: unknown;
      try {
        await withPrealloc(prealloc, () => src.copyRunsTo(dst, Float64Array.from(runs), { minZeroRun: 4096, ...options }));
      } catch (e) {
        error = e;
      } finally {
        await src.close();
        await dst.close();
      }
      return { bytes: readFileSync(dstPath), allocated: statSync(dstPath).blocks * 512, size: statSync(dstPath).size, error };
    };

    it('a raw target keeps the holes of the zero runs it skipped, and the same bytes', async () => {
      const data = source();
      const runs = [0, 0, data.length];
      const plain = await copyWith('0', data, runs, { presize: data.length });
      const allocated = await copyWith('1', data, runs, { presize: data.length });
      expect(Buffer.compare(allocated.bytes, Buffer.from(data))).toBe(0);
      expect(Buffer.compare(plain.bytes, Buffer.from(data))).toBe(0);
      // The zero runs of 256 KiB are holes either way: as many blocks as without allocating first (an extent block of slack).
      expect(allocated.allocated).toBeLessThanOrEqual(plain.allocated + 8 * KiB);
      expect(plain.allocated).toBeLessThan(data.length - 7 * 256 * KiB);
      // Runs that are not contiguous in the target: each data piece is allocated on its own; nothing between them.
      const scattered = [0, 0, 4 * MiB, 4 * MiB, 12 * MiB, 4 * MiB];
      const apart = await copyWith('1', data, scattered, { presize: 16 * MiB });
      const apartPlain = await copyWith('0', data, scattered, { presize: 16 * MiB });
      expect(Buffer.compare(apart.bytes, apartPlain.bytes)).toBe(0);
      expect(apart.allocated).toBeLessThanOrEqual(apartPlain.allocated + 8 * KiB);
    });

    it("preallocate 'any': skipped runs may keep their blocks; the file still grows only with what is written; 'never' allocates nothing ahead", async () => {
      const data = source();
      data.fill(0, data.length - 512 * KiB); // a zero tail: skipped, past the end of what is written
      const kept = await copyWith('1', data, [0, 0, data.length], { preallocate: 'any' });
      const plain = await copyWith('0', data, [0, 0, data.length], { preallocate: 'any' });
      const never = await copyWith('1', data, [0, 0, data.length], { preallocate: 'never' });
      // The same blocks as without allocating first, give or take an extent block (ext4 counts one in some runs, not others).
      expect(Math.abs(never.allocated - plain.allocated)).toBeLessThanOrEqual(8 * KiB);
      expect(kept.size).toBe(plain.size);
      expect(Buffer.compare(kept.bytes, plain.bytes)).toBe(0);
      expect(kept.allocated).toBeGreaterThanOrEqual(data.length - 512 * KiB);
    });

    it('bytes between two runs of a batch are left alone (another writer may have put them there)', async () => {
      const data = patterned(16 * MiB, 11);
      const srcPath = file(data);
      const dstPath = file(new Uint8Array(16 * MiB + 64 * KiB).fill(0xaa));
      const runs = Float64Array.of(0, 0, 8 * MiB, 8 * MiB, 8 * MiB + 64 * KiB, 8 * MiB);
      const src = await FileStorage.open(srcPath, { lock: false });
      const dst = await FileStorage.open(dstPath, { readOnly: false, lock: false });
      try {
        await withPrealloc('1', async () => {
          for (const minZeroRun of [0, 4096]) await src.copyRunsTo(dst, runs, { minZeroRun });
        });
      } finally {
        await src.close();
        await dst.close();
      }
      const out = readFileSync(dstPath);
      expect(out.subarray(8 * MiB, 8 * MiB + 64 * KiB).every((b) => b === 0xaa)).toBe(true);
      expect(Buffer.compare(out.subarray(0, 8 * MiB), Buffer.from(data.subarray(0, 8 * MiB)))).toBe(0);
    });

    it("preallocate 'any': batch after batch, the file is allocated ahead once per IMG_COPY_PREALLOC_AHEAD, not per batch; a truncate gives the rest back", () => {
      // In a child process: the distance is read once per process. 4 MiB batches, 8 MiB ahead: the first batch allocates
      // 12 MiB, the next two find their blocks there, the fourth allocates to 24 MiB; a batch elsewhere starts anew, and
      // so does a new file in the old one's place (it may have its inode number).
      const script = `
        import { FileStorage } from './dist/node/index.js';
        import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
        import { join } from 'node:path';
        import { tmpdir } from 'node:os';
        const MiB = 1 << 20;
        const dir = mkdtempSync(join(tmpdir(), 'img-ahead-'));
        try {
          const bytes = new Uint8Array(16 * MiB);
          for (let i = 0; i < bytes.length; i += 512) bytes[i] = (i / 512) % 251 + 1;
          writeFileSync(join(dir, 'src'), bytes);
          const src = await FileStorage.open(join(dir, 'src'), { lock: false });
          const dst = await FileStorage.create(join(dir, 'dst'), { lock: false });
          const blocks = () => statSync(join(dir, 'dst')).blocks * 512 / MiB;
          const seen = [];
          for (let b = 0; b < 4; b++) {
            await src.copyRunsTo(dst, Float64Array.of(b * 4 * MiB, b * 4 * MiB, 4 * MiB), { minZeroRun: 4096, preallocate: 'any' });
            seen.push(blocks());
          }
          await src.copyRunsTo(dst, Float64Array.of(0, 64 * MiB, 4 * MiB), { minZeroRun: 4096, preallocate: 'any' });
          seen.push(blocks());
          await dst.truncate(16 * MiB);
          seen.push(blocks());
          await dst.close();
          const same = Buffer.compare(readFileSync(join(dir, 'dst')), Buffer.from(bytes)) === 0;
          // A new file, which may get the old one's inode number, written where the old one's last range was: allocated anew.
          const inode = statSync(join(dir, 'dst')).ino;
          rmSync(join(dir, 'dst'));
          const again = await FileStorage.create(join(dir, 'dst'), { lock: false });
          await src.copyRunsTo(again, Float64Array.of(0, 64 * MiB, 4 * MiB), { minZeroRun: 4096, preallocate: 'any' });
          seen.push(blocks());
          await again.close();
          await src.close();
          console.log(JSON.stringify({ seen, same, reused: statSync(join(dir, 'dst')).ino === inode }));
        } finally { rmSync(dir, { recursive: true, force: true }); }
      `;
      const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
        cwd: new URL('../..', import.meta.url).pathname,
        env: { ...process.env, IMG_COPY_PREALLOC: '1', IMG_COPY_PREALLOC_AHEAD: '8' },
        encoding: 'utf8',
      });
      const got = JSON.parse(out.trim().split('\n').pop()!) as { seen: number[]; same: boolean };
      expect(got.same).toBe(true);
      // Whole MiB as allocated (an extent block of slack at most).
      expect(got.seen.map(Math.floor)).toEqual([12, 12, 12, 24, 24 + 12, 16, 12]);
    });

    it('a growing target that must stay sparse gets no blocks past its end: a zero tail, an aborted batch', async () => {
      const data = source();
      data.fill(0, data.length - 512 * KiB);
      const tail = await copyWith('1', data, [0, 0, data.length], {});
      expect(tail.size).toBe((await copyWith('0', data, [0, 0, data.length], {})).size);
      expect(tail.size).toBeLessThanOrEqual(data.length - 512 * KiB);
      expect(tail.allocated).toBeLessThanOrEqual(tail.size + 64 * KiB);

      const runs: number[] = [];
      for (let i = 0; i < 64; i++) runs.push(0, i * 8 * MiB, 8 * MiB);
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 5);
      const stopped = await copyWith('1', source(), runs, { signal: ac.signal, chunkSize: 4096 });
      expect(ImageError.isInstance(stopped.error) && stopped.error.code).toBe('ERR_IMG_ABORTED');
      expect(stopped.size).toBeLessThan(64 * 8 * MiB);
      expect(stopped.allocated).toBeLessThanOrEqual(stopped.size + 64 * KiB);
    });
  });
});

/** Whether /dev/shm is a tmpfs here (the tests of a tmpfs destination run there). */
const shmIsTmpfs = shmDir() !== undefined;

describe.skipIf(!native || !shmIsTmpfs)('a tmpfs destination: pieces written through a mapping while the other copy thread writes (IMG_COPY_SHM_MAP)', () => {
  /** Runs `script` (an ES module in the package's directory) in a child with IMG_COPY_SHM_MAP=`mode` (read once per process) and answers its last line, parsed. */
  const child = <T>(script: string, mode: string): T => {
    const env: Record<string, string | undefined> = { ...process.env, IMG_COPY_SHM_MAP: mode };
    if (!mode) delete env.IMG_COPY_SHM_MAP;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: new URL('../..', import.meta.url).pathname, env, encoding: 'utf8' });
    return JSON.parse(out.trim().split('\n').pop()!) as T;
  };

  // Three copies into /dev/shm: a presized raw target written by two jobs at once; a placing writer's target
  // (preallocate 2) that grows past its end, with a zero tail it skips; a growing target that must stay sparse
  // (preallocate 1), every piece past its end. Each answers whether its bytes are right, what it wrote through a
  // mapping, its size, its blocks and its data runs (SEEK_DATA).
  const copies = `
    import { seekAddon } from './dist/node/seek.js';
    import { nativeRunOptions } from './dist/node/native-runs.js';
    import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
    import { join } from 'node:path';
    const addon = seekAddon();
    const MiB = 1 << 20, KiB = 1024;
    const dir = mkdtempSync('/dev/shm/img-shm-map-');
    try {
      const data = new Uint8Array(12 * MiB);
      let x = 7;
      for (let i = 0; i < data.length; i += 4) { x = (x * 1103515245 + 12345) >>> 0; data[i] = (x >>> 24) | 1; }
      for (let at = 300 * KiB; at < data.length; at += MiB) data.fill(0, at, at + 256 * KiB);
      data.fill(0, data.length - 512 * KiB);
      // The last data byte: the zeros of the last MiB start 300 KiB into it and reach the zero tail.
      const lastData = 11 * MiB + 300 * KiB;
      writeFileSync(join(dir, 'src'), data);
      const srcFd = openSync(join(dir, 'src'), 'r');
      const copy = async (name, presize, jobs, preallocate) => {
        const path = join(dir, name);
        writeFileSync(path, new Uint8Array(0));
        const fd = openSync(path, 'r+');
        if (presize) ftruncateSync(fd, presize);
        const options = { ...nativeRunOptions({ minZeroRun: 4096, chunkSize: MiB, preallocate }), copyRange: 0 };
        const done = await Promise.all(jobs.map((runs) => addon.copyRuns(srcFd, fd, Float64Array.from(runs), options, new Int32Array(1))));
        const ranges = Array.from(addon.seekRanges(fd, 0, statSync(path).size));
        closeSync(fd);
        return { bytes: readFileSync(path), size: statSync(path).size, allocated: statSync(path).blocks * 512, ranges,
          written: done.reduce((n, r) => n + r[1], 0), mapped: done.reduce((n, r) => n + (r[4] ?? 0), 0) };
      };
      const expect = (got, at) => {
        const want = new Uint8Array(Math.max(got.bytes.length, at + data.length));
        want.set(data, at);
        return Buffer.compare(got.bytes, Buffer.from(want.subarray(0, got.bytes.length))) === 0 && got.bytes.length >= at + lastData;
      };
      // 1. Presized raw: two jobs, each every other MiB.
      const halves = [[], []];
      for (let k = 0; k < 12; k++) halves[k % 2].push(k * MiB, k * MiB, MiB);
      const raw = await copy('raw', 16 * MiB, halves, 'holes');
      // 2. A placing writer: the runs land at 4 MiB and up in an empty file.
      const placed = await copy('placed', 0, [[0, 4 * MiB, 6 * MiB], [6 * MiB, 10 * MiB, 6 * MiB]], 'any');
      // 3. Past the end, staying sparse: one job, every piece past the end when written.
      const grown = await copy('grown', 0, [[0, 0, data.length]], 'holes');
      const out = (c, at) => ({ same: expect(c, at), size: c.size, allocated: c.allocated, mapped: c.mapped, written: c.written, ranges: c.ranges });
      console.log(JSON.stringify({ raw: out(raw, 0), placed: out(placed, 4 * MiB), grown: out(grown, 0) }));
    } finally { rmSync(dir, { recursive: true, force: true }); }
  `;
  type Copy = { same: boolean; size: number; allocated: number; mapped: number; written: number; ranges: number[] };
  type Copies = { raw: Copy; placed: Copy; grown: Copy };

  it("the same bytes and holes whether every piece, the pieces that find the lock taken, or none go through a mapping; a placing writer's file grows to the end of its runs, its skipped tail a hole", () => {
    const MiB = 1024 * 1024;
    // The source's last data byte (see the script).
    const lastData = 11 * MiB + 300 * 1024;
    const runs: Record<'always' | 'auto' | 'never', Copies> = { always: child<Copies>(copies, '1'), auto: child<Copies>(copies, ''), never: child<Copies>(copies, '0') };
    for (const [mode, got] of Object.entries(runs)) {
      for (const c of [got.raw, got.placed, got.grown]) expect({ mode, same: c.same }).toEqual({ mode, same: true });
      // The zero runs (256 KiB each MiB, the 512 KiB tail) stay holes: blocks for the data only.
      expect(got.raw.allocated).toBeLessThanOrEqual(got.raw.written + 64 * 1024);
      expect(got.raw.size).toBe(16 * MiB);
      // Nothing past the end of what a sparse growing target was written, mapped or not.
      expect(got.grown.mapped).toBe(0);
      expect(got.grown.size).toBe(lastData);
      // The placing writer's skipped tail: no data there, whatever the size.
      expect(Math.max(...got.placed.ranges.filter((_, i) => i % 2 === 1))).toBe(4 * MiB + lastData);
    }
    expect(runs.never.raw.mapped + runs.never.placed.mapped).toBe(0);
    // Every piece of 64 KiB or more inside the file (or the runs of a placing writer) went through a mapping.
    expect(runs.always.raw.mapped).toBe(runs.always.raw.written);
    expect(runs.always.placed.mapped).toBe(runs.always.placed.written);
    // The placing writer's file was grown to the end of its runs (its writer cuts what stays unwritten); without mappings it grows with its writes.
    expect(runs.always.placed.size).toBe(16 * MiB);
    expect(runs.never.placed.size).toBe(4 * MiB + lastData);
  });

  it('survives a target cut short while pieces are written through its mapping (SIGBUS is caught)', () => {
    // Without the guard, a page past the new end kills the process with SIGBUS.
    const script = `
      import { FileStorage } from './dist/node/index.js';
      import { mkdtempSync, rmSync, writeFileSync, openSync, ftruncateSync, closeSync } from 'node:fs';
      import { join } from 'node:path';
      const dir = mkdtempSync('/dev/shm/img-shm-bus-');
      let done = 0;
      const codes = new Set();
      try {
        for (let round = 0; round < 12; round++) {
          const bytes = new Uint8Array(16 << 20).fill(round + 1);
          const path = join(dir, 'src' + round);
          writeFileSync(path, bytes);
          const dstPath = join(dir, 'dst' + round);
          const src = await FileStorage.open(path, { lock: false });
          const dst = await FileStorage.create(dstPath, { lock: false });
          await dst.truncate(bytes.length);
          const runs = [];
          for (let at = 0; at < bytes.length; at += 1 << 20) runs.push(at, at, 1 << 20);
          const copy = src.copyRunsTo(dst, Float64Array.from(runs), { minZeroRun: 4096, chunkSize: 1 << 20 }).then(() => 'ok', (e) => e.code ?? String(e));
          await new Promise((r) => setTimeout(r, round % 4));
          const fd = openSync(dstPath, 'r+');
          ftruncateSync(fd, 4096 * (round % 3));
          closeSync(fd);
          codes.add(await copy);
          done++;
          await src.close();
          await dst.close();
        }
      } finally { rmSync(dir, { recursive: true, force: true }); }
      console.log(JSON.stringify({ done, codes: [...codes] }));
    `;
    const got = child<{ done: number; codes: string[] }>(script, '1');
    expect(got.done).toBe(12);
    expect(got.codes.every((c) => c === 'ok')).toBe(true);
  });

  // A tmpfs of 1 MiB, mounted in a user and mount namespace of its own; where the system allows none, skipped with a notice.
  const smallTmpfs = (() => {
    try {
      execFileSync('unshare', ['-rm', 'sh', '-c', 'd=$(mktemp -d) && mount -t tmpfs -o size=1m none "$d"'], { stdio: 'ignore' });
      return true;
    } catch {
      console.warn('copy-runs.test: no user namespaces here (unshare -rm): the full-tmpfs test is skipped');
      return false;
    }
  })();

  it.skipIf(!smallTmpfs)('a full tmpfs fails the copy with ENOSPC through the mapping as through pwrite, not with a signal', () => {
    const script = `
      import { FileStorage } from './dist/node/index.js';
      import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
      import { join } from 'node:path';
      const mnt = process.env.IMG_TEST_MNT;
      const dir = mkdtempSync('/dev/shm/img-shm-full-');
      try {
        writeFileSync(join(dir, 'src'), new Uint8Array(4 << 20).fill(3));
        const src = await FileStorage.open(join(dir, 'src'), { lock: false });
        const dst = await FileStorage.create(mnt + '/dst', { lock: false });
        await dst.truncate(8 << 20);
        const runs = [];
        for (let at = 0; at < 4 << 20; at += 1 << 20) runs.push(at, at, 1 << 20);
        const got = await src.copyRunsTo(dst, Float64Array.from(runs), { minZeroRun: 4096, chunkSize: 1 << 20 }).then(() => 'ok', (e) => ({ code: e.code, message: e.message }));
        await src.close();
        await dst.close();
        console.log(JSON.stringify(got));
      } finally { rmSync(dir, { recursive: true, force: true }); }
    `;
    for (const mode of ['1', '0']) {
      const out = execFileSync('unshare', ['-rm', 'sh', '-c', 'd=$(mktemp -d) && mount -t tmpfs -o size=1m none "$d" && IMG_TEST_MNT="$d" exec "$0" --input-type=module -e "$1"', process.execPath, script], {
        cwd: new URL('../..', import.meta.url).pathname,
        env: { ...process.env, IMG_COPY_SHM_MAP: mode },
        encoding: 'utf8',
      });
      const got = JSON.parse(out.trim().split('\n').pop()!) as { code: string; message: string };
      expect({ mode, code: got.code }).toEqual({ mode, code: 'ERR_IMG_IO' });
      expect(got.message).toMatch(/\/dst: write at \d+ failed: .*\(ENOSPC\)/);
    }
  });
});

describe('without the native helper (IMG_NO_NATIVE=1)', () => {
  it('FileStorage has no batch copy and sparseCopy copies through JavaScript, byte for byte', () => {
    const script = `
      import { FileStorage } from '@img/block/node';
      import { openRaw, createRaw, sparseCopy } from '@img/block';
      import { writeFileSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
      import { join } from 'node:path';
      import { tmpdir } from 'node:os';
      const dir = mkdtempSync(join(tmpdir(), 'img-nonative-'));
      try {
        const bytes = new Uint8Array(3 << 20);
        for (let i = 0; i < bytes.length; i += 7919) bytes.fill(i % 251 + 1, i, i + 3000);
        writeFileSync(join(dir, 'a.raw'), bytes);
        const s = await FileStorage.open(join(dir, 'a.raw'), { lock: false });
        const src = await openRaw(s);
        const dst = await createRaw(await FileStorage.create(join(dir, 'b.raw'), { lock: false }), { size: src.size });
        const r = await sparseCopy(src, dst);
        await dst.close();
        await src.close();
        const same = Buffer.compare(readFileSync(join(dir, 'a.raw')), readFileSync(join(dir, 'b.raw'))) === 0;
        console.log(JSON.stringify({ copy: typeof s.copyRunsTo === 'function' && typeof s.canCopyRunsTo === 'function', read: typeof s.readRuns, same, written: r.bytesWritten }));
      } finally { rmSync(dir, { recursive: true, force: true }); }
    `;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('../..', import.meta.url).pathname,
      env: { ...process.env, IMG_NO_NATIVE: '1' },
      encoding: 'utf8',
    });
    const got = JSON.parse(out.trim().split('\n').pop()!) as { copy: boolean; read: string; same: boolean; written: number };
    expect(got).toMatchObject({ copy: false, read: 'undefined', same: true });
    expect(got.written).toBeGreaterThan(0);
  });
});
