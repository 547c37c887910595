// OVAs as other tools write them: manifests in OpenSSL 3 and BSD styles (made by openssl and sha256sum --tag),
// a manifest before the disk, an OVF capacity other than the disk's, percent-encoded hrefs, and the
// ovf:compression on a member that is not compressed (ovf:chunkSize: ova-chunks.test.ts; gzip: ova-gzip.test.ts).
import { ERROR_CODES, MemoryStorage, openRaw } from '@img/block';
import { chunked, collectBytes, describeWith, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openOva } from './open-ova.js';
import { readOvaStream } from './ova-read-stream.js';
import { tarOf } from './test-ova.js';
import { streamVmdk } from './stream.js';

const tmp = tempDir('img-ova-variants-');
afterAll(() => tmp.cleanup());
const guest = seededBytes(1 << 20, 31);

async function diskVmdk(): Promise<Uint8Array> {
  return collectBytes((await streamVmdk(await openRaw(MemoryStorage.from(guest)))).chunks);
}

function ovf(href: string, size: number, extra = '', capacity = `ovf:capacity="${guest.length}" ovf:capacityAllocationUnits="byte"`): Uint8Array {
  return new TextEncoder().encode(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
 <References><File ovf:href="${href}" ovf:id="file1" ovf:size="${size}"${extra}/></References>
 <DiskSection><Info>d</Info><Disk ${capacity} ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
 <VirtualSystem ovf:id="vm"><Info>vm</Info><Name>vm</Name></VirtualSystem>
</Envelope>
`);
}

async function viaFile(ova: Uint8Array, options: { untrusted?: boolean; verifyManifest?: boolean } = {}): Promise<Uint8Array> {
  const disk = await openOva(MemoryStorage.from(ova, { name: 'x.ova' }), options);
  try {
    return await disk.read(0, disk.size);
  } finally {
    await disk.close();
  }
}

async function viaPipe(ova: Uint8Array): Promise<Uint8Array> {
  const source = await readOvaStream(chunked(ova, 13));
  const out = new Uint8Array(source.size);
  for await (const { offset, data } of source.pieces) out.set(data, offset);
  return out;
}

const same = (a: Uint8Array) => Buffer.from(a).equals(Buffer.from(guest));

/** Manifest lines for `files` as `tool` prints them (openssl dgst -sha256 on OpenSSL 3, sha256sum --tag). */
function toolManifest(tool: 'openssl' | 'sha256sum', files: [string, Uint8Array][]): Uint8Array {
  for (const [name, data] of files) writeFileSync(join(tmp.path, name), data);
  const args = tool === 'openssl' ? ['dgst', '-sha256', ...files.map(([n]) => n)] : ['--tag', ...files.map(([n]) => n)];
  const r = spawnSync(tool, args, { cwd: tmp.path, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return new TextEncoder().encode(r.stdout);
}

for (const tool of ['openssl', 'sha256sum'] as const) {
  describeWith(tool, `a manifest as ${tool} writes it`, () => {
    it('parses and verifies, after the OVF and before the disk or last, from a file and from a pipe; a changed digest is ERR_IMG_UNSAFE', async () => {
      const disk = await diskVmdk();
      const d = ovf('vm-disk1.vmdk', disk.length);
      const mf = toolManifest(tool, [
        ['vm.ovf', d],
        ['vm-disk1.vmdk', disk],
      ]);
      if (tool === 'openssl') expect(new TextDecoder().decode(mf)).toMatch(/^SHA2-256\(vm\.ovf\)= /);
      else expect(new TextDecoder().decode(mf)).toMatch(/^SHA256 \(vm\.ovf\) = /);
      const text = new TextDecoder().decode(mf);
      const wrong = new TextEncoder().encode(text.replace(/(vm-disk1\.vmdk\)\s*=\s*)([0-9a-f])/, (_, a: string, c: string) => a + (c === '0' ? '1' : '0')));
      for (const early of [true, false]) {
        const ova = (m: Uint8Array) =>
          tarOf(
            early
              ? [
                  ['vm.ovf', d],
                  ['vm.mf', m],
                  ['vm-disk1.vmdk', disk],
                ]
              : [
                  ['vm.ovf', d],
                  ['vm-disk1.vmdk', disk],
                  ['vm.mf', m],
                ],
          );
        expect(same(await viaFile(ova(mf), { untrusted: true })), `early ${early}`).toBe(true);
        expect(same(await viaPipe(ova(mf))), `early ${early}`).toBe(true);
        await expect(viaFile(ova(wrong), { verifyManifest: true }), `early ${early}`).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE });
        await expect(viaPipe(ova(wrong)), `early ${early}`).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE, message: expect.stringMatching(/the SHA256 of "vm-disk1\.vmdk" is/) as unknown });
      }
    });
  });
}

describe('OVAs other exporters write', () => {
  it('a manifest that does not parse is ignored unless it is to be verified', async () => {
    const disk = await diskVmdk();
    const d = ovf('vm-disk1.vmdk', disk.length);
    const ova = tarOf([
      ['vm.ovf', d],
      ['vm-disk1.vmdk', disk],
      ['vm.mf', new TextEncoder().encode('MD5(vm.ovf)= 0123456789abcdef0123456789abcdef\n')],
    ]);
    expect(same(await viaFile(ova))).toBe(true);
    await expect(viaFile(ova, { verifyManifest: true })).rejects.toThrow(/manifest line 1 is not "SHA256\(name\)= hex"/);
  });

  it('an OVF capacity larger or smaller than the VMDK (rounded units): the disk is what the VMDK holds', async () => {
    const disk = await diskVmdk();
    for (const capacity of ['ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20"', 'ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30"', 'ovf:capacity="512" ovf:capacityAllocationUnits="byte * 2^10"']) {
      const ova = tarOf([
        ['vm.ovf', ovf('vm-disk1.vmdk', disk.length, '', capacity)],
        ['vm-disk1.vmdk', disk],
      ]);
      expect(same(await viaFile(ova)), capacity).toBe(true);
      expect(same(await viaPipe(ova)), capacity).toBe(true);
    }
  });

  it('a percent-encoded or file: href names the member it decodes to', async () => {
    const disk = await diskVmdk();
    for (const href of ['vm%20disk%201.vmdk', 'file:vm%20disk%201.vmdk', './vm disk 1.vmdk']) {
      const ova = tarOf([
        ['vm.ovf', ovf(href, disk.length)],
        ['vm disk 1.vmdk', disk],
      ]);
      expect(same(await viaFile(ova)), href).toBe(true);
      expect(same(await viaPipe(ova)), href).toBe(true);
    }
  });

  it('ovf:compression="gzip" on a member stored as is: ERR_IMG_CORRUPT naming the member, not a capacity or missing-member error (gzip members: ova-gzip.test.ts)', async () => {
    const disk = await diskVmdk();
    const gz = tarOf([
      ['vm.ovf', ovf('vm-disk1.vmdk.gz', disk.length, ' ovf:compression="gzip"')],
      ['vm-disk1.vmdk.gz', disk],
    ]);
    const notGzip = { code: ERROR_CODES.CORRUPT, message: expect.stringMatching(/"vm-disk1\.vmdk\.gz" is not valid gzip data \(incorrect header check\)/) as unknown };
    await expect(viaFile(gz)).rejects.toMatchObject(notGzip);
    await expect(viaPipe(gz)).rejects.toMatchObject(notGzip);
  });
});
