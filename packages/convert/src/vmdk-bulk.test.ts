/**
 * Conversions into a new monolithicSparse VMDK go through the bulk writer
 * (vmdkDriver.createFresh): the copy puts data at its host position. The
 * output must be what qemu-img writes (check clean, the same content, the
 * same grains at the same file offsets) and what the general writer
 * writes, and `-t none` keeps the data out of the page cache.
 */
import { closeSync, ftruncateSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuCheck, qemuCompare, qemuImg, qemuMap, seededBytes, tempDir, pageCacheBytes as cached } from '@img/testkit';
import { convertFile } from './node.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** The file without its embedded descriptor (sectors 1-20: a CID of its own and the file's name). */
function withoutDescriptor(file: string): Buffer {
  const b = readFileSync(file);
  return Buffer.concat([b.subarray(0, 512), b.subarray(21 * 512)]);
}

describeQemu('img convert into a new monolithicSparse VMDK (bulk writer) against qemu-img convert', () => {
  let dir: string;
  let cleanup: () => void;
  let source: string;
  const p = (name: string) => join(dir, name);

  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('vmdk-bulk-'));
    source = p('source.raw');
    const fd = openSync(source, 'w');
    ftruncateSync(fd, 40 * MiB + 512);
    const put = (at: number, bytes: Uint8Array) => writeSync(fd, bytes, 0, bytes.length, at);
    put(0, seededBytes(3 * MiB, 1));
    put(5 * MiB + 1000, seededBytes(70_000, 2)); // unaligned, across grains
    put(9 * MiB, new Uint8Array(MiB)); // written zeros: data to SEEK_DATA, zeros to the copy
    put(9 * MiB + 256 * KiB, seededBytes(4096, 3)); // one 4 KiB piece in them
    put(20 * MiB - 100, seededBytes(200, 4)); // straddles a grain boundary
    put(40 * MiB, seededBytes(512, 5)); // the last sector, in a grain the disk covers in part
    closeSync(fd);
  });
  afterAll(() => cleanup());

  it('the same grains at the same offsets as qemu-img and as the general writer; check clean; identical content', async () => {
    const bulk = p('bulk.vmdk');
    const general = p('general.vmdk');
    const theirs = p('theirs.vmdk');
    await convertFile({ srcFormat: 'raw', dstFormat: 'vmdk', input: source, output: bulk });
    await convertFile({ srcFormat: 'raw', dstFormat: 'vmdk', input: source, output: general, bulk: false });
    qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', source, theirs]);
    expect(qemuCheck(bulk, 'vmdk').status).toBe(0);
    expect(qemuCompare(bulk, source, 'vmdk', 'raw')).toBe(true);
    expect(qemuMap(bulk, 'vmdk')).toEqual(qemuMap(theirs, 'vmdk'));
    expect(statSync(bulk).size).toBe(statSync(theirs).size);
    expect(withoutDescriptor(bulk).equals(withoutDescriptor(general))).toBe(true);
    expect(withoutDescriptor(bulk).equals(withoutDescriptor(theirs))).toBe(true);
  });

  it('-t none: the data never enters the page cache', async () => {
    const out = p('direct.vmdk');
    await convertFile({ srcFormat: 'raw', dstFormat: 'vmdk', input: source, output: out, cache: 'none' });
    const inCache = cached(out);
    // About 3.4 MiB of data written: only the header, descriptor and tables are cached.
    if (inCache !== undefined) expect(inCache).toBeLessThan(512 * KiB);
    expect(qemuCompare(out, source, 'vmdk', 'raw')).toBe(true);
    expect(qemuCheck(out, 'vmdk').status).toBe(0);
  });
});
