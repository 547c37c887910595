/**
 * Images we write, judged by qemu: `qemu-img check` finds no error and no
 * leak, `qemu-img compare` finds them equal to the model; qemu-io writes
 * into images we created and we read back what qemu reads.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import fc from 'fast-check';
import { MemoryStorage, bytesEqual } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, qemuInfo, qemuIo, tempDir, seededBytes, withStorage } from '@img/testkit';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { SHAPES, opsArb, runOps, verify, clusterSizeOf } from '../test/write-model.js';

let dir: string;
let cleanup: () => void;

describeQemu('qemu-img judges the images we write', () => {
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-write-'));
  });
  afterAll(() => cleanup());

  let n = 0;
  for (const shape of SHAPES) {
    it(`${shape.name}: qemu-img check is clean and qemu-img compare matches the model`, async () => {
      const cs = clusterSizeOf(shape);
      await fc.assert(
        fc.asyncProperty(
          opsArb(shape, cs, () => shape.size, shape.ops ?? 12),
          async (ops) => {
            const result = await runOps(shape, ops);
            await verify(shape, result);
            const sub = join(dir, `case-${n++}`);
            mkdirSync(sub);
            const image = join(sub, 'image.qcow2');
            writeFileSync(image, (result.storage as MemoryStorage).toBytes());
            if (shape.backing) writeFileSync(join(sub, 'base.raw'), result.backing);
            if (shape.options.dataFile) writeFileSync(join(sub, 'data.img'), result.dataFile().toBytes());
            writeFileSync(join(sub, 'model.raw'), result.model);
            // qemu resolves the data file name against its working directory.
            const check = JSON.parse(spawnSyncIn(sub, ['check', '--output=json', 'image.qcow2'])) as Record<string, number>;
            expect(check.corruptions ?? 0, JSON.stringify(check)).toBe(0);
            expect(check.leaks ?? 0, JSON.stringify(check)).toBe(0);
            expect(spawnSyncStatus(sub, ['compare', '-f', 'qcow2', '-F', 'raw', 'image.qcow2', 'model.raw'])).toBe(0);
          },
        ),
        { seed: 777, numRuns: 4 },
      );
    });
  }

  it('refcount table growth (512-byte clusters, 64-bit refcounts) passes qemu-img check and compare', async () => {
    const path = join(dir, 'growth.qcow2');
    const disk = await createQcow2(await FileStorage.create(path), { size: 8 << 20, clusterSize: 512, refcountBits: 64 });
    const data = seededBytes(6 << 20, 11);
    for (let at = 0; at < data.length; at += 1 << 20) await disk.write(at, data.subarray(at, at + (1 << 20)));
    await disk.discard(1 << 20, 1 << 20);
    await disk.write(1 << 20, data.subarray(0, 300_000));
    await disk.close();
    const model = new Uint8Array(8 << 20);
    model.set(data);
    model.fill(0, 1 << 20, 2 << 20);
    model.set(data.subarray(0, 300_000), 1 << 20);
    writeFileSync(join(dir, 'growth.raw'), model);
    expect(qemuCheck(path).status).toBe(0);
    expect(spawnSyncStatus(dir, ['compare', '-f', 'qcow2', '-F', 'raw', 'growth.qcow2', 'growth.raw'])).toBe(0);
  });

  it('preallocation=metadata of an 8 GiB disk (metadata written a window at a time) checks clean', async () => {
    const path = join(dir, 'prealloc-big.qcow2');
    const disk = await createQcow2(await FileStorage.create(path), { size: 8 * 2 ** 30, clusterSize: '4k', preallocation: 'metadata' });
    await disk.write(5 * 2 ** 30 + 100, new Uint8Array([1, 2, 3]));
    await disk.close();
    expect(qemuCheck(path).status).toBe(0);
    const map = JSON.parse(qemuImg(['map', '--output=json', path]).stdout) as Array<{ data: boolean; start: number; length: number }>;
    expect(map.every((m) => m.data)).toBe(true);
    expect(map.reduce((n, m) => n + m.length, 0)).toBe(8 * 2 ** 30);
  });

  it('qemu-io writes into images we created; we read what qemu reads', async () => {
    const cases: Array<Record<string, unknown>> = [{ clusterSize: 4096 }, { clusterSize: 512, refcountBits: 1 }, { compat: 'v2', clusterSize: '8k' }, { clusterSize: '16k', extendedL2: 'on' }, { lazyRefcounts: 'on' }, { compressionType: 'zstd', clusterSize: '4k' }];
    for (const [i, options] of cases.entries()) {
      const path = join(dir, `ours-${i}.qcow2`);
      const disk = await createQcow2(await FileStorage.create(path), { size: 1024 * 1024, ...options });
      await disk.write(1000, seededBytes(70000, i + 1));
      await disk.writeZeroes(20000, 10000);
      await disk.close();
      qemuIo(path, 'qcow2', ['write -P 0x5a 65536 65536', 'write -z 4096 4096', 'discard 131072 65536', 'write -P 0x11 500000 3000', 'write -c -P 0x22 786432 65536']);
      const out = join(dir, `ours-${i}.raw`);
      qemuImg(['convert', '-O', 'raw', path, out]);
      const expected = new Uint8Array(readFileSync(out));
      const again = await openQcow2(await FileStorage.open(path), { resolver: fileResolver });
      expect(bytesEqual(await again.read(0, again.size), expected), JSON.stringify(options)).toBe(true);
      await again.close();
      expect((await withStorage(FileStorage.open(path), (s) => checkQcow2(s))).corruptions).toBe(0);
      expect(qemuCheck(path).status, JSON.stringify(options)).toBe(0);
    }
  });

  it('createQcow2 options give what qemu-img info reports, and fresh images check clean', async () => {
    const base = join(dir, 'info-base.qcow2');
    qemuImg(['create', '-f', 'qcow2', base, '1M']);
    const cases: Array<[Record<string, unknown>, Record<string, unknown>]> = [
      [{}, { compat: '1.1', 'refcount-bits': 16, 'lazy-refcounts': false, 'extended-l2': false, 'compression-type': 'zlib' }],
      [
        { compat: '0.10', clusterSize: '512' },
        { compat: '0.10', 'refcount-bits': 16 },
      ],
      [
        { refcountBits: '64', lazyRefcounts: 'on', clusterSize: '2M' },
        { 'refcount-bits': 64, 'lazy-refcounts': true },
      ],
      [
        { extendedL2: 'on', clusterSize: '128k', compressionType: 'zstd' },
        { 'extended-l2': true, 'compression-type': 'zstd' },
      ],
      [{ headerLength: 104 }, { compat: '1.1' }],
      [{ preallocation: 'metadata', clusterSize: '4k' }, {}],
      [{ preallocation: 'full', clusterSize: '4k' }, {}],
      [{ backingFile: 'info-base.qcow2', backingFormat: 'qcow2', resolver: fileResolver }, {}],
    ];
    for (const [i, [options, expected]] of cases.entries()) {
      const path = join(dir, `info-${i}.qcow2`);
      const disk = await createQcow2(await FileStorage.create(path), { size: 1024 * 1024, ...options });
      await disk.close();
      const info = qemuInfo(path);
      expect(info['virtual-size']).toBe(1024 * 1024);
      expect((info['format-specific'] as { data: Record<string, unknown> }).data, JSON.stringify(options)).toMatchObject(expected);
      if (options.backingFile) {
        expect(info['backing-filename']).toBe('info-base.qcow2');
        expect(info['backing-filename-format']).toBe('qcow2');
      }
      expect(qemuCheck(path).status, JSON.stringify(options)).toBe(0);
      if (options.preallocation) {
        const map = JSON.parse(qemuImg(['map', '--output=json', path]).stdout) as Array<{ data: boolean }>;
        expect(map.every((m) => m.data)).toBe(true);
      }
    }
    // A data file (the caller creates its storage) and data_file_raw.
    const path = join(dir, 'with-data.qcow2');
    const dataPath = join(dir, 'with-data.img');
    const disk = await createQcow2(await FileStorage.create(path), {
      size: 256 * 1024,
      clusterSize: '4k',
      dataFile: 'with-data.img',
      dataFileRaw: 'on',
      dataFileStorage: await FileStorage.create(dataPath),
    });
    await disk.write(8192, new Uint8Array(4096).fill(0x77));
    await disk.close();
    const r = spawnSyncIn(dir, ['info', '--output=json', 'with-data.qcow2']);
    expect((JSON.parse(r)['format-specific'] as { data: Record<string, unknown> }).data).toMatchObject({ 'data-file': 'with-data.img', 'data-file-raw': true });
    expect(JSON.parse(spawnSyncIn(dir, ['check', '--output=json', 'with-data.qcow2'])).corruptions ?? 0).toBe(0);
    const raw = readFileSync(dataPath);
    expect(raw[8192]).toBe(0x77);
    expect(createHash('sha256').update(raw).digest('hex')).toBe(createHash('sha256').update(rawOf(dir, 'with-data.qcow2')).digest('hex'));
  });
});

function spawnSyncIn(cwd: string, args: string[]): string {
  const r = spawnSync('qemu-img', args, { cwd, encoding: 'utf8' });
  return r.stdout;
}
function spawnSyncStatus(cwd: string, args: string[]): number {
  return spawnSync('qemu-img', args, { cwd, encoding: 'utf8' }).status ?? -1;
}
function rawOf(cwd: string, file: string): Uint8Array {
  spawnSync('qemu-img', ['convert', '-O', 'raw', file, 'export.raw'], { cwd });
  return new Uint8Array(readFileSync(join(cwd, 'export.raw')));
}
