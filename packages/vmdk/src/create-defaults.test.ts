// The adapter a new VMDK records when none is asked for: qemu-img's default, ide (with IDE's 16/63 geometry), for
// every subformat, as `-o help` says ("ide (default)"); streamOptimized used to default to lsilogic.
import { MemoryStorage, openRaw } from '@img/block';
import { FileStorage } from '@img/block/node';
import { collectBytes, describeQemu, qemuImg, tempDir } from '@img/testkit';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createVmdk, VMDK_CREATE_OPTIONS } from './create.js';
import { openVmdk } from './open.js';
import { streamVmdk } from './stream.js';

const SIZE = 64 << 20;
const GEOMETRY = ['ddb.adapterType', 'ddb.geometry.cylinders', 'ddb.geometry.heads', 'ddb.geometry.sectors'] as const;

function pick(ddb: Readonly<Record<string, string>>): Record<string, string | undefined> {
  return Object.fromEntries(GEOMETRY.map((k) => [k, ddb[k]]));
}

async function created(subformat: 'monolithicSparse' | 'streamOptimized'): Promise<Record<string, string | undefined>> {
  const storage = new MemoryStorage({ name: 'd.vmdk' });
  const disk = await createVmdk(storage, { size: SIZE, subformat });
  await disk.close();
  const back = await openVmdk(MemoryStorage.from(storage.toBytes(), { name: 'd.vmdk', readOnly: true }));
  try {
    return pick(back.ddb);
  } finally {
    await back.close();
  }
}

async function streamed(): Promise<Record<string, string | undefined>> {
  const bytes = await collectBytes((await streamVmdk(await openRaw(MemoryStorage.from(new Uint8Array(SIZE))))).chunks);
  const back = await openVmdk(MemoryStorage.from(bytes, { name: 'disk.vmdk', readOnly: true }));
  try {
    return pick(back.ddb);
  } finally {
    await back.close();
  }
}

describe('the default adapter is ide for every subformat, as -o help says', () => {
  it('-o help names ide as the default', () => {
    expect(VMDK_CREATE_OPTIONS.find((o) => o.name === 'adapter_type')?.help).toMatch(/ide \(default\)/);
  });

  it('createVmdk (monolithicSparse and streamOptimized) and streamVmdk record ide with 16 heads', async () => {
    const ide = { 'ddb.adapterType': 'ide', 'ddb.geometry.cylinders': '130', 'ddb.geometry.heads': '16', 'ddb.geometry.sectors': '63' };
    expect(await created('monolithicSparse')).toEqual(ide);
    expect(await created('streamOptimized')).toEqual(ide);
    expect(await streamed()).toEqual(ide);
  });
});

const dir = tempDir('vmdk-defaults-');
afterAll(() => dir.cleanup());

describeQemu('the default adapter and geometry match qemu-img create', () => {
  it('streamOptimized: the same ddb.adapterType and geometry as qemu-img', async () => {
    const path = join(dir.path, 'q.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', path, String(SIZE)]);
    const text = readFileSync(path, 'latin1');
    const theirs = Object.fromEntries(GEOMETRY.map((k) => [k, new RegExp(`^${k.replace(/\./g, '\\.')} = "([^"]*)"`, 'm').exec(text)?.[1]]));
    expect(await created('streamOptimized')).toEqual(theirs);
  });

  it("monolithicSparse: the new file holds the blocks qemu-img's does (the descriptor's unused sectors stay a hole), so `disk size` agrees", async () => {
    const theirs = join(dir.path, 'q-sparse.vmdk');
    const ours = join(dir.path, 'o-sparse.vmdk');
    qemuImg(['create', '-q', '-f', 'vmdk', theirs, String(SIZE)]);
    await (await createVmdk(await FileStorage.create(ours), { size: SIZE })).close();
    expect(statSync(ours).size).toBe(statSync(theirs).size);
    expect(statSync(ours).blocks).toBe(statSync(theirs).blocks);
  });
});
