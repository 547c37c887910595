/**
 * amendQcow2 judged by qemu: after every amend `qemu-img check` is clean,
 * `qemu-img compare` finds the image equal to a copy taken before, and
 * `qemu-img info` shows the new compat and lazy refcounts; qemu-img amend
 * run on another copy gives the same flags and content. Refusals leave the
 * image byte for byte as it was.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { FileStorage, fileResolver } from '@img/block/node';
import { describeQemu, qemuCheck, qemuImg, qemuInfo, qemuIo, qemuMap, tempDir, seededBytes, FaultStorage, seededRandom, type CrashMode } from '@img/testkit';
import { amendQcow2, parseAmendOptions, type Qcow2AmendOptions } from './amend.js';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { imageError } from '../test/fixtures.js';

describe('parseAmendOptions', () => {
  it('reads typed values and -o strings, camelCase and snake_case', () => {
    expect(parseAmendOptions({ compat: '0.10' })).toEqual({ version: 2, lazyRefcounts: undefined });
    expect(parseAmendOptions({ compat: 'v3', lazyRefcounts: true })).toEqual({ version: 3, lazyRefcounts: true });
    expect(parseAmendOptions({ lazyRefcounts: 'off' })).toEqual({ version: undefined, lazyRefcounts: false });
    expect(parseAmendOptions({ compat: '1.1', lazyRefcounts: 'on' })).toEqual({ version: 3, lazyRefcounts: true });
    expect(parseAmendOptions({ compat: 2, clusterSize: undefined } as never)).toEqual({ version: 2, lazyRefcounts: undefined });
  });

  it('refuses unknown and snake_case keys with the right spelling', () => {
    for (const [key, hint] of [
      ['lazy_refcounts', 'lazyRefcounts'],
      ['cluster_size', 'clusterSize'],
      ['lazyRefcount', 'lazyRefcounts'],
      ['compt', 'compat'],
    ]) {
      let err: unknown;
      try {
        parseAmendOptions({ [key!]: 'on' } as never);
      } catch (e) {
        err = e;
      }
      expect((err as { code: string }).code, key).toBe('ERR_IMG_INVALID_ARG');
      expect((err as Error).message).toContain(`"${key}"`);
      expect((err as Error).message).toContain(`did you mean ${hint}?`);
    }
    expect(() => parseAmendOptions({ bogus: 1 } as never)).toThrow(/unknown amend option "bogus" \(amend takes compat and lazyRefcounts\)/);
    expect(() => parseAmendOptions(undefined as never)).toThrow(expect.objectContaining({ code: 'ERR_IMG_INVALID_ARG' }));
  });

  it('refuses keys it cannot amend, naming them as -o names them, and bad values', () => {
    const names: Record<string, string> = { clusterSize: 'cluster_size', extendedL2: 'extended_l2', compressionType: 'compression_type', preallocation: 'preallocation', dataFileRaw: 'data_file_raw', size: 'size' };
    for (const [key, name] of Object.entries(names)) {
      let err: unknown;
      try {
        parseAmendOptions({ [key]: '4k' } as never);
      } catch (e) {
        err = e;
      }
      expect((err as { code: string }).code, key).toBe('ERR_IMG_UNSUPPORTED');
      expect((err as Error).message).toContain(`amend cannot change ${name}:`);
      expect((err as Error).message).not.toContain(key === name ? '\0' : key);
    }
    for (const bad of ['4k', '3', '128', '0', '']) {
      expect(() => parseAmendOptions({ refcountBits: bad }), bad).toThrow('Refcount width must be a power of two and may not exceed 64 bits');
    }
    expect(parseAmendOptions({ refcountBits: '8', dataFile: 'd.raw' })).toMatchObject({ refcountOrder: 3, dataFile: 'd.raw' });
    expect(() => parseAmendOptions({ compat: '0.9' as never })).toThrow(/invalid compat/);
    expect(() => parseAmendOptions({ lazyRefcounts: 'maybe' })).toThrow("Parameter 'lazy_refcounts' expects 'on' or 'off'");
    expect(() => parseAmendOptions({})).toThrow(/nothing to amend/);
  });
});

describeQemu('amendQcow2 judged by qemu-img', () => {
  let dir: string;
  let cleanup: () => void;
  let n = 0;
  beforeAll(() => {
    ({ path: dir, cleanup } = tempDir('qcow2-amend-'));
  });
  afterAll(() => cleanup());

  const fresh = (name: string) => join(dir, `${n++}-${name}`);
  const create = (path: string, size: string, opts: string[] = [], extra: string[] = []) => qemuImg(['create', '-q', '-f', 'qcow2', ...(opts.length ? ['-o', opts.join(',')] : []), ...extra, path, size]);
  const amend = async (path: string, options: Qcow2AmendOptions) => {
    // Closed here too: a refused option leaves the storage (and its image lock) with the caller.
    const storage = await FileStorage.open(path, { readOnly: false });
    try {
      await amendQcow2(storage, options);
    } finally {
      await storage.close();
    }
  };
  const formatSpecific = (path: string) => (qemuInfo(path, 'qcow2', dir)['format-specific'] as { data: Record<string, unknown> }).data;
  const compare = (a: string, b: string) => qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', a, b], { allowFail: true, cwd: dir }).status;
  const expectClean = (path: string) => {
    const c = qemuCheck(path, 'qcow2', dir);
    expect(c.status, c.stderr + JSON.stringify(c.result)).toBe(0);
    expect(c.result?.['leaks'] ?? 0).toBe(0);
    expect(c.result?.['corruptions'] ?? 0).toBe(0);
  };
  const snapshotRaw = (path: string, name: string) => {
    const out = `${path}.${name}.raw`;
    qemuImg(['convert', '-l', `snapshot.name=${name}`, '-f', 'qcow2', '-O', 'raw', path, out]);
    return readFileSync(out);
  };

  /**
   * Amends `path` with ours and a copy with qemu-img amend; checks both, and
   * that ours reads as before, has the flags asked for, and equals qemu's.
   */
  const amendBoth = async (path: string, options: Qcow2AmendOptions, oSpec: string, expected: { compat: string; lazy?: boolean }, snapshots: string[] = []) => {
    const before = `${path}.before`;
    const theirs = `${path}.qemu`;
    copyFileSync(path, before);
    copyFileSync(path, theirs);
    const snapsBefore = snapshots.map((s) => snapshotRaw(before, s));
    const dirty = qemuInfo(path)['dirty-flag'] === true;
    await amend(path, options);
    expectClean(path);
    expect(compare(before, path)).toBe(0);
    snapshots.forEach((s, i) => expect(snapshotRaw(path, s).equals(snapsBefore[i]!), `snapshot ${s}`).toBe(true));
    const ours = formatSpecific(path);
    expect(ours['compat']).toBe(expected.compat);
    if (expected.compat === '1.1') expect(ours['lazy-refcounts']).toBe(expected.lazy ?? false);
    else expect(ours['lazy-refcounts']).toBeUndefined();
    qemuImg(['amend', '-f', 'qcow2', '-o', oSpec, theirs], { cwd: dir });
    const q = formatSpecific(theirs);
    expect(ours['compat']).toBe(q['compat']);
    expect(ours['lazy-refcounts']).toBe(q['lazy-refcounts']);
    expect(ours['refcount-bits']).toBe(q['refcount-bits']);
    expect(ours['compression-type']).toBe(q['compression-type']);
    expect(compare(theirs, path)).toBe(0);
    // Same header layout as qemu's: fields, extensions (feature name table for v3 only), backing file name.
    const [a, b] = [readFileSync(path).subarray(0, 1024), readFileSync(theirs).subarray(0, 1024)];
    // A dirty image's refcounts are rebuilt by qemu in new clusters (refcount table offset and size, bytes 48-59); ours in place.
    const diff = [...a.keys()].filter((i) => a[i] !== b[i] && !(dirty && i >= 48 && i < 60));
    expect(diff, `ours ${a.subarray(diff[0], (diff[0] ?? 0) + 16).toString('hex')} qemu ${b.subarray(diff[0], (diff[0] ?? 0) + 16).toString('hex')}`).toEqual([]);
    // Our own reader agrees with qemu on the amended image.
    await using disk = await openQcow2(await FileStorage.open(path), { resolver: fileResolver });
    expect((await disk.info()).formatSpecific?.['compat']).toBe(expected.compat);
  };

  /** A refusal: the error names the reason and the image is unchanged. */
  const refused = async (path: string, options: Qcow2AmendOptions, pattern: RegExp, code = 'ERR_IMG_UNSUPPORTED') => {
    const before = readFileSync(path);
    const err = await imageError(amend(path, options));
    expect(err.code).toBe(code);
    expect(err.message).toMatch(pattern);
    expect(readFileSync(path).equals(before)).toBe(true);
  };

  /** A v3 image made by qemu with data, plain and preallocated zero clusters, and a snapshot taking some of them. */
  const qemuV3WithZeros = (path: string, opts: string[] = [], extra: string[] = []) => {
    create(path, '4M', opts, extra);
    qemuIo(path, 'qcow2', ['write -P 0x11 0 192k', 'write -P 0x22 1M 64k', 'write -z 512k 128k']);
    qemuImg(['snapshot', '-c', 's1', path]);
    // Preallocated zero (keeps its host cluster, shared with s1), plain zero over s1's zero, fresh data.
    qemuIo(path, 'qcow2', ['write -z 0 64k', 'write -z 576k 64k', 'write -z -u 128k 64k', 'write -P 0x33 2M 64k', 'write -z 3M 64k']);
  };

  it('compat=0.10 from a qemu v3 image with zero clusters and a snapshot (no backing: plain zeros become unallocated)', async () => {
    const path = fresh('v3.qcow2');
    qemuV3WithZeros(path);
    expect(qemuMap(path).some((m) => m.zero && m.present)).toBe(true);
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' }, ['s1']);
    // No zero flag is left: zero clusters read as unallocated (no backing) or as data.
    expect(qemuMap(path).filter((m) => m.present && m.zero && !m.data)).toEqual([]);
    expect(readFileSync(path).readUInt32BE(4)).toBe(2);
  });

  it('compat=0.10 keeps the backing file: zero clusters become zeroed clusters, the backing file stays hidden', async () => {
    const base = fresh('base.qcow2');
    create(base, '4M');
    qemuIo(base, 'qcow2', ['write -P 0x5a 0 4M']);
    const path = fresh('over.qcow2');
    qemuV3WithZeros(path, [], ['-b', base.split('/').pop()!, '-F', 'qcow2']);
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' }, ['s1']);
    const info = qemuInfo(path, 'qcow2', dir);
    expect(info['backing-filename']).toBe(base.split('/').pop());
    expect(info['backing-filename-format']).toBe('qcow2');
    // The zeroed ranges still read as zeros, not as the backing file's 0x5a.
    const out = qemuIo(path, 'qcow2', ['read -P 0 0 64k', 'read -P 0 512k 128k', 'read -P 0 3M 64k']);
    expect(out).not.toMatch(/Pattern verification failed/);
  });

  it('compat=0.10 does not write zeros over a cluster a snapshot still reads (qemu does)', async () => {
    const path = fresh('shared.qcow2');
    create(path, '1M');
    qemuIo(path, 'qcow2', ['write -P 7 0 64k']);
    qemuImg(['snapshot', '-c', 's1', path]);
    qemuIo(path, 'qcow2', ['write -z 0 64k']);
    const s1 = snapshotRaw(path, 's1');
    const before = `${path}.before`;
    copyFileSync(path, before);
    await amend(path, { compat: 'v2' });
    expectClean(path);
    expect(compare(before, path)).toBe(0);
    expect(snapshotRaw(path, 's1').equals(s1)).toBe(true);
  });

  it('compat=0.10 from a lazy-refcount image left dirty by a killed qemu-io repairs the refcounts first', async () => {
    const path = fresh('dirty.qcow2');
    create(path, '1M', ['lazy_refcounts=on']);
    qemuIo(path, 'qcow2', ['write -P 1 0 64k']);
    qemuImg(['snapshot', '-c', 's1', path]);
    qemuIo(path, 'qcow2', ['write -z 0 64k']);
    try {
      qemuIo(path, 'qcow2', ['write -P 2 128k 128k', 'sigraise 9']);
    } catch {
      // killed on purpose
    }
    expect(qemuInfo(path)['dirty-flag']).toBe(true);
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' });
  });

  it('lazy_refcounts=off on a dirty image makes refcounts exact and clears the dirty bit', async () => {
    const path = fresh('dirty-off.qcow2');
    create(path, '1M', ['lazy_refcounts=on']);
    try {
      qemuIo(path, 'qcow2', ['write -P 1 0 192k', 'sigraise 9']);
    } catch {
      // killed on purpose
    }
    expect(qemuCheck(path).status).not.toBe(0);
    await amendBoth(path, { lazyRefcounts: 'off' }, 'lazy_refcounts=off', { compat: '1.1', lazy: false });
    expect(qemuInfo(path)['dirty-flag']).toBe(false);
  });

  it('lazy_refcounts on and off on a v3 image', async () => {
    const path = fresh('lazy.qcow2');
    create(path, '1M');
    qemuIo(path, 'qcow2', ['write -P 3 0 100k']);
    await amendBoth(path, { lazyRefcounts: true }, 'lazy_refcounts=on', { compat: '1.1', lazy: true });
    await amendBoth(path, { lazyRefcounts: 'off' }, 'lazy_refcounts=off', { compat: '1.1', lazy: false });
    // An external data file is neither needed nor opened to switch lazy refcounts.
    const withData = fresh('with-data.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'lazy-data.raw')}`, withData, '1M'], { cwd: dir });
    qemuIo(withData, 'qcow2', ['write -P 5 0 64k']);
    await amend(withData, { lazyRefcounts: 'on' });
    expectClean(withData);
    expect(formatSpecific(withData)['lazy-refcounts']).toBe(true);
    // Asking for what the image already has changes nothing.
    const before = readFileSync(path);
    await amend(path, { compat: '1.1', lazyRefcounts: 'off' });
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('compat=1.1 from a qemu v2 image with a backing file, its format and a snapshot; then lazy refcounts', async () => {
    const base = fresh('base2.raw');
    writeFileSync(base, seededBytes(2 << 20, 5));
    const path = fresh('v2.qcow2');
    create(path, '2M', ['compat=0.10'], ['-b', base.split('/').pop()!, '-F', 'raw']);
    qemuIo(path, 'qcow2', ['write -P 9 64k 64k', 'write -P 0 1M 64k']);
    qemuImg(['snapshot', '-c', 'old', path]);
    qemuIo(path, 'qcow2', ['write -P 8 64k 4k']);
    await amendBoth(path, { compat: '1.1' }, 'compat=1.1', { compat: '1.1' }, ['old']);
    const info = qemuInfo(path, 'qcow2', dir);
    expect(info['backing-filename']).toBe(base.split('/').pop());
    expect(info['backing-filename-format']).toBe('raw');
    expect(readFileSync(path).readUInt32BE(100)).toBe(112);
    await amendBoth(path, { lazyRefcounts: 'on' }, 'lazy_refcounts=on', { compat: '1.1', lazy: true }, ['old']);
    // And back down again.
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' }, ['old']);
  });

  it('compat=0.10 with 512-byte clusters and a backing file: thousands of new zeroed clusters grow the refcount structures', async () => {
    const base = fresh('small-base.raw');
    writeFileSync(base, seededBytes(4 << 20, 12));
    const path = fresh('small.qcow2');
    create(path, '4M', ['cluster_size=512'], ['-b', base.split('/').pop()!, '-F', 'raw']);
    qemuIo(path, 'qcow2', ['write -P 1 0 100k', 'write -z 64k 3M', 'write -P 2 2M 4k']);
    qemuImg(['snapshot', '-c', 'z', path]);
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' }, ['z']);
  });

  it('keeps an unknown header extension up and down, where qemu keeps it', async () => {
    const path = fresh('unknown-ext.qcow2');
    create(path, '1M', ['compat=0.10']);
    qemuIo(path, 'qcow2', ['write -P 2 0 64k']);
    const bytes = readFileSync(path);
    bytes.writeUInt32BE(0x12345678, 72);
    bytes.writeUInt32BE(5, 76);
    bytes.write('hello', 80);
    bytes.fill(0, 85, 96);
    writeFileSync(path, bytes);
    await amendBoth(path, { compat: '1.1' }, 'compat=1.1', { compat: '1.1' });
    expect(readFileSync(path).includes(Buffer.from('hello'))).toBe(true);
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' });
    expect(readFileSync(path).readUInt32BE(72)).toBe(0x12345678);
  });

  it('compat=1.1 and lazy_refcounts=on in one call', async () => {
    const path = fresh('v2-lazy.qcow2');
    create(path, '1M', ['compat=0.10']);
    qemuIo(path, 'qcow2', ['write -P 4 0 64k']);
    await amendBoth(path, { compat: '1.1', lazyRefcounts: 'on' }, 'compat=1.1,lazy_refcounts=on', { compat: '1.1', lazy: true });
  });

  it('images made by createQcow2: v3 with zeros, a snapshot and a backing file down to 0.10, v2 up to 1.1', async () => {
    const base = fresh('ours-base.raw');
    writeFileSync(base, seededBytes(4 << 20, 9));
    const path = fresh('ours.qcow2');
    const name = base.split('/').pop()!;
    const disk = await createQcow2(await FileStorage.create(path), { size: 4 << 20, clusterSize: '4k', backingFile: name, backingFormat: 'raw', resolver: fileResolver, lazyRefcounts: true });
    await disk.write(0, seededBytes(300_000, 1));
    await disk.writeZeroes(8192, 8192, { mayUnmap: false });
    await disk.writeZeroes(1 << 20, 1 << 20);
    await disk.createSnapshot('snap');
    await disk.writeZeroes(0, 4096, { mayUnmap: false });
    await disk.write(3 << 20, seededBytes(5000, 2));
    await disk.close();
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' }, ['snap']);

    const v2 = fresh('ours-v2.qcow2');
    const d2 = await createQcow2(await FileStorage.create(v2), { size: 1 << 20, compat: 'v2', clusterSize: 512 });
    await d2.write(1000, seededBytes(70_000, 3));
    await d2.createSnapshot('a');
    await d2.write(0, seededBytes(512, 4));
    await d2.close();
    await amendBoth(v2, { compat: 'v3', lazyRefcounts: 'on' }, 'compat=1.1,lazy_refcounts=on', { compat: '1.1', lazy: true }, ['a']);
  });

  it('compat=0.10 of a zstd image without compressed clusters switches to zlib, as qemu', async () => {
    const path = fresh('zstd-plain.qcow2');
    create(path, '1M', ['compression_type=zstd']);
    qemuIo(path, 'qcow2', ['write -P 6 0 64k']);
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' });
  });

  it('compat=0.10 keeps zlib-compressed clusters', async () => {
    const path = fresh('zlib-c.qcow2');
    create(path, '1M');
    qemuIo(path, 'qcow2', ['write -c -P 6 0 64k', 'write -z 64k 64k']);
    await amendBoth(path, { compat: '0.10' }, 'compat=0.10', { compat: '0.10' });
  });

  describe('refusals', () => {
    it('lazy_refcounts=on on a v2 image (qemu: needs compat=1.1)', async () => {
      const path = fresh('v2-lazy-refused.qcow2');
      create(path, '1M', ['compat=0.10']);
      await refused(path, { lazyRefcounts: 'on' }, /compat=1\.1/);
      await refused(path, { compat: '0.10', lazyRefcounts: true }, /compat=1\.1/);
      expect(qemuImg(['amend', '-f', 'qcow2', '-o', 'lazy_refcounts=on', path], { allowFail: true }).status).not.toBe(0);
      const v3 = fresh('v3-lazy-down.qcow2');
      create(v3, '1M');
      await refused(v3, { compat: '0.10', lazyRefcounts: 'on' }, /compat=1\.1/);
    });

    it('options amend cannot change', async () => {
      const path = fresh('keys.qcow2');
      create(path, '1M');
      await refused(path, { clusterSize: '4k' } as never, /amend cannot change cluster_size/);
      await refused(path, { compat: '0.10', refcountBits: 8 } as never, /Refcount widths other than 16 bits require compatibility level 1.1 or above/);
      expect(qemuImg(['amend', '-f', 'qcow2', '-o', 'cluster_size=4k', path], { allowFail: true }).status).not.toBe(0);
    });

    const downgradeRefused: Array<[string, string[], RegExp, (p: string) => void]> = [
      ['refcount_bits=8', ['refcount_bits=8'], /16-bit refcounts/, () => undefined],
      ['extended L2', ['extended_l2=on', 'cluster_size=64k'], /extended L2/, () => undefined],
      ['an external data file', ['data_file=data.raw'], /external data file/, () => undefined],
      ['zstd with compressed clusters', ['compression_type=zstd'], /zstd/, (p) => void qemuIo(p, 'qcow2', ['write -c -P 1 0 64k'])],
      [
        'a snapshot of another disk size',
        [],
        /snapshot "s"/,
        (p) => {
          qemuImg(['snapshot', '-c', 's', p]);
          qemuImg(['resize', '-f', 'qcow2', p, '2M']);
        },
      ],
    ];
    for (const [what, opts, pattern, prepare] of downgradeRefused) {
      it(`compat=0.10 with ${what}, as qemu refuses`, async () => {
        const path = fresh('refuse.qcow2');
        qemuImg(['create', '-q', '-f', 'qcow2', ...(opts.length ? ['-o', opts.join(',')] : []), path, '1M'], { cwd: dir });
        prepare(path);
        await refused(path, { compat: '0.10' }, pattern);
        const copy = `${path}.qemu`;
        copyFileSync(path, copy);
        expect(qemuImg(['amend', '-f', 'qcow2', '-o', 'compat=0.10', copy], { allowFail: true, cwd: dir }).status).not.toBe(0);
      });
    }

    it('compat=0.10 with bitmaps (qemu downgrades and leaks their clusters; we refuse)', async () => {
      const path = fresh('bitmaps.qcow2');
      create(path, '1M');
      qemuImg(['bitmap', '--add', path, 'b0']);
      await refused(path, { compat: '0.10' }, /bitmaps/);
    });

    it('a corrupt image', async () => {
      const path = fresh('corrupt.qcow2');
      create(path, '1M');
      const bytes = readFileSync(path);
      bytes[79] = bytes[79]! | 2;
      writeFileSync(path, bytes);
      await refused(path, { lazyRefcounts: 'on' }, /corrupt/, 'ERR_IMG_CORRUPT');
    });

    it('compat=1.1 when the v3 header, extensions and backing name no longer fit in the first cluster', async () => {
      const path = fresh('full.qcow2');
      const longName = `${'a'.repeat(200)}/${'b'.repeat(195)}.raw`;
      mkdirSync(join(dir, 'a'.repeat(200)));
      writeFileSync(join(dir, longName), new Uint8Array(1 << 20));
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=512', '-b', longName, '-F', 'raw', path, '1M'], { cwd: dir });
      // 72 + 16 + 8 + 400 fits in 512 for v2; 112 + 16 + 8 + 400 does not.
      await refused(path, { compat: '1.1' }, /more than one 512-byte cluster/);
    });
  });
});

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** What a reader sees of an image: header facts, the active layer and every snapshot (backing file not opened). */
async function contentOf(bytes: Uint8Array): Promise<{ backing: string | undefined; backingFormat: string | undefined; active: string; snapshots: string[] }> {
  await using disk = await openQcow2(MemoryStorage.from(bytes, { name: 'a.qcow2' }), { noBacking: true });
  const info = await disk.info();
  const snapshots: string[] = [];
  for (const sn of disk.snapshots) {
    await using view = await disk.openSnapshot(sn.id);
    snapshots.push(sha256(await view.read(0, view.size)));
  }
  return { backing: info.backingFile, backingFormat: info.backingFormat, active: sha256(await disk.read(0, disk.size)), snapshots };
}

describe('amendQcow2 crash safety (FaultStorage)', () => {
  const backingName = `${'n'.repeat(150)}.raw`;
  const cases: Array<{ name: string; options: Qcow2AmendOptions; build: () => Promise<Uint8Array> }> = [
    {
      name: 'compat=0.10 of a lazy v3 image with zero clusters, a snapshot and a backing file name',
      options: { compat: '0.10' },
      build: async () => {
        const st = new MemoryStorage({ name: 'a.qcow2' });
        const disk = await createQcow2(st, { size: 1 << 20, clusterSize: '4k', lazyRefcounts: 'on', backingFile: backingName, backingFormat: 'raw', noBacking: true });
        await disk.write(0, seededBytes(40_000, 1));
        await disk.writeZeroes(4096, 8192, { mayUnmap: false });
        await disk.writeZeroes(100_000, 20_000);
        await disk.createSnapshot('s');
        await disk.writeZeroes(0, 4096, { mayUnmap: false });
        await disk.writeZeroes(200_000, 8192);
        await disk.close();
        return st.toBytes();
      },
    },
    {
      name: 'compat=1.1 and lazy refcounts of a v2 image whose new header runs past the first sector',
      options: { compat: '1.1', lazyRefcounts: 'on' },
      build: async () => {
        const st = new MemoryStorage({ name: 'a.qcow2' });
        const disk = await createQcow2(st, { size: 1 << 20, compat: 'v2', clusterSize: '64k', backingFile: backingName, backingFormat: 'raw', noBacking: true });
        await disk.write(5000, seededBytes(30_000, 2));
        await disk.createSnapshot('s');
        await disk.write(0, seededBytes(4096, 3));
        await disk.close();
        return st.toBytes();
      },
    },
  ];
  const modes: CrashMode[] = ['drop', 'subset', 'torn'];
  for (const c of cases) {
    it(`${c.name}: every crash image reads as before and checks without corruption`, async () => {
      const initial = await c.build();
      const before = await contentOf(initial);
      const fault = new FaultStorage(initial, 'a.qcow2');
      await amendQcow2(fault, c.options);
      const after = fault.current();
      expect(await contentOf(after)).toEqual(before);
      const random = seededRandom(42);
      let tried = 0;
      for (const mode of modes) {
        for (const n of fault.crashPoints()) {
          const bytes = (await fault.crashImage(n, mode, random)).toBytes();
          const where = `crash after op ${n} of ${fault.ops.length} (${mode})`;
          expect(await contentOf(bytes), where).toEqual(before);
          const check = await checkQcow2(MemoryStorage.from(bytes, { name: 'a.qcow2' }));
          expect(check.corruptions, `${where}: ${check.messages.join('; ')}`).toBe(0);
          tried++;
        }
      }
      expect(tried).toBeGreaterThanOrEqual(9);
      // The v3 case has its header past the first sector (feature name table and a long backing file name).
      const v = new DataView(after.buffer, after.byteOffset);
      if (c.options.compat === '1.1') expect(v.getUint32(12) + v.getUint32(16)).toBeGreaterThan(512);
    });
  }
});
