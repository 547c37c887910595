/**
 * Crash consistency of the multi-write maintenance operations: rebase -u
 * (setBacking to a moved parent, a long name, a Hyper-V layout), a safe
 * rebase (the parent's differing sectors copied into the child, then
 * setBacking to the other parent), dropping the parent, resize (grow with
 * the BAT growing in place, shrink; dynamic, differencing, fixed),
 * makeEmpty and check's repair.
 *
 * Each operation runs on a FaultStorage; then, for every write or truncate
 * it issued, the file is rebuilt as a crash right after it would leave it
 * (drop, subset and torn models). Every crash image must open with img
 * (writable too), check without corruption (leaks are allowed: they are
 * what a repair fixes), resolve its parent (the old or the new one) and
 * read, whole, as the disk read before or after the operation. Each goes
 * through vhdiinfo (it must parse the image), a sample through qemu-img
 * (it must open it; `qemu-img check` has no check for vpc images, exit 63).
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { ImageError, MemoryStorage, type Resolver } from '@img/block';
import { hasQemuImg, seededBytes, tempDir, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { checkVhd } from './check.js';
import { createVhd } from './create.js';
import { parseDynamicHeader } from './dynamic-header.js';
import type { VhdDisk } from './disk.js';
import { openVhd } from './open.js';

const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
const SIZE = 64 * 1024;
const hasVhdiinfo = spawnSync('vhdiinfo', ['-V']).status === 0;
const tmp = tempDir('vhd-maint-crash-');
afterAll(() => tmp.cleanup());

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** Parent files by absolute path; names are resolved against the asking file's directory. */
function resolverOf(files: Map<string, Uint8Array>): Resolver {
  return async ({ name, from }) => {
    const path = posix.resolve(posix.dirname(from?.name ?? '/img/x'), name.replace(/^file:\/\//, '').replace(/\\/g, '/'));
    const bytes = files.get(path);
    if (!bytes) throw new ImageError('ERR_IMG_NOT_FOUND', `${path} not found`);
    return MemoryStorage.from(bytes, { name: path });
  };
}

interface Scenario {
  name: string;
  /** The image the operation runs on, and its path. */
  image: Uint8Array;
  path: string;
  files: Map<string, Uint8Array>;
  /** The operation, on the image opened writable over a FaultStorage. */
  run: (disk: VhdDisk) => Promise<void>;
  /** Open a crash image without its parent (check's repair runs on the storage, not a disk). */
  raw?: (storage: MemoryStorage) => Promise<void>;
}

interface Verdict {
  points: number;
  images: number;
  /** Crash images per view they read as (index into the views seen before and after). */
  views: number[];
  parents: Set<string>;
  leaky: number;
  sampled: number;
  /** Torn dynamic header writes (checksum wrong, fields readable, repaired). */
  tornHeaders: number;
  /** Unfinished block allocations vhdiinfo could not open (no footer at the end). */
  vhdiinfoUnfinished: number;
}

async function view(bytes: Uint8Array, path: string, files: Map<string, Uint8Array>): Promise<{ bytes: Uint8Array; parent: string | undefined }> {
  const disk = await openVhd(MemoryStorage.from(bytes, { name: path }), { resolver: resolverOf(files) });
  try {
    const info = await disk.info();
    return { bytes: await disk.read(0, disk.size), parent: info.fullBackingFile };
  } finally {
    await disk.close();
  }
}

/**
 * FaultStorage's torn model, except that a two-sector write is always cut
 * after its first sector, and a write cut to nothing did not
 * happen at all (FaultStorage applies it as an empty write, which grows
 * the file when it lies past the end: a file extended by a write none of
 * whose data landed, which journalling file systems in their default modes
 * do not leave, and which no fixed disk can survive: its only footer is
 * the one at the end).
 */
async function tornImage(fault: FaultStorage, initial: Uint8Array, count: number, random: () => number): Promise<Uint8Array> {
  const image = MemoryStorage.from(initial);
  let barrier = -1;
  for (let i = count - 1; i >= 0; i--)
    if (fault.ops[i]!.kind === 'flush') {
      barrier = i;
      break;
    }
  const ops = fault.ops.slice(0, count).filter((op) => op.kind !== 'flush');
  const lastPending = fault.ops
    .slice(barrier + 1, count)
    .filter((op) => op.kind !== 'flush')
    .pop();
  for (const op of ops) {
    if (op.kind === 'truncate') await image.truncate(op.size);
    else if (op.kind === 'write') {
      if (op !== lastPending) await image.write(op.position, op.data);
      else {
        // A write of two sectors (the dynamic header) is always cut after its first: the tear that matters.
        const sectors = Math.ceil(op.data.length / 512);
        const keep = (sectors === 2 ? 1 : Math.floor(random() * sectors)) * 512;
        if (keep > 0) await image.write(op.position, op.data.subarray(0, keep));
      }
    }
  }
  return image.toBytes();
}

/** Runs the scenario, then judges the image a crash after every write or truncate leaves. */
async function crashEveryPoint(sc: Scenario, seed: number): Promise<Verdict> {
  const before = await view(sc.image, sc.path, sc.files);
  const fault = new FaultStorage(sc.image, sc.path);
  if (sc.raw) {
    const storage = fault as unknown as MemoryStorage;
    await sc.raw(storage);
  } else {
    const disk = await openVhd(fault, { readOnly: false, resolver: resolverOf(sc.files) });
    await sc.run(disk);
    await disk.close();
  }
  const after = await view(fault.current(), sc.path, sc.files);
  const views = [before, after];
  const verdict: Verdict = { points: 0, images: 0, views: [0, 0], parents: new Set(), leaky: 0, sampled: 0, tornHeaders: 0, vhdiinfoUnfinished: 0 };
  const random = seededRandom(seed);
  const points = fault.crashPoints();
  verdict.points = points.length;
  for (const mode of MODES) {
    for (const count of points) {
      const label = `${sc.name}: ${mode} after ${count}/${fault.ops.length} ops`;
      const bytes = mode === 'torn' ? await tornImage(fault, sc.image, count, random) : (await fault.crashImage(count, mode, random)).toBytes();
      const report = await checkVhd(MemoryStorage.from(bytes, { name: sc.path }), { resolver: resolverOf(sc.files) });
      const corrupt = report.problems.filter((p) => p.severity === 'corruption').map((p) => p.code);
      // The one write that can tear into a state check calls corrupt: the 1 KiB dynamic header cut
      // between its two sectors (its checksum covers both). Readable as it is; repair fixes the checksum.
      const tornHeader = mode === 'torn' && corrupt.length > 0 && corrupt.every((c) => c === 'header-checksum');
      if (!tornHeader) expect([report.corruptions, report.checkErrors], `${label}: ${report.messages.join('; ')}`).toEqual([0, 0]);
      if (report.leaks) verdict.leaky++;
      const judge = async (image: Uint8Array, what: string) => {
        let got: Awaited<ReturnType<typeof view>>;
        try {
          got = await view(image, sc.path, sc.files);
        } catch (e) {
          throw new Error(`${what}: does not open: ${(e as Error).message}`);
        }
        const which = views.findIndex((v) => same(v.bytes, got.bytes) && v.parent === got.parent);
        if (which < 0) {
          const parents = views.map((v) => v.parent).join(' or ');
          expect.fail(`${what}: reads as neither the old nor the new disk (parent ${got.parent}, expected ${parents}; size ${got.bytes.length})`);
        }
        return { which, parent: got.parent };
      };
      const { which, parent } = await judge(bytes, label);
      verdict.views[which]!++;
      if (parent) verdict.parents.add(parent);
      if (tornHeader) {
        verdict.tornHeaders++;
        const repaired = MemoryStorage.from(bytes, { name: sc.path });
        expect((await checkVhd(repaired, { repair: 'all' })).corruptionsFixed, label).toBeGreaterThan(0);
        const again = await checkVhd(MemoryStorage.from(repaired.toBytes(), { name: sc.path }), { resolver: resolverOf(sc.files) });
        expect(again.corruptions, `${label}, repaired: ${again.messages.join('; ')}`).toBe(0);
        await judge(repaired.toBytes(), `${label}, repaired`);
      }
      const unfinished = report.problems.some((p) => p.code === 'unfinished-allocation');
      // Writable too: a crash image is one the next writer must accept.
      const rw = await openVhd(MemoryStorage.from(bytes, { name: sc.path }), { readOnly: false, resolver: resolverOf(sc.files) });
      await rw.close();
      const file = join(tmp.path, `${posix.basename(sc.path)}-${mode}-${count}.vhd`);
      writeFileSync(file, bytes);
      if (hasVhdiinfo) {
        const r = spawnSync('vhdiinfo', [file], { encoding: 'utf8' });
        // libvhdi reads only the footer at the end: a block allocation cut short (the data path, not
        // a maintenance step) can leave none there, behind a valid copy at offset 0. Counted.
        if (unfinished && r.status !== 0) verdict.vhdiinfoUnfinished++;
        else expect(r.status, `${label}: vhdiinfo: ${r.stderr}`).toBe(0);
      }
      if (verdict.images % 7 === 3) {
        if (hasQemuImg) {
          const info = spawnSync('qemu-img', ['info', '-f', 'vpc', file], { encoding: 'utf8' });
          expect(info.status, `${label}: qemu-img info: ${info.stderr}`).toBe(0);
          const check = spawnSync('qemu-img', ['check', '-f', 'vpc', file], { encoding: 'utf8' });
          // 63: qemu has no check for vpc images; anything else but 0 would mean it found damage.
          expect([0, 63], `${label}: qemu-img check: ${check.stdout}${check.stderr}`).toContain(check.status);
        }
        verdict.sampled++;
      }
      verdict.images++;
    }
  }
  return verdict;
}

/** A parent with data everywhere, under `path`. */
async function parentImage(path: string, seed: number, options: { uuid?: string } = {}): Promise<Uint8Array> {
  const storage = new MemoryStorage({ name: path });
  const p = await createVhd(storage, { size: SIZE, blockSize: 8192, ...(options.uuid ? { uuid: options.uuid } : {}) });
  await p.write(0, seededBytes(SIZE, seed));
  await p.close();
  return storage.toBytes();
}

/** A child /img/c.vhd of /img/p.vhd (or `parentPath`) with a few whole and partial blocks. */
async function childImage(files: Map<string, Uint8Array>, options: { locatorsAfterBat?: boolean; parentPath?: string } = {}): Promise<Uint8Array> {
  const storage = new MemoryStorage({ name: '/img/c.vhd' });
  const path = options.parentPath ?? '/img/p.vhd';
  const parent = await openVhd(MemoryStorage.from(files.get(path)!, { name: path }));
  const c = await createVhd(storage, {
    parent: { disk: parent, relativePath: posix.relative('/img', path), absolutePath: path },
    blockSize: 4096,
    ...(options.locatorsAfterBat ? { locatorPlacement: 'after-bat' as const } : {}),
  });
  await c.write(4096, seededBytes(8192, 2));
  await c.write(30_000, seededBytes(700, 3));
  await c.close();
  return storage.toBytes();
}

/** The image after the operation ran to the end. */
async function crashFinal(image: Uint8Array, files: Map<string, Uint8Array>, run: (d: VhdDisk) => Promise<void>): Promise<Uint8Array> {
  const storage = MemoryStorage.from(image, { name: '/img/c.vhd' });
  const d = await openVhd(storage, { readOnly: false, resolver: resolverOf(files) });
  await run(d);
  await d.close();
  return storage.toBytes();
}

/** Copies into the child every sector where the new parent reads differently from the old: what a safe rebase does first. */
async function copyDifferences(child: VhdDisk, next: VhdDisk | undefined): Promise<void> {
  const here = await child.read(0, child.size);
  const there = next ? await next.read(0, child.size) : new Uint8Array(child.size);
  for (let s = 0; s < child.size; s += 4096) {
    if (!same(here.subarray(s, s + 4096), there.subarray(s, s + 4096))) await child.write(s, here.subarray(s, s + 4096));
  }
}

const summary: string[] = [];
afterAll(() => {
  if (summary.length) process.stderr.write(`[vhd maintenance crash] ${summary.join('; ')}\n`);
});

function record(name: string, v: Verdict): void {
  summary.push(`${name}: ${v.points} points x 3 modes, ${v.views[0]} old / ${v.views[1]} new, ${v.leaky} leaky, ${v.tornHeaders} torn headers, all through vhdiinfo (${v.vhdiinfoUnfinished} unfinished block allocations it cannot open), ${v.sampled} through qemu-img`);
  expect(v.images).toBe(v.points * MODES.length);
}

describe('crash at every point of a maintenance operation: the image opens, checks clean and reads as before or after', () => {
  it('rebase -u to a moved parent (same unique id, different content): the locators are staged behind the blocks and moved back', async () => {
    // Parents in subdirectories, so that only the locators find them (the parent unicode name is a base name).
    const files = new Map<string, Uint8Array>();
    files.set('/img/old/p.vhd', await parentImage('/img/old/p.vhd', 1));
    const image = await childImage(files, { parentPath: '/img/old/p.vhd' });
    // The "moved" parent is another file with the old one's unique id, told apart by its content.
    const p = await openVhd(MemoryStorage.from(files.get('/img/old/p.vhd')!));
    const moved = new MemoryStorage({ name: '/img/new/p.vhd', data: files.get('/img/old/p.vhd')! });
    const m = await openVhd(moved, { readOnly: false });
    await m.write(0, seededBytes(SIZE, 9));
    await m.close();
    files.set('/img/new/p.vhd', moved.toBytes());
    expect((await openVhd(MemoryStorage.from(moved.toBytes()))).uniqueId).toBe(p.uniqueId);
    const v = await crashEveryPoint({ name: 'rebase -u moved', image, path: '/img/c.vhd', files, run: (d) => d.setBacking('new/p.vhd') }, 1);
    record('rebase -u moved', v);
    expect(v.tornHeaders).toBeGreaterThan(0);
    expect(v.parents).toEqual(new Set(['/img/old/p.vhd', '/img/new/p.vhd']));
    expect(v.views[0]).toBeGreaterThan(0);
    expect(v.views[1]).toBeGreaterThan(0);
    // The file keeps its size and its locator data stays in front of the BAT.
    const final = await crashFinal(image, files, (d) => d.setBacking('new/p.vhd'));
    expect(final.length).toBe(image.length);
    const header = parseDynamicHeader(final.subarray(512, 1536));
    for (const l of header.parentLocators.filter((x) => x.platformDataLength > 0)) expect(l.platformDataOffset).toBeLessThan(header.tableOffset);
  });

  it('rebase -u to a name longer than the old locator space (the data stays behind the last block)', async () => {
    const files = new Map<string, Uint8Array>();
    files.set('/img/p.vhd', await parentImage('/img/p.vhd', 1));
    const image = await childImage(files);
    const long = `${'d'.repeat(300)}/p.vhd`;
    files.set(`/img/${long}`, files.get('/img/p.vhd')!);
    const v = await crashEveryPoint({ name: 'rebase -u long', image, path: '/img/c.vhd', files, run: (d) => d.setBacking(long) }, 2);
    record('rebase -u long name', v);
    expect(v.parents).toEqual(new Set(['/img/p.vhd', `/img/${long}`]));
  });

  it('rebase -u of a Hyper-V layout child (locator data behind the BAT)', async () => {
    const files = new Map<string, Uint8Array>();
    files.set('/img/old/p.vhd', await parentImage('/img/old/p.vhd', 1));
    const image = await childImage(files, { locatorsAfterBat: true, parentPath: '/img/old/p.vhd' });
    files.set('/img/new/q.vhd', files.get('/img/old/p.vhd')!);
    const v = await crashEveryPoint({ name: 'rebase -u Hyper-V', image, path: '/img/c.vhd', files, run: (d) => d.setBacking('new/q.vhd') }, 3);
    record('rebase -u Hyper-V layout', v);
    expect(v.tornHeaders).toBeGreaterThan(0);
    expect(v.parents).toEqual(new Set(['/img/old/p.vhd', '/img/new/q.vhd']));
  });

  it('safe rebase onto another parent (different unique id and content): the guest view never changes', async () => {
    const files = new Map<string, Uint8Array>();
    files.set('/img/old/p.vhd', await parentImage('/img/old/p.vhd', 1));
    files.set('/img/new/o.vhd', await parentImage('/img/new/o.vhd', 5));
    const image = await childImage(files, { parentPath: '/img/old/p.vhd' });
    const run = async (d: VhdDisk) => {
      const next = await openVhd(MemoryStorage.from(files.get('/img/new/o.vhd')!, { name: '/img/new/o.vhd' }));
      await copyDifferences(d, next);
      await d.flush();
      await d.setBacking('new/o.vhd');
    };
    const v = await crashEveryPoint({ name: 'safe rebase', image, path: '/img/c.vhd', files, run }, 4);
    record('safe rebase', v);
    expect(v.tornHeaders).toBeGreaterThan(0);
    expect(v.parents).toEqual(new Set(['/img/old/p.vhd', '/img/new/o.vhd']));
  });

  it('safe rebase onto no parent: the child becomes dynamic, the guest view never changes', async () => {
    const files = new Map<string, Uint8Array>();
    files.set('/img/p.vhd', await parentImage('/img/p.vhd', 1));
    const image = await childImage(files);
    const run = async (d: VhdDisk) => {
      await copyDifferences(d, undefined);
      await d.flush();
      await d.setBacking(undefined);
    };
    const v = await crashEveryPoint({ name: 'rebase to none', image, path: '/img/c.vhd', files, run }, 5);
    record('rebase to none', v);
    expect(v.parents.has('/img/p.vhd')).toBe(true);
  });

  it('resize: a differencing disk whose BAT grows in place (blocks and, in a Hyper-V layout, locator data move)', async () => {
    for (const locatorsAfterBat of [false, true]) {
      const files = new Map<string, Uint8Array>();
      files.set('/img/p.vhd', await parentImage('/img/p.vhd', 1));
      const image = await childImage(files, { locatorsAfterBat });
      const v = await crashEveryPoint({ name: `resize differencing ${locatorsAfterBat}`, image, path: '/img/c.vhd', files, run: (d) => d.resize(16 * SIZE) }, 6);
      record(`resize differencing grow${locatorsAfterBat ? ' (Hyper-V layout)' : ''}`, v);
    }
  });

  it('resize: a dynamic disk grown (BAT in place) and shrunk; a fixed disk grown and shrunk', async () => {
    for (const [type, to] of [
      ['dynamic', 16 * SIZE],
      ['dynamic', SIZE / 2 + 1024],
      ['fixed', 2 * SIZE],
      ['fixed', SIZE / 2],
    ] as const) {
      const storage = new MemoryStorage({ name: '/img/d.vhd' });
      const d = await createVhd(storage, { type, size: SIZE, blockSize: 4096 });
      await d.write(0, seededBytes(SIZE, 7));
      await d.close();
      const v = await crashEveryPoint({ name: `resize ${type} to ${to}`, image: storage.toBytes(), path: '/img/d.vhd', files: new Map(), run: (x) => x.resize(to, { shrink: true }) }, 7);
      record(`resize ${type} ${SIZE} -> ${to}`, v);
    }
  });

  it('makeEmpty (img commit) and check -r leaks on an image with junk and a stale footer copy', async () => {
    const files = new Map<string, Uint8Array>();
    files.set('/img/p.vhd', await parentImage('/img/p.vhd', 1));
    const image = await childImage(files);
    record('makeEmpty', await crashEveryPoint({ name: 'makeEmpty', image, path: '/img/c.vhd', files, run: (d) => d.makeEmpty() }, 8));
    // Junk behind the footer and a stale copy at offset 0: both leaks, both repaired.
    const junk = new Uint8Array(image.length + 3 * 512);
    junk.set(image);
    junk.set(image.subarray(image.length - 512), junk.length - 512);
    const stale = await openVhd(MemoryStorage.from(junk, { name: '/img/c.vhd' }), { noBacking: true });
    expect((await checkVhd(MemoryStorage.from(junk))).leaks).toBeGreaterThan(0);
    await stale.close();
    const v = await crashEveryPoint(
      {
        name: 'check -r leaks',
        image: junk,
        path: '/img/c.vhd',
        files,
        run: async () => undefined,
        raw: async (s) => {
          await checkVhd(s, { repair: 'leaks' });
        },
      },
      9,
    );
    record('check -r leaks', v);
    expect(v.points).toBeGreaterThan(0);
  });
});
