import { readFileSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ioError, MemoryStorage, openRaw, rawDriver, type Storage } from '@img/block';
import { describeQemu, entryAt, entryOffsetAt, qemuImg, qemuIo, seededBytes, tempDir } from '@img/testkit';
import { convertDisk } from './convert.js';
import type { SalvageEvent } from './salvage.js';
import { run } from './test/cli.js';

const tmp = tempDir('salvage-');
afterAll(() => tmp.cleanup());

/** A storage whose reads touching [bad, bad + badLength) fail with EIO, as a failing disk's would. */
function failingStorage(data: Uint8Array, bad: number, badLength: number): Storage {
  const mem = MemoryStorage.from(data);
  const hits = (position: number, length: number) => position < bad + badLength && position + length > bad;
  return new Proxy(mem, {
    get(target, prop, receiver) {
      if (prop === 'readInto') {
        return async (position: number, into: Uint8Array) => {
          if (hits(position, into.length)) throw ioError('disk.img', `read of ${into.length} bytes at ${position} failed: Input/output error`);
          return target.readInto(position, into);
        };
      }
      if (prop === 'read') {
        return async (position: number, length: number) => {
          if (hits(position, length)) throw ioError('disk.img', `read of ${length} bytes at ${position} failed: Input/output error`);
          return target.read(position, length);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  }) as Storage;
}

describe('convert salvage (API)', () => {
  const size = 1 << 20;
  const data = seededBytes(size, 7);
  const bad = 3 * 65536 + 1024;

  it('fails without salvage: the storage error stands', async () => {
    const src = await openRaw(failingStorage(data, bad, 1000));
    await expect(convertDisk(src, rawDriver, new MemoryStorage())).rejects.toMatchObject({ code: 'ERR_IMG_IO' });
  });

  it('writes unreadable sectors as zeros and reports each one; everything else is copied', async () => {
    const src = await openRaw(failingStorage(data, bad, 1000));
    const events: SalvageEvent[] = [];
    const { disk } = await convertDisk(src, rawDriver, new MemoryStorage(), { salvage: true, onSalvage: (e) => events.push(e) });
    // 1000 bytes from 1024 into a cluster touch sectors 2 and 3 of it (offsets bad and bad + 512).
    expect(events.map((e) => [e.offset, e.length, e.stage])).toEqual([
      [bad, 512, 'read'],
      [bad + 512, 512, 'read'],
    ]);
    expect(events[0]!.error).toMatchObject({ code: 'ERR_IMG_IO' });
    const out = await disk.read(0, size);
    const expected = data.slice();
    expected.fill(0, bad, bad + 1024);
    expect(Buffer.from(out).equals(Buffer.from(expected))).toBe(true);
    await disk.close();
  });
});

/**
 * qcow2 with 64 KiB clusters, built by qemu then patched: guest cluster 0
 * compressed with its deflate stream overwritten (unreadable), cluster 1
 * plain data, cluster 2's L2 entry moved past the end of the file.
 */
describeQemu('img convert --salvage against qemu-img --salvage', () => {
  const image = join(tmp.path, 'broken.qcow2');

  it('builds the broken image', () => {
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', image, '1M']);
    qemuIo(image, 'qcow2', ['write -c -P 17 0 64k', 'write -P 34 64k 64k', 'write -P 51 128k 64k']);
    const bytes = new Uint8Array(readFileSync(image));
    const view = new DataView(bytes.buffer);
    const q = { bytes, view, clusterSize: 65536, l1Offset: Number(view.getBigUint64(40)), l1Size: view.getUint32(36) };
    const l2 = entryOffsetAt(q, q.l1Offset);
    const compressed = entryAt(q, l2);
    expect(compressed >> 62n).toBe(1n); // the compressed flag
    const host = Number(compressed & ((1n << 54n) - 1n));
    bytes.fill(0xff, host, host + 200);
    const third = entryAt(q, l2 + 16);
    view.setBigUint64(l2 + 16, (third & ~0x00ff_ffff_ffff_fe00n) | 0x1000_0000n);
    writeFileSync(image, bytes);
  });

  it('without --salvage both fail with status 1 and leave no output', () => {
    const ours = join(tmp.path, 'plain-ours.raw');
    const r = run('img', ['convert', '-O', 'raw', image, ours]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^img convert: ERR_IMG_CORRUPT: qcow2: .*compressed cluster at 0x50000/);
    expect(existsSync(ours)).toBe(false);
    expect(qemuImg(['convert', '-O', 'raw', image, join(tmp.path, 'plain-qemu.raw')], { allowFail: true }).status).toBe(1);
  });

  it('with --salvage: exit 0, the same bytes as qemu-img, one warning per unreadable sector as qemu-img prints', () => {
    const ours = join(tmp.path, 'ours.raw');
    const theirs = join(tmp.path, 'qemu.raw');
    const q = qemuImg(['convert', '--salvage', '-O', 'raw', image, theirs]);
    expect(q.status).toBe(0);
    const r = run('img', ['convert', '--salvage', '-O', 'raw', image, ours]);
    expect(r.status).toBe(0);
    expect(Buffer.compare(readFileSync(ours), readFileSync(theirs))).toBe(0);
    const warnings = (text: string, prog: string) =>
      text
        .split('\n')
        .filter((l) => l.startsWith(`${prog}: warning: error while reading offset `))
        .map((l) => Number(/offset (\d+):/.exec(l)![1]));
    const qemuOffsets = warnings(q.stderr, 'qemu-img');
    expect(qemuOffsets).toHaveLength(128);
    expect(warnings(r.stderr, 'img convert')).toEqual(qemuOffsets);
    // Into an existing image (-n): the unreadable sectors are written as zeros over what was there.
    const existing = join(tmp.path, 'existing.raw');
    writeFileSync(existing, new Uint8Array(1 << 20).fill(0xee));
    const n = run('img', ['convert', '-n', '--salvage', '-O', 'raw', image, existing]);
    expect(n.status).toBe(0);
    expect(warnings(n.stderr, 'img convert')).toEqual(qemuOffsets);
    expect(Buffer.compare(readFileSync(existing), readFileSync(theirs))).toBe(0);
    // And into qcow2, through the -O qcow2 path: the same guest bytes.
    const asQcow2 = join(tmp.path, 'ours.qcow2');
    expect(run('img', ['convert', '--salvage', '-q', '-O', 'qcow2', image, asQcow2]).status).toBe(0);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', theirs, asQcow2]).status).toBe(0);
  });
});
