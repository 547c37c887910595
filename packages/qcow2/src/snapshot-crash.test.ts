/**
 * Crash ordering of internal snapshot operations (issue 13, point 5):
 * `snapshot -c`, `-d` and `-a`, on version 2 and 3, with and without a
 * backing file, on an image whose active layer and snapshots share data
 * and L2 tables. The operation runs on a FaultStorage that records every
 * write, truncate and flush; then the file is rebuilt as a crash would
 * leave it before each of those operations — a process kill (everything
 * issued reached the file) and the power-loss models (`drop`, `subset`,
 * `torn`) — and judged:
 *
 * - `qemu-img check --output=json`: no corruption, no check error (leaks
 *   are allowed); img's own check agrees;
 * - every view (active layer and each snapshot) reads as before the
 *   operation or as after it, against flat models kept by this test (what
 *   qemu reads from the starting image); `qemu-img convert -l
 *   snapshot.name=X` reads the views the operation changes the same way
 *   in the last old-state and the first new-state image of a kill;
 * - a write over the whole active layer afterwards (kill and drop images)
 *   leaves every snapshot as it was (a COPIED flag left on a shared
 *   cluster would let it change).
 *
 * The order used before (refcounts and COPIED flags changed in place, the
 * dirty bit on version 3) fails at kill points of all three operations.
 * Identical crash images are judged once.
 */
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStorage, type Resolver } from '@img/block';
import { hasQemuImg, inCI, killedBytes, seededBytes, tempDir, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { checkQcow2 } from './check-qcow2.js';
import { openQcow2 } from './open.js';

if (!hasQemuImg && inCI) throw new Error('qemu-img is needed in CI');
const tmp = tempDir('img-snapshot-crash-');
const tally = { points: 0, images: 0, distinct: 0 };
afterAll(() => {
  tmp.cleanup();
  process.stderr.write(`[qcow2 snapshot crash] ${tally.points} crash points, ${tally.images} crash images, ${tally.distinct} distinct ones judged\n`);
});

const CS = 512;
const K = 1024;
/**
 * Four L2 tables (32 KiB each with 512-byte clusters). The file (about
 * 110 KiB) spans one refcount block with version 2's 16-bit refcounts and
 * two with the 32-bit refcounts the version 3 images use.
 */
const SIZE = 128 * K;
const BACKING = 100 * K;
type Mode = CrashMode | 'kill';
const MODES: Mode[] = ['kill', 'drop', 'subset', 'torn'];

type Views = Map<string, Uint8Array>; // '' = active layer, else snapshot name

interface Base {
  bytes: Uint8Array;
  views: Views;
  resolver: Resolver;
}

const backingBytes = seededBytes(BACKING, 77);
const resolver: Resolver = async ({ name }) => {
  if (name === 'base.raw') return MemoryStorage.from(backingBytes, { name, readOnly: true });
  throw new Error(`unexpected backing file ${name}`);
};

/**
 * The image every operation starts from, made by qemu (qemu-img create,
 * qemu-io writes, qemu-img snapshot -c, so its snapshot L1 tables carry
 * qemu's flags): data written, snapshot s1, more written (one L2 table
 * copied, one left shared), a zeroed range and a compressed cluster,
 * snapshot s2, more written. The flat models follow each step.
 */
function makeBase(compat: 'v2' | 'v3', backed: boolean): Base {
  const file = join(tmp.path, `base-${compat}-${backed}.qcow2`);
  const options = [compat === 'v2' ? 'compat=0.10' : 'compat=1.1,refcount_bits=32', `cluster_size=${CS}`, ...(backed ? ['backing_file=base.raw', 'backing_fmt=raw'] : [])];
  const qemu = (tool: string, args: string[]) => {
    const r = spawnSync(tool, args, { encoding: 'utf8', cwd: tmp.path });
    if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  };
  qemu('qemu-img', ['create', '-f', 'qcow2', '-o', options.join(','), file, String(SIZE)]);
  const active = new Uint8Array(SIZE);
  if (backed) active.set(backingBytes);
  const views: Views = new Map();
  const io = (steps: Array<[op: 'write' | 'zero' | 'compressed', offset: number, length: number, pattern: number]>) => {
    const commands: string[] = [];
    for (const [op, offset, length, pattern] of steps) {
      commands.push('-c', op === 'zero' ? `write -z ${offset} ${length}` : `write ${op === 'compressed' ? '-c ' : ''}-P ${pattern} ${offset} ${length}`);
      active.fill(op === 'zero' ? 0 : pattern, offset, offset + length);
    }
    qemu('qemu-io', ['-f', 'qcow2', ...commands, file]);
  };
  io([
    ['write', 0, 30 * K, 1],
    ['write', 46 * K, 20 * K, 2],
    ['write', 86 * K, 14 * K, 3],
  ]);
  qemu('qemu-img', ['snapshot', '-c', 's1', file]);
  views.set('s1', active.slice());
  io([
    ['write', 20 * K, 33 * K, 4],
    ['zero', 60 * K, 3 * K, 0],
    ['compressed', 220 * CS, CS, 0x5a],
  ]);
  qemu('qemu-img', ['snapshot', '-c', 's2', file]);
  views.set('s2', active.slice());
  io([
    ['write', 3 * K, 4 * K, 5],
    ['write', 90 * K, 1 * K, 6],
  ]);
  views.set('', active);
  return { bytes: new Uint8Array(readFileSync(file)), views, resolver };
}

interface Operation {
  name: string;
  run: (disk: Awaited<ReturnType<typeof openQcow2>>) => Promise<unknown>;
  /** The views after the operation. */
  after: (before: Views) => Views;
}

const OPERATIONS: Operation[] = [
  {
    name: 'snapshot -c s3',
    run: (disk) => disk.createSnapshot('s3'),
    after: (v) => new Map([...v, ['s3', v.get('')!]]),
  },
  {
    name: 'snapshot -d s1',
    run: (disk) => disk.deleteSnapshot('s1'),
    after: (v) => new Map([...v].filter(([k]) => k !== 's1')),
  },
  {
    // The active layer shares most of its clusters with s2 alone: they become its own again (COPIED set).
    name: 'snapshot -d s2',
    run: (disk) => disk.deleteSnapshot('s2'),
    after: (v) => new Map([...v].filter(([k]) => k !== 's2')),
  },
  {
    name: 'snapshot -a s1',
    run: (disk) => disk.applySnapshot('s1'),
    after: (v) => new Map([...v, ['', v.get('s1')!]]),
  },
];

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** What img reads: the active layer and every snapshot, by name. */
async function readViews(bytes: Uint8Array): Promise<Views> {
  const disk = await openQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }), { resolver });
  const out: Views = new Map([['', await disk.read(0, disk.size)]]);
  for (const sn of disk.snapshots) {
    const view = await disk.openSnapshot(sn.name);
    out.set(sn.name, await view.read(0, view.size));
    await view.close();
  }
  await disk.close();
  return out;
}

function sameViews(a: Views, b: Views): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || sha(v) !== sha(w)) return false;
  }
  return true;
}

function describeViews(v: Views): string {
  return [...v].map(([k, b]) => `${k || 'active'}=${sha(b).slice(0, 8)}`).join(' ');
}

const run = promisify(execFile);

/** qemu-img check: corruptions and check errors (leaks are allowed). Exit status 3 means leaks only. */
async function qemuCheck(file: string): Promise<{ corruptions: number; errors: number; text: string }> {
  let stdout: string;
  let stderr: string;
  try {
    ({ stdout, stderr } = await run('qemu-img', ['check', '--output=json', '-f', 'qcow2', file], { encoding: 'utf8', cwd: tmp.path }));
  } catch (e) {
    const r = e as { code?: number; stdout?: string; stderr?: string };
    if (r.code !== 3) return { corruptions: -1, errors: -1, text: `exit ${r.code}: ${r.stdout ?? ''}${r.stderr ?? ''}` };
    stdout = r.stdout ?? '';
    stderr = r.stderr ?? '';
  }
  const json = JSON.parse(stdout) as { corruptions?: number; 'check-errors'?: number };
  return { corruptions: json.corruptions ?? 0, errors: json['check-errors'] ?? 0, text: stderr };
}

/** Runs `jobs` with at most `limit` at a time (qemu-img processes start slowly; the machine is shared). */
async function pooled(jobs: Array<() => Promise<void>>, limit = 4): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) await jobs[next++]!();
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

/** qemu-img's reading of a view (the active layer, or snapshot `name`). */
function qemuView(file: string, name: string): Uint8Array {
  const out = join(tmp.path, 'view.raw');
  const args = ['convert', '-f', 'qcow2', '-O', 'raw', ...(name ? ['-l', `snapshot.name=${name}`] : []), file, out];
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', cwd: tmp.path });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
  return readFileSync(out);
}

describe('snapshot operations, killed before every write, flush and truncate', () => {
  writeFileSync(join(tmp.path, 'base.raw'), backingBytes);
  for (const compat of ['v2', 'v3'] as const) {
    for (const backed of [false, true]) {
      const label = `${compat}${backed ? ', raw backing file' : ''}`;
      it.skipIf(!hasQemuImg)(
        `${label}: qemu-img check finds no corruption and every view is the old or the new one`,
        async () => {
          const base = makeBase(compat, backed);
          // The models are what img and qemu read from the starting image.
          expect(sameViews(await readViews(base.bytes), base.views), `${label}: img reads the starting image as the models say`).toBe(true);
          const file = join(tmp.path, `crash-${compat}-${backed}.qcow2`);
          writeFileSync(file, base.bytes);
          for (const [name, bytes] of base.views) expect(sha(qemuView(file, name)), `qemu reads ${name || 'active'} of the starting image`).toBe(sha(bytes));
          for (const op of OPERATIONS) {
            const fault = new FaultStorage(base.bytes, 'snap.qcow2');
            const disk = await openQcow2(fault, { readOnly: false, resolver });
            await op.run(disk);
            await disk.close();
            const before = base.views;
            const after = op.after(before);
            expect(sameViews(await readViews(fault.current()), after), `${label} ${op.name}: the finished operation`).toBe(true);
            const random = seededRandom(7);
            const judged = new Set<string>();
            // qemu-img judges every distinct crash image (in parallel, after img's own checks).
            const qemuJobs: Array<() => Promise<void>> = [];
            const samples: { old?: { bytes: Uint8Array; where: string }; new?: { bytes: Uint8Array; where: string } } = {};
            let sawOld = 0;
            let sawNew = 0;
            const points = [...Array(fault.ops.length + 1).keys()];
            tally.points += points.length;
            for (const mode of MODES) {
              for (const n of points) {
                const bytes = mode === 'kill' ? killedBytes(base.bytes, fault.ops, n) : (await fault.crashImage(n, mode, random)).toBytes();
                tally.images++;
                const key = sha(bytes);
                if (judged.has(key)) continue;
                const where = `${label} ${op.name}: crash before op ${n} of ${fault.ops.length} (${mode})`;
                judged.add(key);
                tally.distinct++;
                const views = await readViews(bytes);
                const isOld = sameViews(views, before);
                const isNew = sameViews(views, after);
                expect(isOld || isNew, `${where}: views ${describeViews(views)}, old ${describeViews(before)}, new ${describeViews(after)}`).toBe(true);
                if (isOld) sawOld++;
                else sawNew++;
                const ours = await checkQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
                expect(ours.corruptions, `${where}: img check: ${ours.messages.slice(0, 3).join('; ')}`).toBe(0);
                if (hasQemuImg) {
                  // Judged in batches, so that a failure shows early.
                  if (qemuJobs.length === 8) await pooled(qemuJobs.splice(0));
                  const path = join(tmp.path, `j${qemuJobs.length}.qcow2`);
                  qemuJobs.push(async () => {
                    writeFileSync(path, bytes);
                    const q = await qemuCheck(path);
                    expect({ corruptions: q.corruptions, errors: q.errors }, `${where}: qemu-img check: ${q.text.split('\n').slice(0, 4).join('; ')}`).toEqual({ corruptions: 0, errors: 0 });
                  });
                  // The last old-state and first new-state image of a kill are read by qemu too.
                  if (mode === 'kill' && isOld) samples.old = { bytes, where };
                  if (mode === 'kill' && isNew) samples.new ??= { bytes, where };
                }
                // A write over the whole active layer must not reach any snapshot (kill and drop images;
                // the others differ from them in leaks and torn unflushed writes, which check judges).
                if (mode !== 'kill' && mode !== 'drop') continue;
                const storage = MemoryStorage.from(bytes, { name: 'crash.qcow2' });
                const rw = await openQcow2(storage, { readOnly: false, resolver });
                const fill = seededBytes(rw.size, n + 1000);
                await rw.write(0, fill);
                await rw.close();
                const later = await readViews(storage.toBytes());
                expect(sha(later.get('')!), `${where}: the write after the crash`).toBe(sha(fill));
                for (const [name, b] of views) if (name) expect(sha(later.get(name)!), `${where}: a write after the crash changed snapshot ${name}`).toBe(sha(b));
                const again = await checkQcow2(MemoryStorage.from(storage.toBytes(), { name: 'crash.qcow2' }));
                expect(again.corruptions, `${where}: img check after the write: ${again.messages.slice(0, 3).join('; ')}`).toBe(0);
              }
            }
            await pooled(qemuJobs.splice(0));
            for (const sample of [samples.old, samples.new]) {
              if (!sample) continue;
              writeFileSync(file, sample.bytes);
              const views = await readViews(sample.bytes);
              // The views the operation changes (create: the new snapshot; apply: the active layer; delete: none).
              for (const [name, b] of views) {
                if (before.has(name) && after.has(name) && sha(before.get(name)!) === sha(after.get(name)!)) continue;
                expect(sha(qemuView(file, name)), `${sample.where}: qemu reads ${name || 'active'}`).toBe(sha(b));
              }
            }
            expect(sawOld, `${label} ${op.name}: some crash shows the old state`).toBeGreaterThan(0);
            expect(sawNew, `${label} ${op.name}: some crash shows the new state`).toBeGreaterThan(0);
          }
        },
        180_000,
      );
    }
  }
});
