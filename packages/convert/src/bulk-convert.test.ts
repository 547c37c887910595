/**
 * Conversions into a new qcow2 file go through the bulk writer
 * (qcow2Driver.createFresh). The output must be what qemu-img writes:
 * check clean, same content, the same guest clusters allocated (qemu-img
 * map), no larger a file; and an abort leaves no file behind, or in a
 * storage the empty image the output was from the start.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, statSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { MemoryStorage, collectExtents } from '@img/block';
import { openRaw } from '@img/block';
import { FileStorage } from '@img/block/node';
import { checkQcow2, openQcow2, qcow2Driver } from '@img/qcow2';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, qemuIo, qemuMap, seededBytes, tempDir } from '@img/testkit';
import { convertDisk } from './convert.js';
import { convertFile } from './node.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Guest ranges holding data, merged whatever their host offsets. */
function dataRanges(file: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const m of qemuMap(file, 'qcow2').filter((x) => x.data)) {
    const last = out[out.length - 1];
    if (last && last[1] === m.start) last[1] += m.length;
    else out.push([m.start, m.start + m.length]);
  }
  return out;
}

describeQemu('img-convert into a new qcow2 (bulk writer) against qemu-img convert', () => {
  let dir: string;
  let cleanup: () => void;
  let source: string;
  const p = (name: string) => join(dir, name);

  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('bulk-convert-'));
    source = p('source.raw');
    const fd = openSync(source, 'w');
    ftruncateSync(fd, 64 * MiB + 512);
    const put = (at: number, bytes: Uint8Array) => writeSync(fd, bytes, 0, bytes.length, at);
    put(0, seededBytes(3 * MiB, 1)); // data from the start
    put(5 * MiB + 1000, seededBytes(70_000, 2)); // unaligned, across clusters
    put(9 * MiB, new Uint8Array(MiB)); // written zeros: data to SEEK_DATA, zeros to -S
    put(9 * MiB + 256 * KiB, seededBytes(4096, 3)); // one 4 KiB piece in them
    put(20 * MiB - 100, seededBytes(200, 4)); // straddles a cluster boundary
    put(64 * MiB, seededBytes(512, 5)); // the last sector
    closeSync(fd);
  });
  afterAll(() => cleanup());

  const cases: Array<{ name: string; ours: Record<string, unknown>; qemu: string[] }> = [
    { name: 'defaults', ours: {}, qemu: [] },
    { name: '-S 0', ours: { minZeroRun: 0 }, qemu: ['-S', '0'] },
    { name: '-S 64k', ours: { minZeroRun: 64 * KiB }, qemu: ['-S', '64k'] },
    { name: 'cluster_size=4k', ours: { createOptions: { clusterSize: '4k' } }, qemu: ['-o', 'cluster_size=4k'] },
    { name: 'compat=0.10,cluster_size=2M', ours: { createOptions: { compat: '0.10', clusterSize: '2M' } }, qemu: ['-o', 'compat=0.10,cluster_size=2M'] },
  ];
  for (const c of cases) {
    it(`${c.name}: check clean, identical, the same clusters allocated, no larger than qemu-img's`, async () => {
      const ours = p(`ours-${c.name.replace(/\W+/g, '_')}.qcow2`);
      const theirs = p(`theirs-${c.name.replace(/\W+/g, '_')}.qcow2`);
      await convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input: source, output: ours, ...c.ours });
      qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', ...c.qemu, source, theirs]);
      const check = qemuCheck(ours, 'qcow2');
      expect(check.status, check.stderr).toBe(0);
      expect(qemuCompare(ours, source, 'qcow2', 'raw')).toBe(true);
      expect(dataRanges(ours)).toEqual(dataRanges(theirs));
      expect(statSync(ours).size).toBeLessThanOrEqual(statSync(theirs).size);
    });
  }

  it('byte-identical outputs with the target allocated ahead of the copy (IMG_COPY_PREALLOC=1) and without (0), qcow2, raw and vpc', async () => {
    const before = process.env.IMG_COPY_PREALLOC;
    const out = (mode: string, f: string) => p(`prealloc-${mode}.${f}`);
    try {
      for (const mode of ['1', '0']) {
        process.env.IMG_COPY_PREALLOC = mode;
        for (const f of ['qcow2', 'raw', 'vpc']) await convertFile({ srcFormat: 'raw', dstFormat: f, input: source, output: out(mode, f) });
        await convertFile({ srcFormat: 'qcow2', dstFormat: 'raw', input: out(mode, 'qcow2'), output: out(mode, 'back.raw') });
      }
    } finally {
      if (before === undefined) delete process.env.IMG_COPY_PREALLOC;
      else process.env.IMG_COPY_PREALLOC = before;
    }
    for (const f of ['qcow2', 'raw', 'back.raw']) expect(readFileSync(out('1', f)).equals(readFileSync(out('0', f))), f).toBe(true);
    // The VHD footer and header carry the creation time and a new UUID: compared by content.
    expect(qemuCompare(out('1', 'vpc'), out('0', 'vpc'), 'vpc', 'vpc')).toBe(true);
    expect(qemuCheck(out('1', 'qcow2'), 'qcow2').status).toBe(0);
    // As sparse as without: the skipped zeros of a raw output are holes either way. Counted once written back:
    // until then ext4 may keep a piece's pages written directly (FileStorage direct 'auto') and its buffered
    // ends as separate written and unwritten extents, and more than four need an extent block (4 KiB more).
    for (const mode of ['1', '0']) {
      const fd = openSync(out(mode, 'raw'), 'r+');
      fsyncSync(fd);
      closeSync(fd);
    }
    expect(statSync(out('1', 'raw')).blocks).toBe(statSync(out('0', 'raw')).blocks);
  });

  it('data after allocated zeros lies in guest order (qemu-img check: no more fragments than qemu-img gives its own output), and the first 4 KiB qemu-img create writes into a raw file allocate nothing', async () => {
    const zeros = p('zeros-then-data.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', zeros, '8M']);
    qemuIo(zeros, 'qcow2', ['write -P 0 1M 1M', 'write -P 5 4M 1M']);
    const ours = p('zeros-ours.qcow2');
    const theirs = p('zeros-theirs.qcow2');
    await convertFile({ srcFormat: 'qcow2', dstFormat: 'qcow2', input: zeros, output: ours });
    qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', zeros, theirs]);
    const fragments = (f: string) => (qemuCheck(f, 'qcow2').result as { 'fragmented-clusters'?: number })['fragmented-clusters'] ?? 0;
    // Moved last-into-first, the 16 data clusters came out in reverse: 15 fragments.
    expect(fragments(ours)).toBeLessThanOrEqual(fragments(theirs));
    expect(qemuCompare(ours, zeros, 'qcow2', 'qcow2')).toBe(true);
    const raw = p('created.raw');
    qemuImg(['create', '-q', '-f', 'raw', raw, '8M']);
    qemuIo(raw, 'raw', ['write -P 5 4M 1M']);
    const fromRaw = p('created-ours.qcow2');
    const fromRawTheirs = p('created-theirs.qcow2');
    await convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input: raw, output: fromRaw });
    qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, fromRawTheirs]);
    expect(dataRanges(fromRaw)).toEqual(dataRanges(fromRawTheirs));
    expect(qemuCheck(fromRaw, 'qcow2').status).toBe(0);
    expect(qemuCompare(fromRaw, raw, 'qcow2', 'raw')).toBe(true);
  });

  it('writes the same clusters as the general writer (bulk: false), and from a qcow2 source', async () => {
    const general = p('general.qcow2');
    const bulk = p('bulk.qcow2');
    await convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input: source, output: general, bulk: false });
    await convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input: source, output: bulk });
    expect(dataRanges(bulk)).toEqual(dataRanges(general));
    expect(statSync(bulk).size).toBeLessThanOrEqual(statSync(general).size);
    // qcow2 -> qcow2: the source's clusters, as qemu-img copies them.
    const again = p('again.qcow2');
    const theirs = p('again-theirs.qcow2');
    await convertFile({ srcFormat: 'qcow2', dstFormat: 'qcow2', input: bulk, output: again });
    qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', bulk, theirs]);
    expect(qemuCheck(again, 'qcow2').status).toBe(0);
    expect(qemuCompare(again, source, 'qcow2', 'raw')).toBe(true);
    expect(dataRanges(again)).toEqual(dataRanges(theirs));
  });

  it('an abort stops the copy with ERR_IMG_ABORTED: the file is removed, a storage keeps the valid empty image it held from the start', async () => {
    const out = p('aborted.qcow2');
    const ac = new AbortController();
    await expect(convertFile({ srcFormat: 'raw', dstFormat: 'qcow2', input: source, output: out, signal: ac.signal, chunkSize: 256 * KiB, onProgress: (pr) => pr.bytesWritten > 0 && ac.abort() })).rejects.toMatchObject({
      code: 'ERR_IMG_ABORTED',
      message: `copy from ${source} to ${out} aborted`,
    });
    expect(existsSync(out)).toBe(false);

    const src = await openRaw(await FileStorage.open(source));
    const target = new MemoryStorage();
    const ac2 = new AbortController();
    await expect(convertDisk(src, qcow2Driver, target, { signal: ac2.signal, chunkSize: 256 * KiB, onProgress: (pr) => pr.bytesWritten > 0 && ac2.abort() })).rejects.toMatchObject({ code: 'ERR_IMG_ABORTED', message: `copy from ${source} to memory aborted` });
    // Header, refcount table, refcount block, L1 table: qemu-img create's empty image of that size, and nothing after it.
    expect(target.toBytes().length).toBe(4 * 64 * KiB);
    const empty = await openQcow2(MemoryStorage.from(target.toBytes()));
    expect(empty.size).toBe(src.size);
    expect((await collectExtents(empty.extents())).every((e) => e.kind !== 'data')).toBe(true);
    await empty.close();
    const check = await checkQcow2(MemoryStorage.from(target.toBytes()));
    expect({ c: check.corruptions, l: check.leaks }).toEqual({ c: 0, l: 0 });
    await src.close();
  });
});
