// Untrusted mode must accept every valid image: each committed fixture that
// names no other file (no backing file, no external data file: those are
// refused by design) converts with --untrusted, through the CLI and the API,
// to the same bytes qemu-img convert produces, and `img info --untrusted`
// reports what qemu-img info reports.
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuInfo, tempDir, testImagesDir } from '@img/testkit';
import { inspectImage } from './inspect.js';
import { defaultRegistry } from './formats.js';
import { openImageFile } from './node.js';
import { FileStorage } from '@img/block/node';

const tmp = tempDir('img-untrusted-fixtures-');
afterAll(() => tmp.cleanup());

function cli(cmd: string, args: string[]): { status: number | null; stderr: string; stdout: string } {
  const bin = new URL(`../dist/bin/${cmd}.js`, import.meta.url).pathname;
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

const manifest = JSON.parse(readFileSync(join(testImagesDir, 'MANIFEST.json'), 'utf8')) as { images: Array<{ file: string; format: string }> };
const CHUNK = 1 << 20;
const qemuFormat = (format: string) => (format === 'vhd' ? 'vpc' : format);

/** Does qemu-img say the image names another file? */
function namesAnotherFile(path: string, format: string): boolean {
  const info = qemuInfo(path, qemuFormat(format)) as { 'backing-filename'?: string; 'format-specific'?: { data?: { 'data-file'?: string; extents?: Array<{ filename?: string }> } } };
  // A vmdk descriptor file keeps its data in extent files of their own.
  const extentFiles = (info['format-specific']?.data?.extents ?? []).filter((e) => e.filename !== undefined && basename(e.filename) !== basename(path));
  return info['backing-filename'] !== undefined || info['format-specific']?.data?.['data-file'] !== undefined || extentFiles.length > 0;
}

describeQemu('untrusted mode accepts every fixture that names no other file', () => {
  const tested: string[] = [];
  afterAll(() => {
    // The test proves something only if it covered every format and most fixtures.
    expect(new Set(tested.map((f) => f.split('/')[0]))).toEqual(new Set(['qcow2', 'raw', 'vhd', 'vmdk']));
    expect(tested.length).toBeGreaterThan(30);
  });

  for (const entry of manifest.images) {
    const path = join(testImagesDir, entry.file);
    const base = entry.file.replace(/\//g, '_');
    it(`${entry.file}: img-convert --untrusted, img info --untrusted and openImageFile({ untrusted }) succeed`, async () => {
      if (namesAnotherFile(path, entry.format)) {
        // Refused by design (covered in untrusted.test.ts); make sure it still is.
        const r = cli('img-convert', ['--untrusted', entry.format, 'raw', path, join(tmp.path, `${base}.refused.raw`)]);
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(/ERR_IMG_UNSAFE: .*(backing-file|data-file|outside the given storage)/);
        return;
      }
      tested.push(entry.file);
      const ours = join(tmp.path, `${base}.raw`);
      const theirs = join(tmp.path, `${base}.qemu.raw`);
      qemuImg(['convert', '-f', qemuFormat(entry.format), '-O', 'raw', path, theirs]);

      const conv = cli('img-convert', ['--untrusted', entry.format, 'raw', path, ours]);
      expect(conv.stderr).not.toMatch(/ERR_IMG/);
      expect(conv.status).toBe(0);
      // qemu-img compare reads sparsely (one fixture is a 40 GiB disk); it ignores a size difference, so check that apart.
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', ours, theirs], { allowFail: true }).status).toBe(0);

      // Probed (no -f) and declared.
      for (const args of [
        ['info', '--untrusted', '--output=json', path],
        ['info', '--untrusted', '-f', entry.format, '--output=json', path],
      ]) {
        const info = cli('img', args);
        expect(info.stderr).toBe('');
        expect(info.status).toBe(0);
        const qemu = qemuInfo(path, qemuFormat(entry.format));
        expect(JSON.parse(info.stdout)).toMatchObject({ format: qemu.format, 'virtual-size': qemu['virtual-size'] });
      }

      // The API: inspectImage leaves the caller's storage open, and openImageFile reads the same bytes.
      const storage = await FileStorage.open(path);
      const report = await inspectImage(storage, { registry: defaultRegistry(), format: entry.format });
      expect(report.findings.filter((f) => f.severity === 'unsafe')).toEqual([]);
      expect(await storage.read(0, 16)).toHaveLength(Math.min(16, await storage.size()));
      await storage.close();
      const disk = await openImageFile(path, { format: entry.format, untrusted: true });
      const reference = await open(theirs, 'r');
      try {
        expect(disk.size).toBe((await reference.stat()).size);
        for await (const e of disk.extents()) {
          if (e.kind !== 'data') continue;
          for (let pos = e.offset; pos < e.offset + e.length; pos += CHUNK) {
            const n = Math.min(CHUNK, e.offset + e.length - pos);
            const expected = Buffer.alloc(n);
            await reference.read(expected, 0, n, pos);
            expect(Buffer.from(await disk.read(pos, n)).equals(expected)).toBe(true);
          }
        }
      } finally {
        await reference.close();
        await disk.close();
      }
    }, 60_000);
  }
});
