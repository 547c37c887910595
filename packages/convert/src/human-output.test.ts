// img's human output (info, map, check) against qemu-img's, line by line.
import { spawnSync } from 'node:child_process';
import { copyFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, entryAt, loadManifest, qemuImg, qemuQcow2, tempDir, testImagesDir } from '@img/testkit';
import { humanInfo, qdictOrder, snapshotTable } from './cli/info-human.js';
import { run } from './test/cli.js';
import { openImageFile } from './node.js';

const tmp = tempDir('img-info-human-');
afterAll(() => tmp.cleanup());

const line = (text: string, prefix: string) => text.split('\n').find((l) => l.startsWith(prefix));

describe('qdictOrder (the order qemu-img prints an object in)', () => {
  it('orders keys as qemu 7.2 does for image info, qcow2 data and bitmaps', () => {
    expect(qdictOrder(['filename', 'format', 'dirty-flag', 'actual-size', 'virtual-size', 'cluster-size', 'format-specific', 'backing-filename', 'full-backing-filename', 'backing-filename-format'])).toEqual([
      'backing-filename-format',
      'virtual-size',
      'filename',
      'cluster-size',
      'format',
      'actual-size',
      'format-specific',
      'full-backing-filename',
      'backing-filename',
      'dirty-flag',
    ]);
    expect(qdictOrder(['name', 'granularity', 'flags'])).toEqual(['flags', 'name', 'granularity']);
    expect(qdictOrder(['extended-l2', 'corrupt', 'bitmaps', 'refcount-bits', 'compat', 'lazy-refcounts', 'compression-type'])).toEqual(['compat', 'compression-type', 'lazy-refcounts', 'bitmaps', 'refcount-bits', 'corrupt', 'extended-l2']);
  });
});

describe('humanInfo', () => {
  it('calls a VHD "vpc", marks a dirty image, and dumps nested format data as qemu does', () => {
    const text = humanInfo({
      path: 'a.vhd',
      actual: 4096,
      data: { format: 'vhd', virtualSize: 100 * 2 ** 20, dirty: true, formatSpecific: { list: [{ a: 1 }], empty: [] } },
    });
    expect(text).toBe(['image: a.vhd', 'file format: vpc', 'virtual size: 100 MiB (104857600 bytes)', 'disk size: 4 KiB', 'cleanly shut down: no', 'Format specific information:', '    list:', '        [0]:', '            a: 1', '    empty:', ''].join('\n'));
  });

  it('leaves the icount column blank when none was recorded', () => {
    const [, row] = snapshotTable([{ id: '1', name: 's', dateSec: 0, dateNsec: 0, vmClockNsec: 3_723_004_000_000, vmStateSize: 0, diskSize: 0 }]);
    expect(row).toMatch(/ 01:02:03\.004 {11}$/);
  });
});

describeQemu('img info says "virtual size:" as qemu-img info does', () => {
  const KiB = 1024;
  const sizes = new Set<number>([512, 1024, 1536, 99 * 512, 1000 * 512, 100 * 2 ** 20, 500 * 2 ** 30, 10 * 2 ** 30, 1.5 * 2 ** 30, 2 ** 53 - 512, 2 ** 50, 2 ** 52 + 2 ** 40]);
  for (let n = 0; n <= 5; n++) {
    sizes.add(2 ** (10 * n + 9));
    const boundary = 1000 * KiB ** n; // where the unit switches
    for (const d of [-512, 0, 512]) if (boundary + d >= 512) sizes.add(Math.ceil((boundary + d) / 512) * 512);
  }
  for (let bits = 9; bits <= 52; bits += 3) sizes.add(2 ** bits);
  for (let i = 0; i < 12; i++) sizes.add(512 * (1 + ((i * 7919 * 104729) % 2 ** 30))); // odd multiples of the sector
  // img reads 64-bit sizes up to 2^53 (the checked helper); 8 EiB itself is in block's formatSize tests.
  const list = [...sizes].filter((s) => s <= 2 ** 53 - 512).sort((a, b) => a - b);

  it(`over ${list.length} sizes from 512 B to 8 PiB`, async () => {
    const mismatches: string[] = [];
    // Each size is read back through the library (the image opened as img info opens it, the line made by the
    // CLI's own humanInfo); a few sizes also go through the bin, so the whole path is covered without 52 spawns.
    const throughBin = new Set([list[0], list[Math.floor(list.length / 2)], list[list.length - 1]]);
    for (const size of list) {
      const file = join(tmp.path, `s${size}.qcow2`);
      // 2 MiB clusters keep the L1 table of an 8 PiB image small.
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', file, String(size)]);
      const theirs = line(qemuImg(['info', '-f', 'qcow2', file]).stdout, 'virtual size:');
      const disk = await openImageFile(file, { format: 'qcow2' });
      const ours = line(humanInfo({ data: { format: disk.format, virtualSize: disk.size }, actual: 0, path: file }), 'virtual size:');
      await disk.close();
      if (ours !== theirs) mismatches.push(`${size}: img "${ours}" qemu-img "${theirs}"`);
      if (throughBin.has(size)) {
        const bin = line(run('img', ['info', '-f', 'qcow2', file]).stdout, 'virtual size:');
        if (bin !== theirs) mismatches.push(`${size} (bin): img "${bin}" qemu-img "${theirs}"`);
      }
    }
    expect(mismatches.join('\n')).toBe('');
  });
});

describeQemu('img info (human) equals qemu-img info line by line on the fixtures', () => {
  const entries = loadManifest().images.filter((e) => e.format !== 'raw' || e.virtualSize > 0);
  for (const entry of entries) {
    it(entry.file, () => {
      const path = join(testImagesDir, entry.file);
      const cwd = dirname(path);
      const qemuFormat = entry.format === 'vhd' ? 'vpc' : entry.format;
      const theirs = qemuImg(['info', '-f', qemuFormat, basename(path)], { cwd }).stdout;
      const r = run('img', ['info', '-f', entry.format, basename(path)], { cwd });
      expect(r.status, r.stderr).toBe(0);
      // qemu has no format specific information for VHD; img adds its footer and header fields after qemu's lines.
      const ours = entry.format === 'vhd' ? r.stdout.replace(/Format specific information:\n(?: {4}.*\n)*/, '') : r.stdout;
      expect(ours).toBe(theirs);
    });
  }
});

describeQemu('img map and img check (human) equal qemu-img line by line on the fixtures', () => {
  const entries = loadManifest().images.filter((e) => e.format === 'qcow2');
  // Where img differs, and why (none at present; qemu-img's host-file holes inside allocated clusters are reported as it reports them).
  const mapDiffers: Record<string, string> = {};
  const checkDiffers: Record<string, string> = {};
  for (const entry of entries) {
    const path = join(testImagesDir, entry.file);
    const cwd = dirname(path);
    it.skipIf(entry.file in mapDiffers)(`map ${entry.file}`, () => {
      const theirs = qemuImg(['map', '-f', 'qcow2', basename(path)], { cwd, allowFail: true });
      const ours = run('img', ['map', '-f', 'qcow2', basename(path)], { cwd });
      expect(ours.status).toBe(theirs.status);
      expect(ours.stdout).toBe(theirs.stdout);
      // qemu-img stops at compressed data with an error; so does img, in its own words.
      if (theirs.status !== 0) expect(ours.stderr).toMatch(/^img map: ERR_IMG_UNSUPPORTED: .*compressed, encrypted or external/);
    });
    it.skipIf(entry.file in checkDiffers)(`check ${entry.file}`, () => {
      const theirs = qemuImg(['check', '-f', 'qcow2', basename(path)], { cwd, allowFail: true });
      const ours = run('img', ['check', '-f', 'qcow2', basename(path)], { cwd });
      expect(ours.status).toBe(theirs.status);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(ours.stderr).toBe(theirs.stderr);
    });
  }
});

describeQemu('img map reports holes of the file inside allocated clusters (and an empty disk) as qemu-img map does', () => {
  // Made here (not fixtures): a git checkout writes files without holes.
  const cases: Array<[string, string, string[], string[]]> = [
    ['metadata.qcow2', 'qcow2', ['-o', 'preallocation=metadata,cluster_size=65536'], ['write -P 7 4k 8k', 'write -P 9 200k 4k']],
    ['partial.qcow2', 'qcow2', ['-o', 'cluster_size=65536'], ['write -P 7 8k 4k', 'write -P 9 1M 4k']],
    ['fixed.vhd', 'vpc', ['-o', 'subformat=fixed'], ['write -P 7 0 4k', 'write -P 9 1M 4k']],
    ['flat.vmdk', 'vmdk', ['-o', 'subformat=monolithicFlat'], ['write -P 7 64k 4k', 'write -P 9 1M 8k']],
    ['split-sparse.vmdk', 'vmdk', ['-o', 'subformat=twoGbMaxExtentSparse'], ['write -P 7 64k 4k', 'write -P 9 1M 8k']],
    ['empty.qcow2', 'qcow2', [], []],
  ];
  for (const [name, format, options, writes] of cases) {
    it(name, () => {
      const path = join(tmp.path, name);
      qemuImg(['create', '-q', '-f', format, ...options, path, writes.length ? '2M' : '0']);
      for (const w of writes) spawnSync('qemu-io', ['-f', format, '-c', w, path], { encoding: 'utf8' });
      for (const output of ['json', 'human']) {
        const theirs = qemuImg(['map', '--output=' + output, '-f', format, name], { cwd: tmp.path });
        const ours = run('img', ['map', '--output=' + output, name], { cwd: tmp.path });
        expect(ours.status, ours.stderr).toBe(0);
        expect(ours.stdout).toBe(theirs.stdout);
      }
    });
  }
});

describeQemu('img check -r (human) reports what it repaired as qemu-img check -r does', () => {
  const both = (src: string, name: string) => {
    const theirs = join(tmp.path, `${name}-qemu.qcow2`);
    const ours = join(tmp.path, `${name}-img.qcow2`);
    copyFileSync(src, theirs);
    copyFileSync(src, ours);
    return { theirs, ours };
  };

  it('a leaked cluster: -r leaks prints the same lines, status 0', () => {
    // qemu writes one cluster; clearing its L2 entry leaves the cluster allocated with nothing pointing at it.
    const src = join(tmp.path, 'leak-src.qcow2');
    const q = qemuQcow2(src, '1M', 'cluster_size=65536', [[0, 65536, 1]]);
    const l2 = Number(entryAt(q, q.l1Offset) & 0x00ff_ffff_ffff_fe00n);
    q.view.setBigUint64(l2, 0n);
    writeFileSync(src, q.bytes);
    const { theirs, ours } = both(src, 'leak');
    const a = qemuImg(['check', '-r', 'leaks', theirs], { allowFail: true });
    const b = run('img', ['check', '-r', 'leaks', ours]);
    expect(b.status).toBe(a.status);
    expect(b.stdout).toBe(a.stdout);
    expect(b.stderr).toBe(a.stderr);
    expect(b.stdout).toContain('The following inconsistencies were found and repaired:\n\n    1 leaked clusters\n    0 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on the image.');
    expect(qemuImg(['check', ours]).stdout).toContain('No errors were found on the image.');
  });

  it('a dirty image: -r all prints the repair block and a clean second check; problem lines go to stderr', () => {
    const { theirs, ours } = both(join(testImagesDir, 'qcow2/dirty.qcow2'), 'dirty');
    const a = qemuImg(['check', '-r', 'all', theirs], { allowFail: true });
    const b = run('img', ['check', '-r', 'all', ours]);
    expect(b.status).toBe(a.status);
    const head = (out: string) => out.split('\n').filter((l) => !/^Image end offset/.test(l));
    // qemu rebuilds the refcount structure at the end of the file; img repairs in place. Both count the two
    // refcounts as the corruptions fixed (the COPIED flags are right once the refcounts are).
    expect(head(b.stdout)).toEqual(head(a.stdout));
    expect(b.stdout).toContain('    0 leaked clusters\n    2 corruptions\n');
    const plainDirty = join(tmp.path, 'dirty-plain.qcow2');
    copyFileSync(join(testImagesDir, 'qcow2/dirty.qcow2'), plainDirty);
    const plainTheirs = qemuImg(['check', plainDirty], { allowFail: true });
    const plain = run('img', ['check', plainDirty]);
    expect(plain.stdout.startsWith('\n4 errors were found on the image.')).toBe(true);
    expect(plain.stdout).toBe(plainTheirs.stdout);
    expect(plain.stderr).toBe(plainTheirs.stderr);
  });

  it('COPIED flags cleared on an L1 and an L2 entry: check and check -r all print what qemu-img prints', () => {
    const src = join(tmp.path, 'copied-src.qcow2');
    const q = qemuQcow2(src, '1M', 'cluster_size=65536', [[0, 65536, 1]]);
    const l1 = entryAt(q, q.l1Offset);
    const l2 = Number(l1 & 0x00ff_ffff_ffff_fe00n);
    q.view.setBigUint64(q.l1Offset, l1 & ~(1n << 63n));
    q.view.setBigUint64(l2, entryAt(q, l2) & ~(1n << 63n));
    writeFileSync(src, q.bytes);
    const { theirs, ours } = both(src, 'copied');
    for (const args of [['check'], ['check', '-r', 'all']]) {
      const a = qemuImg([...args, theirs], { allowFail: true });
      const b = run('img', [...args, ours]);
      expect(b.status).toBe(a.status);
      expect(b.stdout).toBe(a.stdout);
      expect(b.stderr).toBe(a.stderr);
    }
    expect(qemuImg(['compare', theirs, ours]).stdout).toContain('Images are identical.');
  });
});
