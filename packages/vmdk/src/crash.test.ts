/**
 * Crash consistency of monolithicSparse writes (FaultStorage): a random
 * workload of writes (aligned or not, across grains), zero writes and
 * flushes runs on a sparse image, alone and over a parent; then the image
 * is rebuilt as a crash after every storage operation would leave it, in
 * the three crash models (drop, subset, torn). Every crash image must open,
 * check without corruption (a redundant table lagging the primary is no
 * corruption), and read, sector by sector, as one of the states between the
 * last completed flush and the step in flight. (It caught in-place writes
 * of partial sectors, which a crash could leave half old and half new: they
 * are now read, patched and written whole.)
 */
import { MemoryStorage } from '@img/block';
import { crashWindow, seededBytes, type CrashModelState, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { describe, expect, it } from 'vitest';
import { checkVmdk } from './check.js';
import { createVmdk } from './create.js';
import { openVmdk } from './open.js';
import { memoryResolver } from '../test/resolver.js';

const MODES: CrashMode[] = ['drop', 'subset', 'torn'];
const SIZE = 1 << 20;
const MAX_POINTS = 200;

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

async function emptySparse(): Promise<Uint8Array> {
  const s = new MemoryStorage({ name: 'crash.vmdk' });
  await (await createVmdk(s, { size: SIZE })).close();
  return s.toBytes();
}

async function workload(fault: FaultStorage, initial: Uint8Array, seed: number, resolver?: ReturnType<typeof memoryResolver>): Promise<CrashModelState[]> {
  const random = seededRandom(seed);
  const int = (n: number) => Math.floor(random() * n);
  const disk = await openVmdk(fault, { readOnly: false, ...(resolver ? { resolver } : {}) });
  const model = initial.slice();
  const states: CrashModelState[] = [{ size: SIZE, bytes: model.slice(), opEnd: fault.ops.length, flushed: true }];
  for (let i = 0; i < 24; i++) {
    const r = random();
    let offset = int(SIZE);
    if (random() < 0.5) offset -= offset % 512;
    const length = 1 + int(Math.min(150_000, SIZE - offset - 1));
    if (r < 0.7) {
      const data = seededBytes(length, seed * 100 + i);
      await disk.write(offset, data);
      model.set(data, offset);
    } else if (r < 0.85) {
      await disk.writeZeroes(offset, length);
      model.fill(0, offset, offset + length);
    } else {
      await disk.flush();
      states.push({ size: SIZE, bytes: model.slice(), opEnd: fault.ops.length, flushed: true });
      continue;
    }
    states.push({ size: SIZE, bytes: model.slice(), opEnd: fault.ops.length, flushed: false });
  }
  await disk.flush();
  states.push({ size: SIZE, bytes: model.slice(), opEnd: fault.ops.length, flushed: true });
  return states;
}

function mismatch(got: Uint8Array, window: CrashModelState[]): string | undefined {
  for (let s = 0; s < SIZE; s += 512) {
    const g = got.subarray(s, s + 512);
    if (!window.some((w) => same(w.bytes.subarray(s, s + 512), g))) return `sector at ${s} is in none of the ${window.length} states since the last flush`;
  }
  return undefined;
}

async function crashAll(fault: FaultStorage, states: CrashModelState[], seed: number, resolver?: ReturnType<typeof memoryResolver>): Promise<number> {
  const random = seededRandom(seed);
  let points = fault.crashPoints();
  if (points.length > MAX_POINTS) points = points.filter((_, i) => i % Math.ceil(points.length / MAX_POINTS) === 0 || i === points.length - 1);
  let images = 0;
  for (const mode of MODES) {
    for (const count of points) {
      const bytes = (await fault.crashImage(count, mode, random)).toBytes();
      const label = `${mode} after ${count}/${fault.ops.length} ops`;
      const report = await checkVmdk(MemoryStorage.from(bytes, { name: 'crash.vmdk' }));
      expect([label, report.corruptions, report.messages.filter((m) => !/redundant grain table/.test(m))]).toEqual([label, 0, []]);
      const disk = await openVmdk(MemoryStorage.from(bytes, { name: 'crash.vmdk', readOnly: true }), resolver ? { resolver } : {});
      expect(mismatch(await disk.read(0, SIZE), crashWindow(states, count)), label).toBeUndefined();
      await disk.close();
      images++;
    }
  }
  return images;
}

describe('monolithicSparse crash consistency', () => {
  for (const seed of [1, 2, 3]) {
    it(`seed ${seed}: every crash image opens, checks clean and holds every flushed byte`, async () => {
      const initial = await emptySparse();
      const fault = new FaultStorage(initial, 'crash.vmdk');
      const states = await workload(fault, new Uint8Array(SIZE), seed);
      expect(await crashAll(fault, states, seed)).toBeGreaterThan(30);
    });
  }

  it('over a parent: copy-on-write grains are whole before their entry points at them', async () => {
    const parentStorage = new MemoryStorage({ name: 'base.vmdk' });
    const parent = await createVmdk(parentStorage, { size: SIZE });
    const parentBytes = seededBytes(SIZE, 77);
    await parent.write(0, parentBytes);
    const cid = parent.cid.toString(16).padStart(8, '0');
    await parent.close();
    const files = new Map<string, Uint8Array | MemoryStorage>([['base.vmdk', parentStorage.toBytes()]]);
    const child = await emptySparse();
    const text = new TextDecoder().decode(child.subarray(512, 512 * 21)).replace(/\0+$/, '');
    child.fill(0, 512, 512 * 21);
    child.set(new TextEncoder().encode(text.replace('parentCID=ffffffff', `parentCID=${cid}`).replace('createType="monolithicSparse"\n', 'createType="monolithicSparse"\nparentFileNameHint="base.vmdk"\n')), 512);
    const resolver = memoryResolver(files);
    const fault = new FaultStorage(child, 'crash.vmdk');
    const states = await workload(fault, parentBytes, 9, resolver);
    expect(await crashAll(fault, states, 9, resolver)).toBeGreaterThan(30);
  });
});
