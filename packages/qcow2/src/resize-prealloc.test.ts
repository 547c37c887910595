/**
 * A grow with preallocation `falloc` or `full`, judged against qemu-img
 * resize --preallocation on copies of one image: the same map (guest
 * clusters at the same host offsets), the same check, the same file byte
 * for byte, and the same reserved space (du). `falloc` writes the metadata only (the file system
 * allocates the data area, counted through a storage that counts the bytes
 * written), `full` writes the zeros. At every crash point of such a grow
 * the image opens, reads as the old size and content or as the grown one,
 * and checks without corruption; an aborted or failed grow frees what it
 * allocated.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ImageError, MemoryStorage, type Storage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, FaultStorage, hasQemuImg, qemuCompare, qemuImg, qemuIo, qemuMap, seededBytes, seededRandom, tempDir, type CrashMode } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { createQcow2, type Qcow2CreateOptions } from './create.js';
import { openQcow2 } from './open.js';

const tmp = tempDir('img-qcow2-resize-prealloc-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);
const MiB = 1024 * 1024;

/** `storage` with every byte written through write and writev counted. */
function counting(storage: Storage): { storage: Storage; written: () => number } {
  let written = 0;
  const proxy = new Proxy(storage, {
    get(target, prop) {
      const value: unknown = Reflect.get(target, prop, target);
      if (typeof value !== 'function') return value;
      if (prop === 'write') {
        return (position: number, data: Uint8Array) => {
          written += data.length;
          return target.write(position, data);
        };
      }
      if (prop === 'writev') {
        return (position: number, chunks: readonly Uint8Array[]) => {
          written += chunks.reduce((n, c) => n + c.length, 0);
          return target.writev!(position, chunks);
        };
      }
      return (value as (...args: unknown[]) => unknown).bind(target);
    },
  });
  return { storage: proxy, written: () => written };
}

async function resizeFile(file: string, size: number, preallocation: 'falloc' | 'full', wrap: (s: Storage) => Storage = (s) => s): Promise<void> {
  const disk = await openQcow2(wrap(await FileStorage.open(file, { readOnly: false })), { readOnly: false });
  await disk.resize(size, { preallocation });
  await disk.close();
}

const du = (file: string) => statSync(file).blocks * 512;

interface Case {
  name: string;
  /** qemu-img create -o. */
  options?: string;
  size: number;
  /** qemu-io commands on the image before the grow. */
  io: string[];
  snapshot?: boolean;
  to: number;
  mode: 'falloc' | 'full';
}

const cases: Case[] = [
  { name: 'data at both ends', size: 64 * MiB, io: ['write -P 1 0 1M', 'write -P 2 60M 1M'], to: 320 * MiB, mode: 'falloc' },
  { name: 'full', size: 64 * MiB, io: ['write -P 1 0 1M'], to: 100 * MiB, mode: 'full' },
  // The cluster the old size ends in moves to the head of the run, its bytes copied, and its old place is freed.
  { name: 'from a size inside a cluster', size: 1000448, io: ['write -P 5 0 1000448'], to: 1205248, mode: 'falloc' },
  { name: 'inside the same cluster', size: 1000448, io: ['write -P 5 0 1000448'], to: 1000960, mode: 'falloc' },
  { name: 'extended L2, from a size inside a cluster', options: 'extended_l2=on', size: 1000448, io: ['write -P 5 0 1000448'], to: 3 * MiB, mode: 'falloc' },
  { name: 'a snapshot shares the L2 table', size: 1000448, io: ['write -P 1 0 1000448'], snapshot: true, to: 3 * MiB, mode: 'falloc' },
  { name: 'version 2', options: 'compat=0.10', size: 64 * MiB, io: ['write -P 1 0 1M'], to: 80 * MiB, mode: 'falloc' },
  { name: '512-byte clusters, 1-bit refcounts (new refcount blocks, a bigger refcount table)', options: 'cluster_size=512,refcount_bits=1', size: MiB, io: ['write -P 1 0 100k'], to: 24 * MiB, mode: 'falloc' },
  { name: '2 MiB clusters, lazy refcounts', options: 'cluster_size=2M,lazy_refcounts=on', size: 64 * MiB, io: ['write -P 1 0 1M'], to: 200 * MiB, mode: 'falloc' },
];

describeQemu('resize with preallocation, against qemu-img resize --preallocation', () => {
  cases.forEach((c, n) => {
    it(`${c.name} (${c.options ?? 'defaults'}, ${c.size} -> ${c.to}, ${c.mode}): same map, check, bytes and du`, async () => {
      const base = p(`base-${n}.qcow2`);
      const [theirs, ours] = [p(`qemu-${n}.qcow2`), p(`img-${n}.qcow2`)];
      qemuImg(['create', '-q', '-f', 'qcow2', ...(c.options ? ['-o', c.options] : []), base, String(c.size)]);
      qemuIo(base, 'qcow2', c.io);
      if (c.snapshot) qemuImg(['snapshot', '-c', 's1', base]);
      copyFileSync(base, theirs);
      copyFileSync(base, ours);
      qemuImg(['resize', '-q', `--preallocation=${c.mode}`, theirs, String(c.to)]);
      await resizeFile(ours, c.to, c.mode);
      expect(qemuImg(['map', '--output=json', ours]).stdout).toBe(qemuImg(['map', '--output=json', theirs]).stdout);
      const check = (f: string) => qemuImg(['check', f], { allowFail: true });
      expect(check(ours)).toEqual(check(theirs));
      expect(qemuCompare(ours, theirs)).toBe(true);
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      expect(spawnSync('cmp', ['-s', ours, theirs]).status, 'the files byte for byte').toBe(0);
      // qemu writes metadata clusters whole where img writes the entries it changes: a few clusters of du apart.
      const cs = qemuImg(['info', '--output=json', base]).stdout.match(/"cluster-size": (\d+)/)![1]!;
      expect(Math.abs(du(ours) - du(theirs)), `du ${du(ours)} against ${du(theirs)}`).toBeLessThanOrEqual(3 * Number(cs) + 64 * 1024);
    });
  });

  it('falloc writes the metadata only (the file system allocates the data area); full writes the zeros', async () => {
    const grow = 1024 * MiB;
    for (const mode of ['falloc', 'full'] as const) {
      const file = p(`count-${mode}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', file, '64M']);
      qemuIo(file, 'qcow2', ['write -P 3 0 1M']);
      const added = mode === 'falloc' ? grow : grow / 8;
      let count!: ReturnType<typeof counting>;
      await resizeFile(file, 64 * MiB + added, mode, (s) => (count = counting(s)).storage);
      if (mode === 'falloc') expect(count.written(), 'bytes written by a falloc grow').toBeLessThan(MiB);
      else expect(count.written(), 'bytes written by a full grow').toBeGreaterThanOrEqual(added);
      // The space is reserved (du as qemu's), and every added cluster is a data cluster reading as zeros.
      expect(du(file)).toBeGreaterThanOrEqual(added);
      expect(qemuImg(['check', file]).status).toBe(0);
      const map = qemuMap(file, 'qcow2');
      expect(map.at(-1)).toMatchObject({ start: 64 * MiB, length: added, data: true, zero: false });
      expect(qemuIo(file, 'qcow2', ['read -P 3 0 1M', `read -P 0 64M ${added}`])).not.toContain('Pattern verification failed');
      rmSync(file);
    }
  });
});

describe('resize with preallocation: failures and aborts', () => {
  it('a full grow aborted between pieces frees its clusters and cuts the file back: the old content, no leak', async () => {
    const base = new MemoryStorage({ name: 'a.qcow2' });
    const made = await createQcow2(base, { size: 1000448, clusterSize: '4k' });
    const content = seededBytes(1000448, 3);
    await made.write(0, content);
    await made.close();
    const storage = MemoryStorage.from(base.toBytes(), { name: 'a.qcow2' });
    const before = base.toBytes().length;
    const controller = new AbortController();
    let zeros = 0;
    // Aborts once a piece of zeros has been written (the preallocation is under way).
    const watched = new Proxy(storage, {
      get(target, prop) {
        const value: unknown = Reflect.get(target, prop, target);
        if (prop === 'write')
          return (position: number, data: Uint8Array) => {
            if (data.length >= MiB && ++zeros === 1) controller.abort();
            return target.write(position, data);
          };
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    const disk = await openQcow2(watched, { readOnly: false });
    const error = await disk.resize(64 * MiB, { preallocation: 'full', signal: controller.signal }).catch((e: unknown) => e);
    expect(ImageError.isInstance(error) && error.code).toBe('ERR_IMG_ABORTED');
    expect(zeros).toBe(1);
    await disk.close();
    expect(storage.toBytes().length).toBeLessThan(before + 64 * 1024);
    const check = await checkQcow2(MemoryStorage.from(storage.toBytes()));
    expect(check).toMatchObject({ corruptions: 0, leaks: 0 });
    const again = await openQcow2(MemoryStorage.from(storage.toBytes()));
    expect(Buffer.from(await again.read(0, content.length)).equals(Buffer.from(content))).toBe(true);
    await again.close();
  });
});

describe('resize with preallocation, crashed at every point', () => {
  const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
  // Each grows from inside a cluster (which moves) near the end of the first L2 table into the next one (a new table).
  const configs: Array<{ name: string; options: Partial<Qcow2CreateOptions>; cs: number; perTable: number; snapshot?: boolean; mode: 'falloc' | 'full' }> = [
    { name: '4k clusters, a snapshot shares the first L2 table', options: { clusterSize: '4k' }, cs: 4096, perTable: 512, snapshot: true, mode: 'falloc' },
    { name: '4k clusters', options: { clusterSize: '4k' }, cs: 4096, perTable: 512, mode: 'full' },
    { name: '512-byte clusters, 1-bit refcounts', options: { clusterSize: 512, refcountBits: 1 }, cs: 512, perTable: 64, mode: 'falloc' },
    { name: 'extended L2 entries, 16k clusters', options: { clusterSize: '16k', extendedL2: true }, cs: 16384, perTable: 1024, mode: 'falloc' },
  ];
  for (const config of configs) {
    const { cs, mode } = config;
    it(`${config.name}, ${mode}: the old size and content, or the new size with zeros added; no corruption`, async () => {
      const coverage = config.perTable * cs;
      const oldSize = coverage - 3 * cs + 1536;
      const newSize = coverage + 5 * cs;
      const written = seededBytes(8 * cs, 7);
      const base = new MemoryStorage({ name: 'c.qcow2' });
      const made = await createQcow2(base, { size: oldSize, ...config.options } as Qcow2CreateOptions);
      await made.write(oldSize - written.length, written);
      if (config.snapshot) await made.createSnapshot('s1');
      await made.close();
      const fault = new FaultStorage(base.toBytes(), 'c.qcow2');
      const disk = await openQcow2(fault, { readOnly: false });
      await disk.resize(newSize, { preallocation: mode });
      await disk.close();
      const grown = new Uint8Array(newSize);
      grown.set(written, oldSize - written.length);
      const content = grown.subarray(0, oldSize);
      const random = seededRandom(3);
      const seen = { old: 0, grown: 0 };
      let qemuLeft = hasQemuImg ? 4 : 0;
      for (const crash of MODES) {
        for (const n of fault.crashPoints()) {
          const where = `${config.name} ${mode}: crash after op ${n} of ${fault.ops.length} (${crash})`;
          const bytes = (await fault.crashImage(n, crash, random)).toBytes();
          const ro = await openQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
          const got = await ro.read(0, ro.size);
          await ro.close();
          expect(ro.size === oldSize || ro.size === newSize, `${where}: size ${ro.size}`).toBe(true);
          expect(Buffer.from(got).equals(Buffer.from(ro.size === oldSize ? content : grown)), `${where}: content`).toBe(true);
          seen[ro.size === oldSize ? 'old' : 'grown']++;
          const check = await checkQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
          expect(check.corruptions + check.checkErrors, `${where}: ${check.messages.slice(0, 3).join('; ')}`).toBe(0);
          if (qemuLeft > 0 && random() < 0.05) {
            qemuLeft--;
            const file = p('crash.qcow2');
            writeFileSync(file, bytes);
            expect([0, 3], `${where}: qemu-img check`).toContain(qemuImg(['check', file], { allowFail: true }).status);
          }
        }
      }
      expect(seen.old).toBeGreaterThan(0);
      expect(seen.grown).toBeGreaterThan(0);
      // Done, the image is clean: nothing leaked, and the added clusters are data clusters.
      expect(await checkQcow2(MemoryStorage.from(fault.current(), { name: 'done.qcow2' }))).toMatchObject({ corruptions: 0, leaks: 0 });
    }, 240_000);
  }
});
