import { ERROR_CODES, ImageError, MemoryStorage, openRaw } from '@img/block';
import { chunked, collectBytes, seededBytes } from '@img/testkit';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { openOva } from './open-ova.js';
import { readTar } from './ova.js';
import { readOvaStream, type OvaStreamOptions } from './ova-read-stream.js';
import { streamOva, type OvaWriteOptions } from './ova-write.js';
import { serializeTarHeader } from './ova-write-tar.js';
import { portableHasher, setManifestHashers } from './sha.js';
import { nodeHashers } from './node/hashers.js';

/** A 5 MiB guest with data at the start and the end. */
function guest(seed: number): Uint8Array {
  const g = new Uint8Array(5 * 1024 * 1024);
  g.set(seededBytes(300_000, seed), 0);
  g.set(seededBytes(8192, seed + 1), g.length - 8192);
  return g;
}

async function ovaOf(g: Uint8Array, options: OvaWriteOptions = {}): Promise<Uint8Array> {
  const s = await streamOva(await openRaw(MemoryStorage.from(g)), { mtime: 1_700_000_000, name: 'vm', ...options });
  return collectBytes(s.chunks);
}

/** The OVA's members as [name, bytes], in archive order. */
async function membersOf(ova: Uint8Array): Promise<[string, Uint8Array][]> {
  const members = await readTar(MemoryStorage.from(ova));
  return members.map((m) => [m.name, ova.slice(m.offset, m.offset + m.size)]);
}

/** A ustar archive of `members`, in that order. */
function tarOf(members: [string, Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [name, data] of members) {
    parts.push(serializeTarHeader({ name, size: data.length }));
    const padded = new Uint8Array(Math.ceil(data.length / 512) * 512);
    padded.set(data);
    parts.push(padded);
  }
  parts.push(new Uint8Array(1024));
  return Buffer.concat(parts);
}

/** Reads disk 0 from a stream of `ova` in odd-sized pieces; answers the guest bytes or the error, and how many bytes came before it. */
async function pipe(ova: Uint8Array, options: OvaStreamOptions = {}): Promise<{ out?: Uint8Array; error?: ImageError; handedOn: number }> {
  let handedOn = 0;
  try {
    const source = await readOvaStream(chunked(ova, 7777), options);
    const out = new Uint8Array(source.size);
    for await (const { offset, data } of source.pieces) {
      out.set(data, offset);
      handedOn += data.length;
    }
    return { out, handedOn };
  } catch (e) {
    if (!ImageError.isInstance(e)) throw e;
    return { error: e, handedOn };
  }
}

/** Flips one bit of a byte of the disk member that the VMDK reader never looks at (its descriptor area). */
async function tamperDisk(ova: Uint8Array): Promise<Uint8Array> {
  const bad = ova.slice();
  const disk = (await readTar(MemoryStorage.from(bad)))[1]!;
  const at = disk.offset + 512 + 900;
  bad[at] = bad[at]! ^ 0x01;
  return bad;
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('readOvaStream checks the manifest at the end of the archive', () => {
  for (const manifest of ['sha256', 'sha1', 'sha512'] as const) {
    it(`passes an intact OVA and refuses one byte changed in the disk (${manifest} manifest)`, async () => {
      const g = guest(3);
      const ova = await ovaOf(g, { manifest });
      const good = await pipe(ova, { untrusted: true });
      expect(good.error).toBeUndefined();
      expect(Buffer.from(good.out!).equals(Buffer.from(g))).toBe(true);
      const bad = await pipe(await tamperDisk(ova));
      expect(bad.error?.code).toBe(ERROR_CODES.UNSAFE);
      expect(bad.error?.message).toMatch(new RegExp(`${manifest.toUpperCase()} of "vm-disk1.vmdk" is [0-9a-f]+, but the manifest says`));
      // The data was handed on before the manifest arrived: the failure is the stream's last step.
      expect(bad.handedOn).toBeGreaterThan(0);
      // The same bytes from a file: the seekable check agrees.
      await expect(openOva(MemoryStorage.from(await tamperDisk(ova)), { untrusted: true })).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE });
    });
  }

  it('verifyManifest: false skips the check; an explicit true needs a manifest', async () => {
    const g = guest(5);
    const bad = await tamperDisk(await ovaOf(g));
    expect((await pipe(bad, { verifyManifest: false })).error).toBeUndefined();
    const bare = await ovaOf(g, { manifest: 'none' });
    expect((await pipe(bare)).error).toBeUndefined();
    expect((await pipe(bare, { untrusted: true })).error).toBeUndefined();
    const asked = await pipe(bare, { verifyManifest: true });
    expect(asked.error?.code).toBe(ERROR_CODES.CORRUPT);
    expect(asked.error?.message).toMatch(/no \.mf file/);
  });

  it('checks the OVF too, and in untrusted mode refuses a manifest without the disk or naming a member not there', async () => {
    const g = guest(7);
    const members = await membersOf(await ovaOf(g));
    expect(members).toHaveLength(3);
    const [ovfName, ovf] = members[0]!;
    const [diskName, disk] = members[1]!;
    const [mfName] = members[2]!;
    const withManifest = (text: string) =>
      tarOf([
        [ovfName, ovf],
        [diskName, disk],
        [mfName, new TextEncoder().encode(text)],
      ]);
    // The OVF's digest wrong, the disk's right.
    const badOvf = await pipe(withManifest(`SHA256(${ovfName})= ${'0'.repeat(64)}\nSHA256(${diskName})= ${sha256(disk)}\n`));
    expect(badOvf.error?.code).toBe(ERROR_CODES.UNSAFE);
    expect(badOvf.error?.message).toContain(`"${ovfName}"`);
    // Only the OVF listed: trusted reads go on, untrusted ones refuse.
    const noDisk = withManifest(`SHA256(${ovfName})= ${sha256(ovf)}\n`);
    expect((await pipe(noDisk)).error).toBeUndefined();
    const refused = await pipe(noDisk, { untrusted: true });
    expect(refused.error?.code).toBe(ERROR_CODES.UNSAFE);
    expect(refused.error?.message).toMatch(/does not list the disk "vm-disk1.vmdk"/);
    await expect(openOva(MemoryStorage.from(noDisk), { untrusted: true })).rejects.toMatchObject({ code: ERROR_CODES.UNSAFE, message: expect.stringMatching(/does not list the disk/) });
    // A member the archive does not hold.
    const ghost = withManifest(`SHA256(${diskName})= ${sha256(disk)}\nSHA256(ghost.iso)= ${'1'.repeat(64)}\n`);
    expect((await pipe(ghost)).error).toBeUndefined();
    expect((await pipe(ghost, { untrusted: true })).error?.message).toMatch(/names "ghost.iso", which the OVA does not hold/);
    // A member after the manifest counts as held.
    const later = tarOf([
      [ovfName, ovf],
      [diskName, disk],
      [mfName, new TextEncoder().encode(`SHA256(${diskName})= ${sha256(disk)}\nSHA1(ghost.iso)= ${'1'.repeat(40)}\n`)],
      ['ghost.iso', new Uint8Array(10)],
    ]);
    expect((await pipe(later, { untrusted: true })).error).toBeUndefined();
  });
});

it('node:crypto hashers give the portable digests, and are what newHasher answers once installed', async () => {
  const data = seededBytes(100_003, 1);
  for (const alg of ['sha1', 'sha256', 'sha512'] as const) {
    const a = portableHasher(alg);
    const b = nodeHashers(alg);
    for (let p = 0; p < data.length; p += 4099) {
      a.update(data.subarray(p, p + 4099));
      b.update(data.subarray(p, p + 4099));
    }
    expect(b.hex()).toBe(a.hex());
  }
  const before = setManifestHashers(nodeHashers);
  try {
    const ova = await tamperDisk(await ovaOf(guest(9)));
    expect((await pipe(ova)).error?.code).toBe(ERROR_CODES.UNSAFE);
  } finally {
    setManifestHashers(before);
  }
});
