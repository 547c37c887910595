import { ERROR_CODES, ImageError } from '@img/block';
import { FileStorage } from '@img/block/node';
import { describeQemu, openOwning, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openOva } from './open-ova.js';
import { readTar } from './ova.js';
import { allocationUnits, parseOvf } from './ovf.js';
import { newHasher } from './sha.js';

const dir = tempDir('vmdk-ova-');
afterAll(() => dir.cleanup());
const at = (name: string) => join(dir.path, name);

const SIZE = 6 * 1024 * 1024;

function ovfText(disks: { id: string; file: string; href: string; bytes: number; capacity: string; units: string }[], extra = ''): string {
  return `<?xml version="1.0" encoding="UTF-8"?>${extra}
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References>
${disks.map((d) => `    <File ovf:id="${d.file}" ovf:href="${d.href}" ovf:size="${d.bytes}"/>`).join('\n')}
  </References>
  <DiskSection>
    <Info>Virtual disks &amp; more</Info>
${disks.map((d) => `    <Disk ovf:diskId="${d.id}" ovf:fileRef="${d.file}" ovf:capacity="${d.capacity}" ovf:capacityAllocationUnits="${d.units}" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>`).join('\n')}
  </DiskSection>
  <VirtualSystem ovf:id="vm1">
    <Info>A virtual machine</Info>
    <Name>test-vm</Name>
  </VirtualSystem>
</Envelope>
`;
}

function run(cmd: string, args: string[], cwd: string): void {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

const sha256 = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Builds source raws, streamOptimized VMDKs made by qemu-img, an OVF, a manifest, and the OVA (GNU tar, ustar). */
function buildOva(name: string, options: { ovfExtra?: string; badManifest?: boolean } = {}): string {
  const raws = [0, 1].map((i) => {
    const raw = new Uint8Array(SIZE + i * 1024 * 1024);
    raw.set(seededBytes(64 * 1024, 10 + i), 0);
    raw.set(seededBytes(300_000, 20 + i), 1_000_003);
    raw.set(seededBytes(4096, 30 + i), raw.length - 4096);
    writeFileSync(at(`${name}-src${i}.raw`), raw);
    qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', at(`${name}-src${i}.raw`), at(`${name}-disk${i}.vmdk`)]);
    return raw;
  });
  const disks = raws.map((r, i) => ({
    id: `vmdisk${i + 1}`,
    file: `file${i + 1}`,
    href: `${name}-disk${i}.vmdk`,
    bytes: readFileSync(at(`${name}-disk${i}.vmdk`)).length,
    capacity: i === 0 ? String(r.length) : String(r.length / 2 ** 20),
    units: i === 0 ? 'byte' : 'byte * 2^20',
  }));
  writeFileSync(at(`${name}.ovf`), ovfText(disks, options.ovfExtra));
  const lines = [`${name}.ovf`, ...disks.map((d) => d.href)].map((f) => `SHA256(${f})= ${sha256(at(f))}`);
  if (options.badManifest) lines[1] = lines[1]!.replace(/= (.)/, (_m, c: string) => `= ${c === '0' ? '1' : '0'}`);
  writeFileSync(at(`${name}.mf`), lines.join('\n') + '\n');
  run('tar', ['--format=ustar', '-cf', `${name}.ova`, `${name}.ovf`, ...disks.map((d) => d.href), `${name}.mf`], dir.path);
  return at(`${name}.ova`);
}

async function expectCode(p: Promise<unknown>, code: string): Promise<ImageError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ImageError);
  expect((e as ImageError).code).toBe(code);
  return e as ImageError;
}

/** openOva on a file: the storage is closed when the open refuses (it stays the caller's then), and with the disk otherwise. */
function openOvaFile(file: string, options?: Parameters<typeof openOva>[1]): ReturnType<typeof openOva> {
  return openOwning(FileStorage.open(file), (storage) => openOva(storage, options));
}

describeQemu('openOva', () => {
  it('reads each disk of an OVA in place, equal to the source raw (qemu-img made the streamOptimized VMDKs)', async () => {
    const ova = buildOva('good');
    for (const i of [0, 1]) {
      await using disk = await openOvaFile(ova, { disk: i, untrusted: true });
      const src = readFileSync(at(`good-src${i}.raw`));
      expect(disk.size).toBe(src.length);
      expect(Buffer.from(await disk.read(0, disk.size)).equals(src)).toBe(true);
      const info = await disk.info();
      expect(info.format).toBe('ova');
      const fs = info.formatSpecific as { name: string; disks: { capacity: number }[]; files: { name: string }[] };
      expect(fs.name).toBe('test-vm');
      expect(fs.disks.map((d) => d.capacity)).toEqual([SIZE, SIZE + 1024 * 1024]);
      expect(fs.files.map((f) => f.name)).toEqual(['good.ovf', 'good-disk0.vmdk', 'good-disk1.vmdk', 'good.mf']);
    }
    await expectCode(openOvaFile(ova, { disk: 2 }), ERROR_CODES.INVALID_ARG);
  });

  it('refuses a manifest mismatch in untrusted mode, and ignores it when trusted', async () => {
    const ova = buildOva('badmf', { badManifest: true });
    const e = await expectCode(openOvaFile(ova, { untrusted: true }), ERROR_CODES.UNSAFE);
    expect(e.message).toContain('badmf-disk0.vmdk');
    await using disk = await openOvaFile(ova);
    expect(disk.size).toBe(SIZE);
  });

  it('refuses an OVF with a DOCTYPE/ENTITY', async () => {
    const ova = buildOva('entity', { ovfExtra: '\n<!DOCTYPE Envelope [<!ENTITY x "boom">]>' });
    const e = await expectCode(openOvaFile(ova), ERROR_CODES.UNSAFE);
    expect(e.message).toMatch(/DOCTYPE/);
  });

  it('refuses a member path "../x" and a truncated tar', async () => {
    const ova = buildOva('paths');
    const bytes = readFileSync(ova);
    // The second header (the first disk) renamed to ../x, its checksum recomputed.
    const tarStorage = await FileStorage.open(ova);
    const members = await readTar(tarStorage);
    await tarStorage.close();
    const header = members[1]!.offset - 512;
    const evil = Buffer.from(bytes);
    evil.fill(0, header, header + 100);
    evil.write('../x', header, 'latin1');
    evil.fill(0x20, header + 148, header + 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += evil[header + i]!;
    evil.write(`${sum.toString(8).padStart(6, '0')}\0 `, header + 148, 'latin1');
    writeFileSync(at('evil.ova'), evil);
    const e = await expectCode(openOvaFile(at('evil.ova')), ERROR_CODES.UNSAFE);
    expect(e.message).toContain('../x');
    // A name with a newline and a terminal escape: quoted on one line, the control characters as \xNN.
    evil.fill(0, header, header + 100);
    evil.write('../x\n\x1b[31my', header, 'latin1');
    evil.fill(0x20, header + 148, header + 156);
    sum = 0;
    for (let i = 0; i < 512; i++) sum += evil[header + i]!;
    evil.write(`${sum.toString(8).padStart(6, '0')}\0 `, header + 148, 'latin1');
    writeFileSync(at('evil-name.ova'), evil);
    const n = await expectCode(openOvaFile(at('evil-name.ova')), ERROR_CODES.UNSAFE);
    expect(n.message).toContain('"../x\\x0a\\x1b[31my"');
    expect(n.message).not.toSatisfy((text: string) => Array.from({ length: text.length }, (_, i) => text.charCodeAt(i)).some((c) => c < 0x20));
    // A checksum field that is not octal, with a newline in it (hostile campaign seed 1059 case 70).
    evil.write('1\n\x07', header + 148, 'latin1');
    writeFileSync(at('evil-sum.ova'), evil);
    const c = await expectCode(openOvaFile(at('evil-sum.ova')), ERROR_CODES.CORRUPT);
    expect(c.message).toMatch(/chksum that is not octal \("1\\x0a\\x07/);
    expect(c.message).not.toSatisfy((text: string) => Array.from({ length: text.length }, (_, i) => text.charCodeAt(i)).some((c) => c < 0x20));
    writeFileSync(at('cut.ova'), bytes.subarray(0, members[1]!.offset + 1000));
    const t = await expectCode(openOvaFile(at('cut.ova')), ERROR_CODES.CORRUPT);
    expect(t.message).toMatch(/truncated/);
  });
});

it('parses OVF units and refuses entities it does not know', () => {
  expect(allocationUnits('byte * 2^30', 'x')).toBe(2 ** 30);
  expect(allocationUnits('byte*2^20', 'x')).toBe(2 ** 20);
  expect(allocationUnits(undefined, 'x')).toBe(1);
  expect(() => allocationUnits('furlongs', 'x')).toThrow(ImageError);
  const ovf = parseOvf(ovfText([{ id: 'd', file: 'f', href: 'a.vmdk', bytes: 10, capacity: '2', units: 'byte * 2^30' }]), 'x');
  expect(ovf.disks[0]).toMatchObject({ diskId: 'd', fileRef: 'f', capacity: 2 ** 31 });
  expect(ovf.files[0]).toEqual({ id: 'f', href: 'a.vmdk', size: 10 });
  expect(ovf.name).toBe('test-vm');
  expect(() => parseOvf('<Envelope><Name>&xxe;</Name></Envelope>', 'x')).toThrow(/not predefined/);
  expect(() => parseOvf('<Envelope><a></b></Envelope>', 'x')).toThrow(/not well-formed/);
  expect(() => parseOvf('<a>'.repeat(100) + '</a>'.repeat(100), 'x')).toThrow(/deeper/);
});

it('hashes SHA-256, SHA-512 and SHA-1 as node:crypto does, in pieces of any length', () => {
  for (const len of [0, 1, 55, 56, 63, 64, 65, 111, 112, 119, 120, 127, 128, 129, 239, 240, 1000, 100_000]) {
    const data = seededBytes(len, len + 7);
    for (const alg of ['sha256', 'sha512', 'sha1'] as const) {
      const h = newHasher(alg);
      for (let p = 0; p < len; p += 37) h.update(data.subarray(p, Math.min(len, p + 37)));
      expect(h.hex()).toBe(createHash(alg).update(data).digest('hex'));
    }
  }
});
