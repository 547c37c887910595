// Every container format qemu knows, as a file: a synthetic one (the
// signature written at its offset in zeros) and, where qemu-img can create
// the format, a real one. Each must be refused as raw (untrusted: always;
// trusted: unless forceFormat), and qemu-img's own probe is the oracle that
// the bytes are that format: it reports the format, or it picks the format's
// driver and fails to open the synthetic file (had it seen nothing it would
// have opened the file as raw).
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ImageError } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { defaultRegistry } from './formats.js';
import { inspectImage } from './inspect.js';
import { openImageFile } from './node.js';

const tmp = tempDir('img-signatures-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);
const SIZE = 64 * 1024;

/** `size` zero bytes with each piece (latin-1 text or bytes) at its offset (negative: from the end). */
function synthetic(pieces: Array<[number, string | Uint8Array]>, size = SIZE): Uint8Array {
  const b = new Uint8Array(size);
  for (const [offset, data] of pieces) {
    const bytes = typeof data === 'string' ? Uint8Array.from(data, (c) => c.charCodeAt(0)) : data;
    b.set(bytes, offset < 0 ? size + offset : offset);
  }
  return b;
}
const le32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);
const be32 = (v: number) => Uint8Array.of(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
const CLOOP = '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n';

interface Case {
  /** File name in the temp dir. */
  file: string;
  /** The format we must name (registry name). */
  format: string;
  /** What qemu-img's probe says: its driver name, or 'raw' where qemu 7.2 cannot tell by the bytes (said why). */
  qemu: string;
  bytes?: () => Uint8Array;
  create?: string[];
}

const cases: Case[] = [
  // synthetic: the signature alone (plus what qemu needs to open it where that is little)
  { file: 'qcow1.img', format: 'qcow', qemu: 'qcow', bytes: () => synthetic([[0, 'QFI\xfb\0\0\0\x01']]) },
  { file: 'qcow2.img', format: 'qcow2', qemu: 'qcow2', bytes: () => synthetic([[0, 'QFI\xfb\0\0\0\x03']]) },
  { file: 'qed.img', format: 'qed', qemu: 'qed', bytes: () => synthetic([[0, 'QED\0']]) },
  { file: 'vmdk-sparse.img', format: 'vmdk', qemu: 'vmdk', bytes: () => synthetic([[0, 'KDMV']]) },
  { file: 'vmdk-cowd.img', format: 'vmdk', qemu: 'vmdk', bytes: () => synthetic([[0, 'COWD']]) },
  { file: 'vmdk-descriptor.img', format: 'vmdk', qemu: 'vmdk', bytes: () => synthetic([[0, '# Disk DescriptorFile\nversion=1\n']], 512) },
  {
    file: 'vdi.img',
    format: 'vdi',
    qemu: 'vdi',
    bytes: () =>
      synthetic([
        [0, '<<< QEMU VM Virtual Disk Image >>>\n'],
        [0x40, le32(0xbeda107f)],
      ]),
  },
  { file: 'vhdx.img', format: 'vhdx', qemu: 'vhdx', bytes: () => synthetic([[0, 'vhdxfile']]) },
  { file: 'vhd-head.img', format: 'vhd', qemu: 'vpc', bytes: () => synthetic([[0, 'conectix']]) },
  // qemu's vpc_probe looks at offset 0 only: a footer at the end is a fixed VHD it opens as raw.
  { file: 'vhd-footer.img', format: 'vhd', qemu: 'raw', bytes: () => synthetic([[-512, 'conectix']]) },
  { file: 'vhd-footer-511.img', format: 'vhd', qemu: 'raw', bytes: () => synthetic([[-511, 'conectix']]) },
  { file: 'vhd-footer-1024.img', format: 'vhd', qemu: 'raw', bytes: () => synthetic([[-1024, 'conectix']]) },
  { file: 'luks.img', format: 'luks', qemu: 'luks', bytes: () => synthetic([[0, 'LUKS\xba\xbe\0\x01']]) },
  {
    file: 'parallels.img',
    format: 'parallels',
    qemu: 'parallels',
    bytes: () =>
      synthetic([
        [0, 'WithoutFreeSpace'],
        [16, le32(2)],
      ]),
  },
  {
    file: 'parallels-ext.img',
    format: 'parallels',
    qemu: 'parallels',
    bytes: () =>
      synthetic([
        [0, 'WithouFreSpacExt'],
        [16, le32(2)],
      ]),
  },
  {
    file: 'bochs.img',
    format: 'bochs',
    qemu: 'bochs',
    // header: magic, type, subtype, version 2.0, header size 512, 1 catalog entry (unallocated), 4 KiB extents, 4 KiB disk
    bytes: () =>
      synthetic([
        [0, 'Bochs Virtual HD Image\0'],
        [32, 'Redolog\0'],
        [48, 'Growing\0'],
        [64, le32(0x20000)],
        [68, le32(512)],
        [72, le32(1)],
        [76, le32(1)],
        [80, le32(4096)],
        [88, le32(4096)],
        [512, le32(0xffffffff)],
      ]),
  },
  // cloop: the script banner, 512-byte blocks, no blocks, one offset
  {
    file: 'cloop.img',
    format: 'cloop',
    qemu: 'cloop',
    bytes: () =>
      synthetic(
        [
          [0, CLOOP],
          [128, be32(512)],
          [132, be32(0)],
          [140, be32(144)],
        ],
        4096,
      ),
  },
  // qemu's dmg_probe looks at the file name only (".dmg"): by the bytes it is raw to qemu.
  { file: 'dmg.img', format: 'dmg', qemu: 'raw', bytes: () => synthetic([[-512, 'koly']]) },
  { file: 'named.dmg', format: 'dmg', qemu: 'dmg', bytes: () => synthetic([[-512, 'koly']]) },
  // real images, written by qemu-img
  ...['qcow', 'qcow2', 'qed', 'vdi', 'vhdx', 'vmdk', 'parallels', 'vpc'].map((f) => ({ file: `real.${f}`, format: f === 'vpc' ? 'vhd' : f, qemu: f, create: ['-f', f] })),
  { file: 'real-fixed.vpc', format: 'vhd', qemu: 'raw', create: ['-f', 'vpc', '-o', 'subformat=fixed'] },
  { file: 'real-flat.vmdk', format: 'vmdk', qemu: 'vmdk', create: ['-f', 'vmdk', '-o', 'subformat=monolithicFlat'] },
  { file: 'real-stream.vmdk', format: 'vmdk', qemu: 'vmdk', create: ['-f', 'vmdk', '-o', 'subformat=streamOptimized'] },
  // No real LUKS volume: qemu-img create -f luks benchmarks PBKDF2 for seconds and fails now and then
  // ("Unable to get accurate CPU usage"); for the synthetic header qemu picks its luks driver, which is the point.
];

/** qemu-img's view of a file: the format it reports, or the error of the driver its probe picked. */
function qemuSays(path: string): { format?: string; error?: string } {
  const r = spawnSync('qemu-img', ['info', '--output=json', path], { encoding: 'utf8' });
  if (r.status === 0) return { format: (JSON.parse(r.stdout) as { format: string }).format };
  return { error: r.stderr.trim() };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    const d = (await p) as { close?: () => Promise<void> };
    await d?.close?.();
    return 'ok';
  } catch (e) {
    if (ImageError.isInstance(e)) return `${e.code} ${e.message}`;
    throw e;
  }
}

describeQemu('container signatures: refused as raw, as qemu-img probes them', () => {
  beforeAll(() => {
    for (const c of cases) {
      if (c.bytes) writeFileSync(p(c.file), c.bytes());
      else qemuImg(['create', '-q', ...c.create!, p(c.file), '1M']);
    }
  }, 60_000);

  for (const c of cases) {
    it(`${c.file}: ${c.format}`, async () => {
      const path = p(c.file);
      // The oracle.
      const qemu = qemuSays(path);
      if (c.qemu === 'raw' || qemu.format !== undefined) expect(qemu.format, qemu.error).toBe(c.qemu);
      else expect(qemu.error, 'qemu picked a driver other than raw, which failed on the synthetic file').toMatch(/^qemu-img: Could not open/m);

      // Untrusted, declared raw: refused, naming the format.
      const storage = await FileStorage.open(path);
      const report = await inspectImage(storage, { registry: defaultRegistry(), format: 'raw' });
      await storage.close();
      expect(report.safe).toBe(false);
      expect(report.format).toBe(c.format);
      const mismatch = report.findings.find((f) => f.code === 'format-mismatch');
      expect(mismatch?.message).toMatch(new RegExp(`^declared raw but the bytes are ${c.format}\\b`));
      const untrusted = await codeOf(openImageFile(path, { format: 'raw', untrusted: true }));
      expect(untrusted).toMatch(new RegExp(`^ERR_IMG_UNSAFE .*bytes are ${c.format}\\b`));
      // Untrusted, nothing declared: never guessed raw. A real image of a format we read opens as that format.
      const probed = await codeOf(openImageFile(path, { untrusted: true }));
      // A monolithicFlat descriptor keeps its data in another file, which an untrusted open refuses to open.
      if (c.file === 'real-flat.vmdk') expect(probed).toMatch(/^ERR_IMG_UNSAFE vmdk: .*outside the given storage/);
      else if (c.create && defaultRegistry().get(c.format)) expect(probed).toBe('ok');
      else expect(probed).toMatch(/^ERR_IMG_/);

      // Trusted, declared raw: refused unless forced.
      const trusted = await codeOf(openImageFile(path, { format: 'raw' }));
      expect(trusted).toMatch(new RegExp(`^ERR_IMG_UNSAFE raw: .*looks like ${c.format}, not raw`));
      expect(await codeOf(openImageFile(path, { format: 'raw', forceFormat: true }))).toBe('ok');
    });
  }

  it('a format no driver here opens is not guessed raw when nothing is declared', async () => {
    expect(await codeOf(openImageFile(p('real.qed')))).toMatch(/^ERR_IMG_UNSUPPORTED qed: .*real\.qed: a QED image \("QED\\x00" at 0x0\): this format is not supported/);
    expect(await codeOf(openImageFile(p('real.qed'), { format: 'raw', forceFormat: true }))).toBe('ok');
    expect(await codeOf(openImageFile(p('real.vdi')))).toMatch(/^ERR_IMG_UNSUPPORTED vdi: .*a VDI image \(signature 0xbeda107f at 0x40\)/);
    // A signature of a format we read, which its driver's probe missed: that driver decides, raw never does.
    expect(await codeOf(openImageFile(p('vhd-footer-1024.img')))).toMatch(/^ERR_IMG_\w+ vhd: /);
  });

  it('a declared format the bytes contradict is ERR_IMG_WRONG_FORMAT, naming what they are', async () => {
    expect(await codeOf(openImageFile(p('real.vpc'), { format: 'qcow2' }))).toMatch(/^ERR_IMG_WRONG_FORMAT qcow2: .*real\.vpc: not a qcow2 image: it looks like a VHD image/);
    expect(await codeOf(openImageFile(p('real.qed'), { format: 'qcow2' }))).toMatch(/^ERR_IMG_WRONG_FORMAT qcow2: .*: not a qcow2 image: it looks like a QED image/);
    expect(await codeOf(openImageFile(p('real.qcow'), { format: 'qcow2' }))).toMatch(/^ERR_IMG_WRONG_FORMAT qcow2: .*: not a qcow2 image: it looks like a qcow \(v1\) image/);
    // Forced, the qcow2 reader itself says so.
    expect(await codeOf(openImageFile(p('real.qcow'), { format: 'qcow2', forceFormat: true }))).toMatch(/^ERR_IMG_WRONG_FORMAT qcow2: .*: not a qcow2 image: it looks like a qcow \(v1\) image$/);
    expect(await codeOf(openImageFile(p('real-fixed.vpc'), { format: 'qcow2', forceFormat: true }))).toMatch(/^ERR_IMG_WRONG_FORMAT qcow2: .*: not a qcow2 image: it looks like a VHD image$/);
  });

  it('the commands say the same (img-convert --untrusted, img info)', () => {
    const bin = (cmd: string) => new URL(`../dist/bin/${cmd}.js`, import.meta.url).pathname;
    const run = (cmd: string, args: string[]) => spawnSync(process.execPath, [bin(cmd), ...args], { encoding: 'utf8', timeout: 30_000 });
    const conv = run('img-convert', ['--untrusted', 'raw', 'raw', p('real.qed'), p('out.raw')]);
    expect(conv.status).toBe(1);
    expect(conv.stderr).toMatch(/ERR_IMG_UNSAFE: .*format-mismatch: declared raw but the bytes are qed \(a QED image/);
    const info = run('img', ['info', '-f', 'raw', p('real.vdi')]);
    expect(info.status).toBe(1);
    expect(info.stderr).toMatch(/ERR_IMG_UNSAFE: .*looks like vdi, not raw/);
  });
});
