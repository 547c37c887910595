// img-convert, img create/info/check/map with vmdk, judged by qemu-img and vmdkinfo.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, loadManifest, qemuCheck, qemuCompare, qemuImg, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-vmdk-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

/** A raw disk: data, text, zeros and a short grain at the end. */
function source(): Buffer {
  const b = Buffer.alloc(6 * 1024 * 1024 + 4096);
  b.set(seededBytes(1 << 20, 1), 0);
  b.fill('some text in a grain\n', 2 << 20, (2 << 20) + 300_000);
  b.set(seededBytes(5000, 2), (4 << 20) + 12_345);
  b.set(seededBytes(4096, 3), b.length - 4096);
  return b;
}

/** The LBAs of the grain markers, in file order (a streamOptimized file read front to back). */
function grainOrder(bytes: Buffer): number[] {
  const lbas: number[] = [];
  let at = Number(bytes.readBigUInt64LE(64)) * 512;
  while (at + 512 <= bytes.length) {
    const value = Number(bytes.readBigUInt64LE(at));
    const size = bytes.readUInt32LE(at + 8);
    if (size === 0) {
      if (bytes.readUInt32LE(at + 12) === 0) break;
      at += 512 + value * 512;
      continue;
    }
    lbas.push(value);
    at += Math.ceil((12 + size) / 512) * 512;
  }
  return lbas;
}

const hasVmdkinfo = spawnSync('sh', ['-c', 'command -v vmdkinfo'], { stdio: 'ignore' }).status === 0 || process.env.CI === 'true';

describeQemu('vmdk from the command line', () => {
  const raw = p('src.raw');
  writeFileSync(raw, source());

  it('img convert -c -O vmdk -o subformat=streamOptimized is accepted, as qemu-img accepts it (every grain is compressed anyway); -B still is not', () => {
    const out = p('so-c.vmdk');
    const r = run('img', ['convert', '-c', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, out]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(qemuCompare(raw, out, 'raw', 'vmdk')).toBe(true);
    expect(qemuCheck(out, 'vmdk').status).toBe(0);
    const b = run('img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', '-B', raw, '-F', 'raw', raw, p('so-b.vmdk')]);
    expect(b.status).toBe(1);
    expect(b.stderr).toMatch(/ERR_IMG_UNSUPPORTED.*-B does not apply/);
  });

  it("img-convert -o subformat=streamOptimized writes VMware's layout: grains in guest order, GD at the end, footer", () => {
    const out = p('so.vmdk');
    const r = run('img-convert', ['raw', 'vmdk', raw, out, '-o', 'subformat=streamOptimized,adapter_type=pvscsi,hwversion=14']);
    expect(r.stderr).not.toMatch(/ERR_/);
    expect(r.status).toBe(0);
    expect(qemuCompare(raw, out, 'raw', 'vmdk')).toBe(true);
    expect(qemuCheck(out, 'vmdk').status).toBe(0);
    const bytes = readFileSync(out);
    expect(bytes.readBigUInt64LE(56)).toBe(0xffff_ffff_ffff_ffffn);
    const order = grainOrder(bytes);
    expect(order.length).toBeGreaterThan(10);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    const text = bytes.subarray(512, 512 * 21).toString('latin1');
    expect(text).toMatch(/ddb.adapterType = "pvscsi"/);
    expect(text).toMatch(/ddb.virtualHWVersion = "14"/);
    if (hasVmdkinfo) expect(spawnSync('vmdkinfo', [out], { encoding: 'utf8' }).stdout).toMatch(/Stream optimized/);
  });

  it('img convert -o subformat=streamOptimized names the extent after the output file, as qemu-img; a pipe keeps disk.vmdk', () => {
    const extentLine = (file: string) =>
      /^RW \d+ SPARSE ".*"$/m.exec(
        readFileSync(file)
          .subarray(512, 512 * 21)
          .toString('utf8'),
      )?.[0];
    const argv = ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw];
    qemuImg([...argv, p('named-qö.vmdk')]);
    const r = run('img', [...argv, p('named-ö.vmdk')]);
    expect(r.status, r.stderr).toBe(0);
    expect(extentLine(p('named-ö.vmdk'))).toBe(extentLine(p('named-qö.vmdk'))!.replace('named-qö', 'named-ö'));
    expect(extentLine(p('named-ö.vmdk'))).toMatch(/ SPARSE "named-ö\.vmdk"$/);
    if (hasVmdkinfo) expect(spawnSync('vmdkinfo', [p('named-ö.vmdk')], { encoding: 'utf8' }).stdout).toMatch(/Filename:\s+named-ö\.vmdk$/m);
    const piped = run('img', [...argv, '-']);
    expect(piped.status, piped.stderr).toBe(0);
    expect(/^RW \d+ SPARSE ".*"$/m.exec(piped.stdout)?.[0]).toMatch(/ SPARSE "disk\.vmdk"$/);
  });

  it('to a pipe and back from one', () => {
    const piped = spawnSync('sh', ['-c', `node ${JSON.stringify(join(import.meta.dirname, '../dist/bin/img-convert.js'))} -O vmdk -o subformat=streamOptimized ${JSON.stringify(raw)} - > ${JSON.stringify(p('piped.vmdk'))}`], { encoding: 'utf8' });
    expect(piped.status, piped.stderr).toBe(0);
    expect(qemuCompare(raw, p('piped.vmdk'), 'raw', 'vmdk')).toBe(true);
    const back = run('img-convert', ['vmdk', 'raw', '-', p('back.raw')], { input: readFileSync(p('piped.vmdk')) });
    expect(back.status, back.stderr).toBe(0);
    expect(readFileSync(p('back.raw')).equals(readFileSync(raw))).toBe(true);
  });

  it('monolithicSparse (default) and monolithicFlat, and back to qcow2', () => {
    for (const sub of ['monolithicSparse', 'monolithicFlat']) {
      const out = p(`${sub}.vmdk`);
      const r = run('img-convert', ['-O', 'vmdk', '-o', `subformat=${sub},toolsversion=10346`, raw, out]);
      expect(r.status, r.stderr).toBe(0);
      expect(qemuCompare(raw, out, 'raw', 'vmdk')).toBe(true);
      expect(qemuCheck(out, 'vmdk').status).toBe(0);
      const q = p(`${sub}.qcow2`);
      expect(run('img-convert', ['vmdk', 'qcow2', out, q]).status).toBe(0);
      expect(qemuCompare(raw, q, 'raw', 'qcow2')).toBe(true);
    }
    expect(existsSync(p('monolithicFlat-flat.vmdk'))).toBe(true);
  });

  it('children: img create -b and img-convert -B make monolithicSparse children qemu-img reads through the parent', () => {
    const base = p('base.vmdk');
    expect(run('img-convert', ['raw', 'vmdk', raw, base]).status).toBe(0);
    const child = p('child.vmdk');
    const created = run('img', ['create', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', child]);
    expect(created.status, created.stderr).toBe(0);
    const info = JSON.parse(qemuImg(['info', '--output=json', child]).stdout) as Record<string, unknown>;
    expect(info['backing-filename']).toBe('base.vmdk');
    expect(qemuCompare(raw, child, 'raw', 'vmdk')).toBe(true);
    // A new disk that differs from the base in a few places: the delta stores only those.
    const changed = source();
    changed.set(seededBytes(70_000, 9), 3 << 20);
    writeFileSync(p('changed.raw'), changed);
    const delta = p('delta.vmdk');
    const r = run('img-convert', ['-B', 'base.vmdk', '-F', 'vmdk', 'raw', 'vmdk', p('changed.raw'), delta]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuCompare(p('changed.raw'), delta, 'raw', 'vmdk')).toBe(true);
    expect(qemuCheck(delta, 'vmdk').status).toBe(0);
    const map = JSON.parse(qemuImg(['map', '--output=json', delta]).stdout) as Array<{ length: number; depth: number; data: boolean }>;
    const own = map.filter((e) => e.depth === 0 && e.data).reduce((n, e) => n + e.length, 0);
    expect(own).toBeGreaterThan(0);
    expect(own).toBeLessThanOrEqual(3 * 65536);
  });

  it('img create, info, map and check', () => {
    const out = p('new.vmdk');
    expect(run('img', ['create', '-f', 'vmdk', '-o', 'zeroed_grain=on', out, '3G']).status).toBe(0);
    expect(qemuCheck(out, 'vmdk').status).toBe(0);
    const info = JSON.parse(run('img', ['info', '--output=json', out]).stdout) as Record<string, unknown>;
    expect(info).toMatchObject({ format: 'vmdk', 'virtual-size': 3 * 2 ** 30 });
    expect(run('img', ['check', out]).status).toBe(0);
    const ours = JSON.parse(run('img', ['map', '--output=json', p('monolithicSparse.vmdk')]).stdout) as Array<{ start: number; length: number; data: boolean }>;
    const theirs = JSON.parse(qemuImg(['map', '--output=json', p('monolithicSparse.vmdk')]).stdout) as Array<{ start: number; length: number; data: boolean }>;
    expect(ours.map((e) => [e.start, e.length, e.data])).toEqual(theirs.map((e) => [e.start, e.length, e.data]));
  });
});

describeQemu('img map and img check (human) equal qemu-img on the vmdk fixtures', () => {
  // qemu-img asks a flat extent's host file where it has holes and leaves those out of its map; we report the extent as data.
  const mapDiffers = ['vmdk/flat.vmdk', 'vmdk/split-flat.vmdk', 'vmdk/vmfs.vmdk'];
  for (const entry of loadManifest().images.filter((e) => e.format === 'vmdk')) {
    const path = join(testImagesDir, entry.file);
    const cwd = dirname(path);
    it(`${entry.file}: map and check`, () => {
      for (const cmd of mapDiffers.includes(entry.file) ? ['check'] : ['map', 'check']) {
        const theirs = qemuImg([cmd, '-f', 'vmdk', basename(path)], { cwd, allowFail: true });
        const ours = run('img', [cmd, '-f', 'vmdk', basename(path)], { cwd });
        expect([cmd, ours.status]).toEqual([cmd, theirs.status]);
        expect(ours.stdout).toBe(theirs.stdout);
      }
    });
  }
});

describe('a descriptor naming one flat file on many extent lines', () => {
  it('img map and img measure open that file once (one open per line ran out of file descriptors: EMFILE; hostile seed 1007 case 29)', () => {
    writeFileSync(p('many.flat'), seededBytes(4096, 4));
    const lines = 'RW 8 FLAT "many.flat" 0\n'.repeat(2000);
    writeFileSync(p('many.vmdk'), `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n${lines}`);
    const img = fileURLToPath(new URL('../dist/bin/img.js', import.meta.url));
    // Below the line count, so that one open per line fails whatever this machine's limit is.
    const limited = (args: string[]) => spawnSync('sh', ['-c', 'ulimit -n 256 && exec "$0" "$@"', process.execPath, img, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
    const map = limited(['map', '--output=json', p('many.vmdk')]);
    expect(map.stderr).toBe('');
    expect(map.status).toBe(0);
    const extents = JSON.parse(map.stdout) as Array<{ start: number; length: number; data: boolean }>;
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(2000 * 4096);
    expect(extents.every((e) => e.data)).toBe(true);
    const measure = limited(['measure', '-O', 'qcow2', p('many.vmdk')]);
    expect(measure.stderr).toBe('');
    expect(measure.status).toBe(0);
  });
});
