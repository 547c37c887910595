// Untrusted mode: nothing named inside an image is ever opened. The names
// point at FIFOs: opening one for reading blocks until a writer comes, so
// a command that follows a name hangs and is killed by the timeout.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStorage, type ResolveRequest } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, qemuIo, tempDir, testImagesDir } from '@img/testkit';
import { createQcow2 } from '@img/qcow2';
import { defaultRegistry } from './formats.js';
import { inspectImage } from './inspect.js';
import { openImageFile } from './node.js';

const tmp = tempDir('img-untrusted-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

function cli(cmd: string, args: string[], timeout = 15_000): { status: number | null; stderr: string; stdout: string; timedOut: boolean } {
  const bin = new URL(`../dist/bin/${cmd}.js`, import.meta.url).pathname;
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', timeout });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout, timedOut: r.signal === 'SIGTERM' };
}

describeQemu('untrusted mode never opens a file named inside the image', () => {
  const images: Record<string, { path: string; format: string; code: string }> = {};
  beforeAll(async () => {
    execFileSync('mkfifo', [p('sentinel-backing')]);
    execFileSync('mkfifo', [p('sentinel-data')]);
    // qcow2 whose backing file is the sentinel (absolute and relative names)
    qemuImg(['create', '-f', 'qcow2', '-u', '-b', p('sentinel-backing'), '-F', 'raw', p('abs-backing.qcow2'), '1M']);
    qemuImg(['create', '-f', 'qcow2', '-u', '-b', 'sentinel-backing', '-F', 'raw', p('rel-backing.qcow2'), '1M']);
    // qemu-img will not write a backing name without a format; our writer will (no resolver: nothing opened)
    await (await createQcow2(await FileStorage.create(p('no-fmt-backing.qcow2')), { size: 1 << 20, backingFile: 'sentinel-backing', noBacking: true })).close();
    // qcow2 with an external data file that is the sentinel
    qemuImg(['create', '-f', 'qcow2', '-o', `data_file=${p('data.img')}`, p('datafile.qcow2'), '1M']);
    qemuIo(p('datafile.qcow2'), 'qcow2', ['write -P 7 0 64k']);
    rmSync(p('data.img'));
    execFileSync('mkfifo', [p('data.img')]);
    // a differencing VHD whose parent (found through locators or the unicode name) is the sentinel
    copyFileSync(join(testImagesDir, 'vhd', 'dynamic-default.vhd'), p('parent.vhd'));
    const made = cli('img', ['create', '-f', 'vhd', '-b', 'parent.vhd', p('child.vhd')]);
    if (made.status !== 0) throw new Error(made.stderr);
    rmSync(p('parent.vhd'));
    execFileSync('mkfifo', [p('parent.vhd')]);
    Object.assign(images, {
      'abs-backing.qcow2': { path: p('abs-backing.qcow2'), format: 'qcow2', code: 'backing-file' },
      'rel-backing.qcow2': { path: p('rel-backing.qcow2'), format: 'qcow2', code: 'backing-file' },
      'no-fmt-backing.qcow2': { path: p('no-fmt-backing.qcow2'), format: 'qcow2', code: 'backing-file' },
      'datafile.qcow2': { path: p('datafile.qcow2'), format: 'qcow2', code: 'data-file' },
      'child.vhd': { path: p('child.vhd'), format: 'vhd', code: 'parent-reference' },
    });
  });

  for (const name of ['abs-backing.qcow2', 'rel-backing.qcow2', 'no-fmt-backing.qcow2', 'datafile.qcow2', 'child.vhd']) {
    it(`${name}: inspectImage, openImageFile and the commands refuse without opening the sentinel`, async () => {
      const img = images[name]!;
      const spy = (req: ResolveRequest): Promise<never> => {
        throw new Error(`resolver called for ${req.kind} ${req.name}`);
      };
      const storage = await FileStorage.open(img.path);
      const report = await inspectImage(storage, { registry: defaultRegistry(), format: img.format });
      await storage.close();
      expect(report.safe).toBe(false);
      expect(report.findings.map((f) => f.code)).toContain(img.code);
      await expect(openImageFile(img.path, { format: img.format, untrusted: true, resolver: spy })).rejects.toMatchObject({ code: 'ERR_IMG_UNSAFE' });
      const conv = cli('img-convert', ['--untrusted', img.format, 'raw', img.path, p(`${name}.raw`)]);
      expect(conv.timedOut).toBe(false);
      expect(conv.status).toBe(1);
      expect(conv.stderr.trim().split('\n')).toHaveLength(1);
      expect(conv.stderr).toMatch(new RegExp(`ERR_IMG_UNSAFE: .*${img.code}`));
      const info = cli('img', ['info', '--untrusted', img.path]);
      expect(info.timedOut).toBe(false);
      expect(info.status).toBe(1);
      const insp = cli('img', ['inspect', '--output=json', img.path]);
      expect(insp.timedOut).toBe(false);
      expect(insp.status).toBe(2);
      expect(JSON.parse(insp.stdout).safe).toBe(false);
    });
  }

  it('the same images are opened normally when trusted (the sentinel is really reachable)', () => {
    // Proves the test can fail: a trusted open follows the name to the FIFO (and refuses it there, without waiting on it).
    const r = cli('img', ['info', '--backing-chain', p('rel-backing.qcow2')], 4000);
    expect(r.timedOut).toBe(false);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`${p('sentinel-backing')}: is a FIFO, not an image file`);
  }, 30_000);
});

describe('untrusted mode on images without references', () => {
  it("inspectImage leaves the caller's storage open (openImageFile opens the image from it next)", async () => {
    // The check used to close it: every valid qcow2 then failed --untrusted with ERR_IMG_CLOSED.
    const storage = await FileStorage.open(join(testImagesDir, 'qcow2', 'v3-64k.qcow2'));
    try {
      expect((await inspectImage(storage, { registry: defaultRegistry(), format: 'qcow2' })).safe).toBe(true);
      expect(await storage.read(0, 4)).toEqual(new Uint8Array([0x51, 0x46, 0x49, 0xfb]));
    } finally {
      await storage.close();
    }
  });

  it('accepts a plain image and reports its format and size', async () => {
    const storage = await FileStorage.open(join(testImagesDir, 'qcow2', 'v3-64k.qcow2'));
    const report = await inspectImage(storage, { registry: defaultRegistry(), format: 'qcow2' });
    await storage.close();
    expect(report).toMatchObject({ safe: true, format: 'qcow2', virtualSize: 1 << 20 });
  });

  it('img inspect --output=json spells its keys as qemu-img spells JSON keys (as img info does)', () => {
    const file = join(testImagesDir, 'qcow2', 'v3-64k.qcow2');
    const r = cli('img', ['inspect', '--output=json', file]);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ filename: file, format: 'qcow2', 'virtual-size': 1 << 20, safe: true, findings: [] });
    // An empty list on lines of its own, as qemu's JSON printer writes it.
    expect(r.stdout).toContain('"findings": [\n    ]');
  });

  it('refuses a qcow2 declared as raw, and a raw declared as qcow2', async () => {
    const q = await FileStorage.open(join(testImagesDir, 'qcow2', 'v3-64k.qcow2'));
    const r1 = await inspectImage(q, { registry: defaultRegistry(), format: 'raw' });
    await q.close();
    expect(r1.findings.map((f) => f.code)).toEqual(['format-mismatch']);
    const r = await FileStorage.open(join(testImagesDir, 'raw', 'demo.img'));
    const r2 = await inspectImage(r, { registry: defaultRegistry(), format: 'qcow2' });
    await r.close();
    expect(r2.safe).toBe(false);
    expect(r2.findings[0]!.code).toBe('format-mismatch');
  });

  it('refuses an image that is two formats at once (qcow2 header, VHD footer)', async () => {
    const q = await FileStorage.open(join(testImagesDir, 'qcow2', 'v3-64k.qcow2'));
    const head = await q.read(0, await q.size());
    await q.close();
    const v = await FileStorage.open(join(testImagesDir, 'vhd', 'fixed-default.vhd'));
    const footer = await v.read((await v.size()) - 512, 512);
    await v.close();
    const both = new Uint8Array(head.length + 512);
    both.set(head);
    both.set(footer, head.length);
    const report = await inspectImage(MemoryStorage.from(both), { registry: defaultRegistry() });
    expect(report.safe).toBe(false);
    expect(report.findings.map((f) => f.code)).toContain('multiple-formats');
  });

  it('refuses a qcow2 that also carries an ISO 9660 signature', async () => {
    const q = await FileStorage.open(join(testImagesDir, 'qcow2', 'v3-64k.qcow2'));
    const bytes = await q.read(0, await q.size());
    await q.close();
    const copy = new Uint8Array(Math.max(bytes.length, 0x9000));
    copy.set(bytes);
    copy.set([0x43, 0x44, 0x30, 0x30, 0x31], 0x8001);
    const report = await inspectImage(MemoryStorage.from(copy), { registry: defaultRegistry(), format: 'qcow2' });
    expect(report.findings.map((f) => f.code)).toContain('multiple-formats');
  });
});

describe('inspectImage on every committed fixture', () => {
  const expected: Record<string, string[]> = {
    'qcow2/chain-mid.qcow2': ['backing-file'],
    'qcow2/chain-top.qcow2': ['backing-file'],
    'qcow2/extended-l2-overlay.qcow2': ['backing-file'],
    'qcow2/no-backing-format.qcow2': ['backing-file'],
    'qcow2/over-raw.qcow2': ['backing-file'],
    'qcow2/data-file.qcow2': ['data-file'],
    'qcow2/data-file-nonraw.qcow2': ['data-file'],
    // vmdk descriptor files keep their data in extent files; a child names its parent
    'vmdk/chain-top.vmdk': ['backing-file'],
    'vmdk/flat.vmdk': ['data-file'],
    'vmdk/split-flat.vmdk': ['data-file'],
    'vmdk/split-sparse.vmdk': ['data-file'],
    'vmdk/vmfs.vmdk': ['data-file'],
  };
  // Readable images whose flags forbid writing: reported, but only as information (see inspect.ts).
  const noted: Record<string, string[]> = {
    // the corrupt bit forbids writing; the check finds nothing wrong
    'qcow2/corrupt-bit.qcow2': ['corrupt'],
    // lazy refcounts left dirty: the refcounts are stale until the next writer rebuilds them
    'qcow2/dirty.qcow2': ['corrupt'],
  };
  const manifest = JSON.parse(readFileSync(join(testImagesDir, 'MANIFEST.json'), 'utf8')) as { images: Array<{ file: string; format: string }> };
  for (const entry of manifest.images.filter((e) => e.format !== 'raw')) {
    it(`${entry.file}: ${expected[entry.file]?.join(', ') ?? 'safe'}`, async () => {
      const storage = await FileStorage.open(join(testImagesDir, entry.file));
      const report = await inspectImage(storage, { registry: defaultRegistry(), format: entry.format });
      await storage.close();
      expect(report.format).toBe(entry.format);
      expect(report.findings.filter((f) => f.severity === 'unsafe').map((f) => f.code)).toEqual(expected[entry.file] ?? []);
      expect(report.safe).toBe(!expected[entry.file]);
      expect(report.findings.filter((f) => f.severity === 'info' && f.code !== 'leaks').map((f) => f.code)).toEqual(noted[entry.file] ?? []);
    });
  }
});
