/**
 * Guest operations in flight together. Writes into allocated clusters run
 * their data I/O outside the L2 table's lock (in-flight.ts); these tests
 * hold such a write in flight and check that whatever changes the mapping
 * (discard, zeroes, compressed writes, snapshots, flush, overlapping
 * writes) waits for it, then run bursts of unawaited operations over a
 * storage that lands each write late, against a flat model, judged by
 * checkQcow2 and, on a real file, by qemu-img check and compare.
 */
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage, bytesEqual } from '@img/block';
import type { Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, seededBytes, tempDir, seededRandom } from '@img/testkit';
import { createQcow2, type Qcow2CreateOptions } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import type { Qcow2Disk } from './image.js';
import './driver.js';

/** Resolves after `n` turns of the event loop. */
function turns(n: number): Promise<void> {
  return n <= 0 ? Promise.resolve() : new Promise((r) => setImmediate(() => void turns(n - 1).then(r)));
}

/**
 * A MemoryStorage whose writes land late: each takes effect a (seeded)
 * random number of event loop turns after the call, just before its
 * promise resolves, so that writes in flight overtake each other. A write
 * whose bytes touch the position given to `block()` waits for `release()`.
 */
class LateStorage implements Storage {
  readonly name: string;
  readonly readOnly = false;
  readonly inner: MemoryStorage;
  #random: () => number;
  #blockAt: number | undefined;
  #blocked: Array<() => void> = [];
  /** Writes held at `blockAt` right now. */
  held = 0;

  constructor(inner: MemoryStorage, seed: number) {
    this.inner = inner;
    this.name = inner.name;
    this.#random = seededRandom(seed);
  }

  block(at: number): void {
    this.#blockAt = at;
  }

  release(): void {
    this.#blockAt = undefined;
    for (const go of this.#blocked.splice(0)) go();
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  read(position: number, length: number): Promise<Uint8Array> {
    return this.inner.read(position, length);
  }

  readInto(position: number, target: Uint8Array): Promise<number> {
    return this.inner.readInto(position, target);
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    if (this.#blockAt !== undefined && position <= this.#blockAt && this.#blockAt < position + data.length) {
      this.held++;
      await new Promise<void>((r) => this.#blocked.push(r));
      this.held--;
    }
    await turns(Math.floor(this.#random() * 6));
    // The bytes are taken when the write lands, as a file's pwrite takes them when it runs: the
    // writer sends live views of its tables and relies on that (the last write of a range sends the
    // latest entries).
    await this.inner.write(position, data);
  }

  truncate(size: number): Promise<void> {
    return this.inner.truncate(size);
  }

  async flush(): Promise<void> {
    await turns(1);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Settles to whether `p` is still pending after a few event loop turns. */
async function pending(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await turns(20);
  return !done;
}

/** A disk over a LateStorage, fully allocated with `fill` (4 KiB clusters unless told). */
async function allocated(size: number, options: Partial<Qcow2CreateOptions> = {}, seed = 1): Promise<{ disk: Qcow2Disk; late: LateStorage; model: Uint8Array }> {
  const inner = new MemoryStorage({ name: 'c.qcow2' });
  const late = new LateStorage(inner, seed);
  const disk = await createQcow2(late, { size, clusterSize: 4096, ...options } as Qcow2CreateOptions);
  const model = seededBytes(size, seed);
  await disk.write(0, model);
  await disk.flush();
  return { disk, late, model };
}

/** The host offset guest `offset` maps to (a data extent's host offset). */
async function hostOf(disk: Qcow2Disk, offset: number): Promise<number> {
  for await (const e of disk.extents({ offset, length: 1, hostOffsets: true })) return e.hostOffset ?? -1;
  return -1;
}

async function expectClean(disk: Qcow2Disk, late: LateStorage, model: Uint8Array): Promise<void> {
  expect(bytesEqual(await disk.read(0, model.length), model)).toBe(true);
  await disk.close();
  const check = await checkQcow2(MemoryStorage.from(late.inner.toBytes(), { name: 'check.qcow2' }), {});
  expect(check.corruptions, check.messages.join('\n')).toBe(0);
  expect(check.leaks, check.messages.join('\n')).toBe(0);
}

describe('a write into an allocated cluster, in flight without its table lock', () => {
  const C = 4096;

  it('holds back a discard, a zero write and a compressed write of that cluster until it lands', async () => {
    for (const change of ['discard', 'zero', 'compressed'] as const) {
      const { disk, late, model } = await allocated(64 * C);
      const host = await hostOf(disk, 5 * C);
      late.block(host + 100);
      const data = seededBytes(512, 7);
      const write = disk.write(5 * C, data);
      model.set(data, 5 * C);
      await turns(2);
      expect(late.held).toBe(1);
      let op: Promise<void>;
      if (change === 'discard') op = disk.discard(5 * C, C);
      else if (change === 'zero') op = disk.writeZeroes(5 * C, C);
      else op = disk.writeCompressed(5 * C, new Uint8Array(C).fill(3));
      // The cluster's entry does not change (nor is the cluster freed for reuse) while the write is held.
      expect(await pending(op)).toBe(true);
      expect(await hostOf(disk, 5 * C)).toBe(host);
      late.release();
      await Promise.all([write, op]);
      if (change === 'compressed') model.fill(3, 5 * C, 6 * C);
      else model.fill(0, 5 * C, 6 * C);
      // A new write there may reuse the freed cluster: nothing of the held write may land over it.
      const fresh = seededBytes(C, 8);
      await disk.write(5 * C, fresh);
      model.set(fresh, 5 * C);
      await expectClean(disk, late, model);
    }
  });

  it('holds back flush, and a snapshot taken after it keeps its data', async () => {
    const { disk, late, model } = await allocated(64 * C);
    const host = await hostOf(disk, 9 * C);
    late.block(host);
    const data = seededBytes(C, 9);
    const write = disk.write(9 * C, data);
    model.set(data, 9 * C);
    await turns(2);
    const flush = disk.flush();
    const snap = disk.createSnapshot('s1');
    // Writes called after the snapshot wait for it: they go to new clusters, not over the snapshot's.
    const later = disk.write(9 * C, new Uint8Array(C).fill(0xee));
    expect(await pending(flush)).toBe(true);
    expect(await pending(snap)).toBe(true);
    late.release();
    await Promise.all([write, flush, snap, later]);
    const view = await disk.openSnapshot('s1');
    expect(bytesEqual(await view.read(0, model.length), model)).toBe(true);
    await view.close();
    expect(await hostOf(disk, 9 * C)).not.toBe(host);
    model.fill(0xee, 9 * C, 10 * C);
    await expectClean(disk, late, model);
  });

  it('holds back a shrinking resize and makeEmpty', async () => {
    for (const change of ['shrink', 'empty'] as const) {
      const { disk, late, model } = await allocated(64 * C);
      const host = await hostOf(disk, 40 * C);
      late.block(host);
      const write = disk.write(40 * C, new Uint8Array(C).fill(6));
      await turns(2);
      const op = change === 'shrink' ? disk.resize(32 * C, { shrink: true }) : disk.makeEmpty();
      expect(await pending(op)).toBe(true);
      expect(await hostOf(disk, 40 * C)).toBe(host);
      late.release();
      await Promise.all([write, op]);
      // Clusters freed by the change are reused by new writes; the held write landed before.
      const fresh = seededBytes(8 * C, 12);
      await disk.write(0, fresh);
      const expected = change === 'shrink' ? model.slice(0, 32 * C) : new Uint8Array(64 * C);
      expected.set(fresh);
      await expectClean(disk, late, expected);
    }
  });

  it('overlapping writes land in call order; others pass it', async () => {
    const { disk, late, model } = await allocated(64 * C);
    const host = await hostOf(disk, 3 * C);
    late.block(host + 200);
    const first = disk.write(3 * C + 100, new Uint8Array(300).fill(1));
    await turns(2);
    const second = disk.write(3 * C + 250, new Uint8Array(300).fill(2));
    const elsewhere = disk.write(3 * C + 1000, new Uint8Array(100).fill(4));
    const otherCluster = disk.write(20 * C, new Uint8Array(C).fill(5));
    await Promise.all([elsewhere, otherCluster]);
    expect(await pending(second)).toBe(true);
    late.release();
    await Promise.all([first, second]);
    model.fill(1, 3 * C + 100, 3 * C + 400);
    model.fill(2, 3 * C + 250, 3 * C + 550);
    model.fill(4, 3 * C + 1000, 3 * C + 1100);
    model.fill(5, 20 * C, 21 * C);
    await expectClean(disk, late, model);
  });
});

/** One guest operation of a burst; `apply` changes the model as the operation will change the disk. */
interface BurstOp {
  desc: string;
  run: (disk: Qcow2Disk) => Promise<unknown>;
  apply: (model: Uint8Array) => void;
  /** A compressed write's guest range (later operations must not overlap it in the same burst). */
  compressed?: [number, number];
}

/**
 * A burst of unawaited operations over `size` bytes: mostly small writes
 * (within a cluster, across clusters and L2 tables), some discards and
 * zero writes, a compressed write (which later operations, overlapping
 * or not, may be called behind while it compresses), and a flush.
 */
function burst(random: () => number, size: number, cluster: number, l2Coverage: number): BurstOp[] {
  const ops: BurstOp[] = [];
  const int = (n: number) => Math.floor(random() * n);
  // Most operations hit a few clusters, so that a cluster is written, freed and reused while writes are in flight.
  const hot = int(Math.floor(size / cluster) - 8) * cluster;
  // The compressed range: whole clusters, in the hot ones half of the time (later operations overlap it).
  const cClusters = 2;
  const cStart = int(2) ? hot + int(6) * cluster : int(Math.floor(size / cluster) - cClusters) * cluster;
  const range = (): [number, number] => {
    for (;;) {
      const kind = int(10);
      let offset: number;
      let length: number;
      if (int(3) > 0) [offset, length] = [hot + int(8 * cluster), 1 + int(int(2) ? 4096 : 2 * cluster)];
      else if (kind < 5) [offset, length] = [int(size / 4096) * 4096, 4096];
      else if (kind < 7) [offset, length] = [int(size), 1 + int(3 * cluster)];
      else if (kind < 8) [offset, length] = [Math.max(0, Math.ceil(size / 2 / l2Coverage) * l2Coverage - int(2 * cluster)), 1 + int(4 * cluster)];
      else [offset, length] = [int(size / 512) * 512, 512 * (1 + int(8))];
      length = Math.min(length, size - offset);
      if (length > 0) return [offset, length];
    }
  };
  const count = 24 + int(24);
  const compressedAt = int(count);
  const flushAt = int(count);
  for (let i = 0; i < count; i++) {
    if (i === compressedAt) {
      const data = int(2) ? new Uint8Array(cClusters * cluster).fill(1 + int(200)) : seededBytes(cClusters * cluster, int(1 << 30));
      ops.push({ desc: `compressed ${cStart}+${data.length}`, run: (d) => d.writeCompressed(cStart, data), apply: (m) => m.set(data, cStart), compressed: [cStart, cStart + data.length] });
    }
    if (i === flushAt) ops.push({ desc: 'flush', run: (d) => d.flush(), apply: () => undefined });
    const [offset, length] = range();
    const what = int(10);
    if (what < 7) {
      const data = seededBytes(length, int(1 << 30));
      ops.push({ desc: `write ${offset}+${length}`, run: (d) => d.write(offset, data), apply: (m) => m.set(data, offset) });
    } else if (what < 8) {
      const mayUnmap = int(2) === 0;
      ops.push({ desc: `zero ${offset}+${length} ${mayUnmap}`, run: (d) => d.writeZeroes(offset, length, { mayUnmap }), apply: (m) => m.fill(0, offset, offset + length) });
    } else {
      // No backing file: discarded bytes read as zeros.
      ops.push({ desc: `discard ${offset}+${length}`, run: (d) => d.discard(offset, length), apply: (m) => m.fill(0, offset, offset + length) });
    }
  }
  return ops;
}

/** Runs a burst: every operation started in order without awaiting, the model changed in the same order. */
async function runBurst(disk: Qcow2Disk, ops: BurstOp[], model: Uint8Array): Promise<void> {
  const running = ops.map((o) => {
    const p = o.run(disk);
    o.apply(model);
    return p;
  });
  const results = await Promise.allSettled(running);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

const SHAPES: Array<{ name: string; options: Partial<Qcow2CreateOptions>; size: number }> = [
  { name: '4 KiB clusters, three L2 tables', options: { clusterSize: 4096 }, size: 5 * 1024 * 1024 },
  { name: 'extended L2, 16 KiB clusters', options: { clusterSize: 16384, extendedL2: true }, size: 3 * 1024 * 1024 },
  { name: '512-byte clusters, eight L2 tables', options: { clusterSize: 512 }, size: 256 * 1024 },
];

describe('bursts of unawaited operations over writes that land late, against a flat model', () => {
  for (const shape of SHAPES) {
    it(shape.name, async () => {
      const seed = Number(process.env.IMG_SEED ?? 4242);
      for (let run = 0; run < 3; run++) {
        const { disk, late, model } = await allocated(shape.size, shape.options, seed + run);
        const cs = disk.clusterSize;
        const coverage = (cs / (shape.options.extendedL2 ? 16 : 8)) * cs;
        const random = seededRandom(seed * 31 + run);
        const snapshots: Array<{ name: string; model: Uint8Array }> = [];
        for (let round = 0; round < 6; round++) {
          const ops = burst(random, shape.size, cs, coverage);
          // Now and then a snapshot in the middle: earlier operations are in it, later ones are not.
          if (round % 2 === 1) {
            const name = `s${round}`;
            // Anywhere, also after the compressed write: a snapshot waits for it as for any earlier operation.
            const at = Math.floor(random() * (ops.length + 1));
            let saved: Uint8Array | undefined;
            ops.splice(at, 0, { desc: `snapshot ${name}`, run: (d) => d.createSnapshot(name), apply: (m) => void (saved = m.slice()) });
            await runBurst(disk, ops, model);
            snapshots.push({ name, model: saved! });
          } else {
            await runBurst(disk, ops, model);
          }
          expect(bytesEqual(await disk.read(0, shape.size), model), `run ${run} round ${round}:\n${ops.map((o) => o.desc).join('\n')}`).toBe(true);
          for (const s of snapshots) {
            const view = await disk.openSnapshot(s.name);
            expect(bytesEqual(await view.read(0, shape.size), s.model), `snapshot ${s.name}`).toBe(true);
            await view.close();
          }
          if (round === 3) await disk.deleteSnapshot(snapshots.shift()!.name);
          if (round === 4) {
            // Back to a snapshot: the model too.
            await disk.applySnapshot(snapshots[0]!.name);
            model.set(snapshots[0]!.model);
          }
        }
        await expectClean(disk, late, model);
      }
    });
  }
});

describeQemu('bursts on a real file, judged by qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-concurrency-'));
  });
  afterAll(() => cleanup());

  it('a qemu-made, fully allocated image after bursts of writes, discards and zero writes checks clean and compares equal', async () => {
    const size = 16 * 1024 * 1024;
    const model = seededBytes(size, 21);
    const raw = join(dir, 'start.raw');
    const image = join(dir, 'image.qcow2');
    writeFileSync(raw, model);
    // 4 KiB clusters: eight L2 tables of 2 MiB each.
    qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, image]);
    const disk = await openQcow2(await FileStorage.open(image, { readOnly: false }), { readOnly: false });
    const random = seededRandom(5);
    for (let round = 0; round < 8; round++) {
      const ops = burst(random, size, 4096, 512 * 4096);
      // Many more small writes into allocated clusters: the unlocked path.
      for (let i = 0; i < 200; i++) {
        const at = Math.floor(random() * (size / 4096)) * 4096;
        const data = seededBytes(4096, Math.floor(random() * 1e9));
        ops.splice(Math.floor(random() * ops.length), 0, { desc: `write ${at}+4096`, run: (d) => d.write(at, data), apply: (m) => m.set(data, at) });
      }
      await runBurst(disk, ops, model);
    }
    await disk.close();
    const expected = join(dir, 'model.raw');
    writeFileSync(expected, model);
    const check = qemuCheck(image);
    expect(check.status, check.stderr).toBe(0);
    expect(qemuCompare(image, expected, 'qcow2', 'raw')).toBe(true);
  });
});
