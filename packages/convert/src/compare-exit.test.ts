// img compare's exit status after both images opened, as qemu-img 7.2's (CLI audit 3 finding 7): 3 when the block
// status of an image cannot be had (a corrupt L1 entry), 4 when its data cannot be read (a compressed cluster that does
// not inflate). Before, both were 2, qemu-img's status for an image that does not open.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, seededBytes, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-compare-exit-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

/** The image's first L2 table offset and the 8-byte L2 entry of guest cluster 0, from its header. */
function firstEntries(bytes: Buffer): { l1: number; l2: number; entry: bigint } {
  const l1 = Number(bytes.readBigUInt64BE(40));
  const l2 = Number(bytes.readBigUInt64BE(l1) & ((1n << 62n) - 1n));
  return { l1, l2, entry: bytes.readBigUInt64BE(l2) };
}

describeQemu('img compare exit status when an image fails after it opened, as qemu-img', () => {
  it('3: the block status of an image fails (an L1 entry pointing at an unaligned L2 table)', () => {
    const good = p('good.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', good, '8M']);
    qemuIo(good, 'qcow2', ['write -P 1 0 1M']);
    const bytes = readFileSync(good);
    const { l1 } = firstEntries(bytes);
    bytes.writeBigUInt64BE(bytes.readBigUInt64BE(l1) + 0x200n, l1);
    const bad = p('bad-l1.qcow2');
    writeFileSync(bad, bytes);
    const ours = run('img', ['compare', bad, good]);
    expect(ours.status).toBe(qemuImg(['compare', bad, good], { allowFail: true }).status);
    expect(ours.status).toBe(3);
    expect(ours.stderr).toMatch(/^img compare: ERR_IMG_CORRUPT: qcow2: .*bad-l1\.qcow2: .*unaligned/);
  });

  it('4: the data of an image cannot be read (a compressed cluster that is not a deflate stream)', () => {
    const raw = p('pattern.raw');
    const data = Buffer.alloc(1 << 20);
    Buffer.from(seededBytes(65536, 5).map((b) => 0x61 + (b & 3))).copy(data);
    writeFileSync(raw, data);
    const compressed = p('c.qcow2');
    qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, compressed]);
    const bytes = readFileSync(compressed);
    const { entry } = firstEntries(bytes);
    const host = Number(entry & ((1n << 54n) - 1n)); // 64 KiB clusters: the offset is bits 0-53
    bytes.fill(0xff, host, host + 200);
    const bad = p('bad-deflate.qcow2');
    writeFileSync(bad, bytes);
    const ours = run('img', ['compare', bad, raw]);
    expect(ours.status).toBe(qemuImg(['compare', bad, raw], { allowFail: true }).status);
    expect(ours.status).toBe(4);
    expect(ours.stderr).toMatch(/^img compare: ERR_IMG_CORRUPT: qcow2: .*bad-deflate\.qcow2: compressed cluster/);
  });

  it('2 still: an image that does not open; where both fail, the first one is named (they open at once)', () => {
    expect(run('img', ['compare', p('missing.qcow2'), p('missing.qcow2')]).status).toBe(2);
    const good = p('good2.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', good, '1M']);
    writeFileSync(p('junk.qcow2'), Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 9, ...Buffer.alloc(504, 0xee)])); // qcow2 version 9
    for (const [a, b, named] of [
      [p('first-missing.qcow2'), p('junk.qcow2'), /first-missing\.qcow2/],
      [p('junk.qcow2'), p('second-missing.qcow2'), /junk\.qcow2/],
      [good, p('second-missing.qcow2'), /second-missing\.qcow2/],
      [p('first-missing.qcow2'), good, /first-missing\.qcow2/],
    ] as const) {
      const r = run('img', ['compare', a, b]);
      expect(r.status).toBe(qemuImg(['compare', a, b], { allowFail: true }).status);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(named);
    }
  });
});
