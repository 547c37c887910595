import { ERROR_CODES, ImageError, MemoryStorage, openRaw } from '@img/block';
import { FileStorage } from '@img/block/node';
import { chunked, collectBytes, describeQemu, describeWith, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { openOva } from './open-ova.js';
import { applyExtended, parsePax, parseTarHeader, readTar } from './ova.js';
import { readOvaStream } from './ova-read-stream.js';
import { ovaWriteOptionsFrom, streamOva, type OvaWriteOptions } from './ova-write.js';
import { serializeTarHeader } from './ova-write-tar.js';

const dir = tempDir('vmdk-ova-write-');
afterAll(() => dir.cleanup());
const at = (name: string) => join(dir.path, name);
const SCHEMA = join(dirname(fileURLToPath(import.meta.url)), '..', 'test-fixtures', 'dsp8023', 'dsp8023_1.1.1.xsd');

/** A 9 MiB guest with data at the start, in the middle (not grain aligned) and at the end, and holes between. */
function guest(seed = 1): Uint8Array {
  const g = new Uint8Array(9 * 1024 * 1024);
  g.set(seededBytes(200_000, seed), 0);
  g.set(seededBytes(70_000, seed + 1), 3_000_001);
  g.set(seededBytes(4096, seed + 2), g.length - 4096);
  return g;
}

async function ovaOf(bytes: Uint8Array, options: OvaWriteOptions = {}): Promise<Uint8Array> {
  const disk = await openRaw(MemoryStorage.from(bytes));
  const s = await streamOva(disk, { mtime: 1_700_000_000, ...options });
  const out = await collectBytes(s.chunks);
  expect(out.length).toBe(s.length);
  return out;
}

function run(cmd: string, args: string[], cwd = dir.path): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(cmd, args, { cwd, encoding: 'utf8' });
}

it('writes a ustar archive with the .ovf first, the disk, then the manifest', async () => {
  const ova = await ovaOf(guest(), { name: 'web' });
  writeFileSync(at('order.ova'), ova);
  const members = await readTar(MemoryStorage.from(ova));
  expect(members.map((m) => m.name)).toEqual(['web.ovf', 'web-disk1.vmdk', 'web.mf']);
  expect(ova.length % 512).toBe(0);
  const mf = new TextDecoder().decode(ova.subarray(members[2]!.offset, members[2]!.offset + members[2]!.size));
  const sha = (i: number) =>
    createHash('sha256')
      .update(ova.subarray(members[i]!.offset, members[i]!.offset + members[i]!.size))
      .digest('hex');
  expect(mf).toBe(`SHA256(web.ovf)= ${sha(0)}\nSHA256(web-disk1.vmdk)= ${sha(1)}\n`);
});

it('reads back what it wrote (openOva, untrusted: the manifest is checked), with SHA-1 and SHA-512 manifests too', async () => {
  const g = guest(5);
  for (const manifest of ['sha256', 'sha1', 'sha512', 'none'] as const) {
    const ova = await ovaOf(g, { manifest, cpus: 2, memoryMiB: 512 });
    await using disk = await openOva(MemoryStorage.from(ova), { untrusted: true });
    expect(disk.size).toBe(g.length);
    expect(Buffer.from(await disk.read(0, g.length)).equals(Buffer.from(g))).toBe(true);
    expect(disk.contents.manifest?.[0]?.algorithm).toBe(manifest === 'none' ? undefined : manifest);
    expect(disk.contents.ovf.disks[0]).toMatchObject({ capacity: g.length, format: 'http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized' });
    expect(disk.contents.ovf.disks[0]!.populatedSize).toBeGreaterThan(0);
  }
});

it('refuses a disk whose SHA-512 does not match the manifest in untrusted mode', async () => {
  const ova = await ovaOf(guest(7), { manifest: 'sha512' });
  const members = await readTar(MemoryStorage.from(ova));
  const disk = members[1]!;
  // A byte of the descriptor area (not read when opening): only the manifest check can catch it.
  const flip = disk.offset + 512 + 400;
  ova[flip] = ova[flip]! ^ 0x20;
  await expect(openOva(MemoryStorage.from(ova), { untrusted: true })).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE, message: expect.stringMatching(/SHA512/) });
});

it('reads an OVA arriving in pieces of any size, in archive order (readOvaStream)', async () => {
  const g = guest(9);
  const ova = await ovaOf(g);
  const source = await readOvaStream(chunked(ova, 3));
  expect(source.size).toBe(g.length);
  const out = new Uint8Array(g.length);
  for await (const { offset, data } of source.pieces) out.set(data, offset);
  expect(Buffer.from(out).equals(Buffer.from(g))).toBe(true);
  await expect(readOvaStream(chunked(ova, 4), { disk: 1 })).rejects.toMatchObject({ code: ERROR_CODES.INVALID_ARG });
});

it('says so when the disk comes before the OVF in a stream', async () => {
  const ova = await ovaOf(guest(11), { name: 'x' });
  const members = await readTar(MemoryStorage.from(ova));
  const blob = (i: number) => {
    const m = members[i]!;
    const data = ova.subarray(m.offset, m.offset + m.size);
    const out = new Uint8Array(512 + Math.ceil(m.size / 512) * 512);
    out.set(serializeTarHeader({ name: m.name, size: m.size }), 0);
    out.set(data, 512);
    return out;
  };
  const reordered = Buffer.concat([blob(1), blob(0), blob(2), new Uint8Array(1024)]);
  const err = await readOvaStream(chunked(reordered, 1)).catch((e: unknown) => e);
  expect(ImageError.isInstance(err)).toBe(true);
  expect((err as ImageError).code).toBe(ERROR_CODES.UNSUPPORTED);
  expect((err as ImageError).message).toMatch(/comes before the OVF descriptor.*save the OVA to a file/);
  // From a file, the order does not matter.
  await using disk = await openOva(MemoryStorage.from(reordered));
  expect(disk.size).toBe(guest(11).length);
});

it('writes a pax size record for a member of 8 GiB or more, and reads it back', () => {
  const size = 9 * 2 ** 30 + 5;
  const h = serializeTarHeader({ name: 'big-disk1.vmdk', size });
  expect(h.length).toBe(3 * 512);
  const pax = parseTarHeader(h.subarray(0, 512), 'x', 0);
  expect(pax.type).toBe('x');
  const records = parsePax(h.subarray(512, 512 + pax.size), 'x', 512);
  const member = parseTarHeader(h.subarray(1024), 'x', 1024);
  expect(applyExtended(member, records, undefined, 'x', 1024)).toEqual({ name: 'big-disk1.vmdk', size });
  expect(() => serializeTarHeader({ name: 'a'.repeat(101), size: 1 })).toThrow(ImageError);
  expect(() => serializeTarHeader({ name: '../x', size: 1 })).toThrow(ImageError);
});

it('refuses bad options before compressing anything', async () => {
  const disk = await openRaw(MemoryStorage.from(new Uint8Array(65536)));
  for (const options of [{ name: 'a/b' }, { name: '' }, { os: 'beos' }, { name: 'x'.repeat(81) }] as OvaWriteOptions[]) {
    await expect(streamOva(disk, options)).rejects.toMatchObject({ code: ERROR_CODES.INVALID_ARG });
  }
  expect(() => ovaWriteOptionsFrom({ manifest: 'md5' })).toThrow(/manifest must be one of/);
  expect(() => ovaWriteOptionsFrom({ cpus: '0' })).toThrow(/cpus must be a whole number/);
  expect(() => ovaWriteOptionsFrom({ colour: 'red' })).toThrow(/unknown ova option/);
  expect(() => ovaWriteOptionsFrom({ adapterType: 'legacyESX' })).toThrow(/adapter_type/);
  expect(ovaWriteOptionsFrom({ name: 'vm', cpus: '4', memoryMiB: '2048', manifest: 'SHA512', adapterType: 'ide' })).toEqual({ name: 'vm', cpus: 4, memoryMiB: 2048, manifest: 'sha512', adapterType: 'ide' });
});

describeWith('xmllint', 'the OVF against the DMTF schema (DSP8023 1.1.1, xmllint --schema --nonet)', () => {
  const validate = (path: string) => run('xmllint', ['--schema', SCHEMA, '--noout', '--nonet', path]);

  for (const adapterType of ['lsilogic', 'ide', 'pvscsi'] as const) {
    it(`validates (${adapterType} controller, a name with & and ')`, async () => {
      const ova = await ovaOf(guest(13), { name: `R&D 'lab' ${adapterType}`, adapterType, os: 'ubuntu64Guest', network: 'lab & test' });
      const members = await readTar(MemoryStorage.from(ova));
      const ovf = members[0]!;
      writeFileSync(at(`${adapterType}.ovf`), ova.subarray(ovf.offset, ovf.offset + ovf.size));
      const r = validate(at(`${adapterType}.ovf`));
      expect(r.stderr).toMatch(/validates/);
      expect(r.status).toBe(0);
    });
  }

  it('fails an OVF whose Items break the CIM element order (the check can fail)', async () => {
    const ova = await ovaOf(guest(13));
    const members = await readTar(MemoryStorage.from(ova));
    const text = new TextDecoder().decode(ova.subarray(members[0]!.offset, members[0]!.offset + members[0]!.size));
    const broken = text.replace(/(<rasd:InstanceID>1<\/rasd:InstanceID>\s*)(<rasd:ResourceType>3<\/rasd:ResourceType>)/, '$2$1');
    expect(broken).not.toBe(text);
    writeFileSync(at('broken.ovf'), broken);
    expect(validate(at('broken.ovf')).status).not.toBe(0);
  });
});

describeQemu('the OVA through GNU tar, qemu-img and vmdkinfo', () => {
  it('extracts with tar; the disk passes qemu-img check and vmdkinfo, and compares identical to the source', async () => {
    const g = guest(17);
    writeFileSync(at('src.raw'), g);
    writeFileSync(at('vm.ova'), await ovaOf(g, { name: 'tarred' }));
    const listing = run('tar', ['-tvf', 'vm.ova']);
    expect(listing.status).toBe(0);
    expect(
      listing.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(/\s+/).pop()),
    ).toEqual(['tarred.ovf', 'tarred-disk1.vmdk', 'tarred.mf']);
    expect(run('tar', ['-xf', 'vm.ova']).status).toBe(0);
    const mf = readFileSync(at('tarred.mf'), 'utf8');
    for (const [, file, digest] of mf.matchAll(/^SHA256\((.+)\)= ([0-9a-f]+)$/gm))
      expect(
        createHash('sha256')
          .update(readFileSync(at(file!)))
          .digest('hex'),
      ).toBe(digest);
    expect(qemuImg(['check', at('tarred-disk1.vmdk')]).stdout).toMatch(/No errors/);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'vmdk', at('src.raw'), at('tarred-disk1.vmdk')]).stdout).toMatch(/identical/);
    const info = run('vmdkinfo', [at('tarred-disk1.vmdk')]);
    if (info.status !== null || process.env.CI === 'true') {
      expect(info.status).toBe(0);
      expect(info.stdout).toMatch(/Stream optimized/);
    }
    // And img reads the archive back through FileStorage, identical by qemu-img compare.
    await using back = await openOva(await FileStorage.open(at('vm.ova')), { untrusted: true });
    const raw = await back.read(0, back.size);
    writeFileSync(at('back.raw'), raw);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'raw', at('src.raw'), at('back.raw')]).stdout).toMatch(/identical/);
  });
});

describe('the OVF descriptor', () => {
  it('names the CPUs, memory, OS, controller, disk and network', async () => {
    const ova = await ovaOf(guest(19), { name: 'vm1', cpus: 4, memoryMiB: 4096, os: 'windows9_64Guest', adapterType: 'ide', network: 'VM Network' });
    const members = await readTar(MemoryStorage.from(ova));
    const text = new TextDecoder().decode(ova.subarray(members[0]!.offset, members[0]!.offset + members[0]!.size));
    expect(text).toContain(`<File ovf:href="vm1-disk1.vmdk" ovf:id="file1" ovf:size="${members[1]!.size}"/>`);
    expect(text).toContain('<OperatingSystemSection ovf:id="121" vmw:osType="windows9_64Guest">');
    expect(text).toMatch(/<rasd:ResourceType>3<\/rasd:ResourceType>\s*<rasd:VirtualQuantity>4<\/rasd:VirtualQuantity>/);
    expect(text).toMatch(/<rasd:ResourceType>4<\/rasd:ResourceType>\s*<rasd:VirtualQuantity>4096<\/rasd:VirtualQuantity>/);
    expect(text).toMatch(/<rasd:ResourceSubType>PIIX4<\/rasd:ResourceSubType>\s*<rasd:ResourceType>5<\/rasd:ResourceType>/);
    expect(text).toContain('<rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>');
    expect(text).toContain('<Network ovf:name="VM Network">');
  });
});
