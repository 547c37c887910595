// OVAs whose disk is split by ovf:chunkSize (DSP0243 §5.2; ovftool --chunkSize): members name.000000000,
// name.000000001, ... joined in order, from a file and from a pipe, with and without ovf:size, and manifests that
// list the chunks one by one.
import { ERROR_CODES, MemoryStorage, openRaw } from '@img/block';
import { chunked, collectBytes, seededBytes } from '@img/testkit';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { chunkName } from './ova-chunks.js';
import { openOva } from './open-ova.js';
import { readOvaStream } from './ova-read-stream.js';
import { tarOf } from './test-ova.js';
import { streamVmdk } from './stream.js';

const guest = seededBytes(1 << 20, 41);
const disk = await collectBytes((await streamVmdk(await openRaw(MemoryStorage.from(guest)))).chunks);
const HREF = 'vm-disk1.vmdk';

function ovf(attrs: string): Uint8Array {
  return new TextEncoder().encode(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
 <References><File ovf:href="${HREF}" ovf:id="file1"${attrs}/></References>
 <DiskSection><Info>d</Info><Disk ovf:capacity="${guest.length}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
 <VirtualSystem ovf:id="vm"><Info>vm</Info><Name>vm</Name></VirtualSystem>
</Envelope>
`);
}

function chunksOf(size: number): [string, Uint8Array][] {
  const out: [string, Uint8Array][] = [];
  for (let at = 0, i = 0; at < disk.length; at += size, i++) out.push([chunkName(HREF, i), disk.subarray(at, at + size)]);
  return out;
}

function manifest(members: [string, Uint8Array][]): Uint8Array {
  return new TextEncoder().encode(members.map(([n, b]) => `SHA256(${n})= ${createHash('sha256').update(b).digest('hex')}\n`).join(''));
}

async function viaFile(ova: Uint8Array, options: { untrusted?: boolean; verifyManifest?: boolean } = {}): Promise<Uint8Array> {
  const d = await openOva(MemoryStorage.from(ova, { name: 'x.ova' }), options);
  try {
    return await d.read(0, d.size);
  } finally {
    await d.close();
  }
}

async function viaPipe(ova: Uint8Array, options: { untrusted?: boolean; verifyManifest?: boolean } = {}): Promise<Uint8Array> {
  const source = await readOvaStream(chunked(ova, 4093), options);
  const out = new Uint8Array(source.size);
  for await (const { offset, data } of source.pieces) out.set(data, offset);
  return out;
}

const same = (a: Uint8Array): boolean => Buffer.compare(a, guest) === 0;

/** A chunk size that divides the disk into whole chunks (a multiple of 512: the VMDK is whole sectors). */
function wholeChunkSize(): number {
  const sectors = disk.length / 512;
  for (let n = 3; n < 64; n++) if (sectors % n === 0) return (sectors / n) * 512;
  throw new Error(`no divisor for ${sectors} sectors`);
}

describe('ovf:chunkSize: the chunks joined in order', () => {
  it('with ovf:size, a short last chunk: file and pipe read the disk; a manifest listing every chunk verifies (untrusted)', async () => {
    const size = 300 * 1024;
    const chunks = chunksOf(size);
    expect(chunks.length).toBeGreaterThan(2);
    expect(chunks.at(-1)![1].length).toBeLessThan(size);
    const d = ovf(` ovf:size="${disk.length}" ovf:chunkSize="${size}"`);
    const ova = tarOf([['vm.ovf', d], ...chunks, ['vm.mf', manifest([['vm.ovf', d], ...chunks])]]);
    expect(same(await viaFile(ova))).toBe(true);
    expect(same(await viaPipe(ova))).toBe(true);
    expect(same(await viaFile(ova, { untrusted: true }))).toBe(true);
    expect(same(await viaPipe(ova, { untrusted: true }))).toBe(true);
  });

  it('without ovf:size and of whole chunks: the member after the last chunk (the manifest) is still read and checked', async () => {
    const size = wholeChunkSize();
    const chunks = chunksOf(size);
    expect(chunks.every(([, b]) => b.length === size)).toBe(true);
    const d = ovf(` ovf:chunkSize="${size}"`);
    const good = manifest([['vm.ovf', d], ...chunks]);
    const ova = (mf: Uint8Array) => tarOf([['vm.ovf', d], ...chunks, ['vm.mf', mf]]);
    expect(same(await viaFile(ova(good), { untrusted: true }))).toBe(true);
    expect(same(await viaPipe(ova(good), { untrusted: true }))).toBe(true);
    const text = new TextDecoder().decode(good);
    const wrong = new TextEncoder().encode(text.replace(/(\.000000001\)= )([0-9a-f])/, (_, a: string, c: string) => a + (c === '0' ? '1' : '0')));
    await expect(viaFile(ova(wrong), { verifyManifest: true })).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE, message: expect.stringMatching(/"vm-disk1\.vmdk\.000000001"/) as unknown });
    await expect(viaPipe(ova(wrong))).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE, message: expect.stringMatching(/"vm-disk1\.vmdk\.000000001"/) as unknown });
  });

  it('a manifest that leaves a chunk out is refused in untrusted mode, naming the chunk', async () => {
    const size = 300 * 1024;
    const chunks = chunksOf(size);
    const d = ovf(` ovf:size="${disk.length}" ovf:chunkSize="${size}"`);
    const ova = tarOf([['vm.ovf', d], ...chunks, ['vm.mf', manifest([['vm.ovf', d], ...chunks.slice(0, -1)])]]);
    const last = chunks.at(-1)![0].replace(/\./g, '\\.');
    await expect(viaFile(ova, { untrusted: true })).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE, message: expect.stringMatching(new RegExp(`does not list the disk "${last}"`)) as unknown });
    await expect(viaPipe(ova, { untrusted: true })).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE, message: expect.stringMatching(new RegExp(`does not list the disk "${last}"`)) as unknown });
  });

  it('a missing chunk, or one of the wrong size, is refused naming it; chunks out of order read from a file, not from a pipe', async () => {
    const size = 300 * 1024;
    const chunks = chunksOf(size);
    const d = ovf(` ovf:size="${disk.length}" ovf:chunkSize="${size}"`);
    const missing = tarOf([['vm.ovf', d], chunks[0]!, ...chunks.slice(2)]);
    await expect(viaFile(missing)).rejects.toMatchObject({ code: ERROR_CODES.CORRUPT, message: expect.stringMatching(/the chunk "vm-disk1\.vmdk\.000000001" of "vm-disk1\.vmdk" is not in the OVA/) as unknown });
    await expect(viaPipe(missing)).rejects.toMatchObject({ code: ERROR_CODES.UNSUPPORTED, message: expect.stringMatching(/the chunk "vm-disk1\.vmdk\.000000001" does not follow "vm-disk1\.vmdk\.000000000"/) as unknown });
    const short = tarOf([['vm.ovf', d], chunks[0]!, [chunks[1]![0], chunks[1]![1].subarray(512)], ...chunks.slice(2)]);
    for (const read of [viaFile, viaPipe]) {
      await expect(read(short)).rejects.toMatchObject({ code: ERROR_CODES.CORRUPT, message: expect.stringMatching(/the chunk "vm-disk1\.vmdk\.000000001" holds 306688 bytes, but ovf:chunkSize="307200" and ovf:size="\d+" give it 307200/) as unknown });
    }
    const swapped = tarOf([['vm.ovf', d], chunks[1]!, chunks[0]!, ...chunks.slice(2)]);
    expect(same(await viaFile(swapped))).toBe(true);
    await expect(viaPipe(swapped)).rejects.toMatchObject({ code: ERROR_CODES.UNSUPPORTED });
  });
});
