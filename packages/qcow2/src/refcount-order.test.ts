// amend -o refcount_bits=N (the refcount structures rewritten at the new width), data_file= and backing_file=,
// judged by qemu-img: check clean (no leak), the same content as before, qemu's refusals in its words; then every
// crash image of a width change is clean (leaks allowed) with the old width or the new one and the same content.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, FaultStorage, killedBytes, qemuCheck, qemuImg, qemuInfo, qemuIo, seededRandom, tempDir, type CrashMode } from '@img/testkit';
import { amendQcow2, type Qcow2AmendOptions } from './amend.js';
import { checkQcow2 } from './check-qcow2.js';

const tmp = tempDir('img-qcow2-refcount-order-');
afterAll(() => tmp.cleanup());
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
let n = 0;

/** An image with data, a snapshot (refcounts of 2) and 512-byte or 64 KiB clusters; its raw content beside it. */
function source(clusterSize: string): { file: string; raw: string } {
  const file = join(tmp.path, `src-${n++}.qcow2`);
  qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${clusterSize}`, file, '8M']);
  qemuIo(file, 'qcow2', ['write -P 1 0 1M', 'write -P 2 5M 100k']);
  qemuImg(['snapshot', '-c', 's1', file]);
  qemuIo(file, 'qcow2', ['write -P 3 512k 64k']);
  const raw = `${file}.raw`;
  qemuImg(['convert', '-O', 'raw', file, raw]);
  return { file, raw };
}

async function amend(file: string, options: Qcow2AmendOptions): Promise<void> {
  const storage = await FileStorage.open(file, { readOnly: false });
  try {
    await amendQcow2(storage, options);
  } finally {
    await storage.close();
  }
}

function clean(file: string, where: string): void {
  const q = qemuCheck(file, 'qcow2');
  expect({ corruptions: q.result?.corruptions ?? 0, leaks: q.result?.leaks ?? 0, errors: q.result?.['check-errors'] ?? 0, status: q.status }, `${where}: ${q.stderr}`).toEqual({ corruptions: 0, leaks: 0, errors: 0, status: 0 });
}

const refcountBits = (file: string) => (qemuInfo(file, 'qcow2')['format-specific'] as { data: Record<string, unknown> }).data['refcount-bits'];

describeQemu('amend -o refcount_bits=N, as qemu-img amend', () => {
  for (const clusterSize of ['64k', '512']) {
    it(`${clusterSize} clusters: every width in turn, check clean and the content unchanged`, async () => {
      const { file, raw } = source(clusterSize);
      for (const bits of [8, 64, 2, 32, 4, 16]) {
        await amend(file, { refcountBits: String(bits) });
        clean(file, `${clusterSize} ${bits}`);
        expect(refcountBits(file)).toBe(bits);
        expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', file, raw], { allowFail: true }).status, `${bits}`).toBe(0);
        expect(qemuImg(['snapshot', '-l', file]).stdout).toContain('s1');
      }
    });
  }

  it("a refcount the new width cannot hold: qemu's refusal, nothing written", async () => {
    const { file } = source('64k');
    const before = sha(readFileSync(file));
    const q = join(tmp.path, 'q-1bit.qcow2');
    writeFileSync(q, readFileSync(file));
    const theirs = qemuImg(['amend', '-o', 'refcount_bits=1', q], { allowFail: true }).stderr.trim();
    await expect(amend(file, { refcountBits: 1 })).rejects.toThrow(theirs.replace(/^qemu-img: /, ''));
    expect(sha(readFileSync(file))).toBe(before);
  });

  it('widths other than 16 need version 3; with compat=1.1 in the same call the upgrade comes first; compat=0.10,refcount_bits=16 narrows first', async () => {
    const v2 = join(tmp.path, 'v2.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '1M']);
    const theirs = qemuImg(['amend', '-o', 'refcount_bits=8', v2], { allowFail: true }).stderr.trim();
    await expect(amend(v2, { refcountBits: 8 })).rejects.toThrow(theirs.replace(/^qemu-img: /, ''));
    await amend(v2, { refcountBits: 8, compat: '1.1' });
    clean(v2, 'upgraded');
    expect(refcountBits(v2)).toBe(8);
    await amend(v2, { refcountBits: 16, compat: '0.10' });
    clean(v2, 'downgraded');
    expect((qemuInfo(v2, 'qcow2')['format-specific'] as { data: Record<string, unknown> }).data).toMatchObject({ compat: '0.10', 'refcount-bits': 16 });
  });

  it('every crash image of a width change is clean (leaks allowed), with the old or the new width and the same content', { timeout: 300_000 }, async () => {
    const { file, raw } = source('4k');
    const start = Uint8Array.from(readFileSync(file));
    const fault = new FaultStorage(start, 'order.qcow2');
    await amendQcow2(fault, { refcountBits: 64 });
    const judge = join(tmp.path, 'judge.qcow2');
    const seen = new Set<unknown>();
    const judged = new Set<string>();
    const random = seededRandom(3);
    for (const mode of ['kill', 'drop', 'subset', 'torn'] as Array<CrashMode | 'kill'>) {
      for (let i = 0; i <= fault.ops.length; i++) {
        const bytes = mode === 'kill' ? killedBytes(start, fault.ops, i) : (await fault.crashImage(i, mode, random)).toBytes();
        const key = sha(bytes);
        if (judged.has(key)) continue;
        judged.add(key);
        const where = `crash before op ${i} of ${fault.ops.length} (${mode})`;
        writeFileSync(judge, bytes);
        const q = qemuCheck(judge, 'qcow2');
        expect({ corruptions: q.result?.corruptions ?? 0, errors: q.result?.['check-errors'] ?? 0 }, `${where}: ${q.stderr}`).toEqual({ corruptions: 0, errors: 0 });
        const ours = await checkQcow2(MemoryStorage.from(bytes, { name: 'crash.qcow2' }));
        expect(ours.corruptions, `${where}: img check: ${ours.messages.slice(0, 3).join('; ')}`).toBe(0);
        expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', judge, raw], { allowFail: true }).status, where).toBe(0);
        seen.add(refcountBits(judge));
      }
    }
    expect([...seen].sort((a, b) => Number(a) - Number(b))).toEqual([16, 64]);
  });
});

describeQemu('amend -o data_file= and backing_file=, as qemu-img amend', () => {
  it('data_file= renames the data file of an image that has one (the file is not touched); refused on one that has none', async () => {
    const file = join(tmp.path, 'df.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'data_file=df.raw', file, '1M'], { cwd: tmp.path });
    await amend(file, { dataFile: 'other.raw' });
    expect((qemuInfo(file, 'qcow2')['format-specific'] as { data: Record<string, unknown> }).data['data-file']).toBe('other.raw');
    const plain = join(tmp.path, 'plain.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', plain, '1M']);
    await expect(amend(plain, { dataFile: 'x.raw' })).rejects.toThrow('data_file can only be set for images that use an external data file');
  });

  it("backing_file= other than the image's own: qemu's refusal, spelled for img; the same name is no change", async () => {
    const base = join(tmp.path, 'base.qcow2');
    const top = join(tmp.path, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top], { cwd: tmp.path });
    const theirs = qemuImg(['amend', '-o', 'backing_file=foo', top], { allowFail: true }).stderr;
    expect(theirs).toContain('Cannot amend the backing file');
    await expect(amend(top, { backingFile: 'foo' })).rejects.toThrow("Cannot amend the backing file\nYou can use 'img rebase' instead.");
    await amend(top, { backingFile: 'base.qcow2', backingFormat: 'qcow2', lazyRefcounts: 'on' });
    expect(qemuImg(['amend', '-o', 'backing_file=base.qcow2,backing_fmt=qcow2', top], { allowFail: true }).status).toBe(0);
    // The name alone differs from what the image says (a format), as qemu compares them.
    expect(qemuImg(['amend', '-o', 'backing_file=base.qcow2', top], { allowFail: true }).status).toBe(1);
    await expect(amend(top, { backingFile: 'base.qcow2' })).rejects.toThrow('Cannot amend the backing file');
    clean(top, 'same backing');
  });
});

describe('amend option names', () => {
  it('refusals name the -o option the user typed', async () => {
    const { parseAmendOptions } = await import('./amend.js');
    expect(() => parseAmendOptions({ dataFileRaw: 'on' } as never)).toThrow('amend cannot change data_file_raw');
  });
});
