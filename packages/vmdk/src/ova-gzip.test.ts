// OVAs whose disk member is gzip-compressed (ovf:compression="gzip", DSP0243 §7.1; ovftool --compress=N): read
// from a file (openOva: reads, extents, sparseCopy) and from a pipe (readOvaStream), through Node's codecs and the web
// platform's; ovf:size and the manifest are of the member as stored; hostile members (truncated, a bad CRC or length,
// no gzip at all, a decompression bomb) are one ImageError each. The oracle: python3's tarfile and gzip build and
// unpack the OVA, qemu-img converts the unpacked VMDK, and qemu-img compare judges img's raw.
import { ERROR_CODES, ImageError, MemoryStorage, createRaw, openRaw, sparseCopy, type Disk, type Extent } from '@img/block';
import { FileStorage } from '@img/block/node';
import { chunked, collectBytes, describeQemu, hasTool, qemuCompare, qemuImg, qemuMap, seededBytes, tempDir } from '@img/testkit';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setVmdkCodecs, vmdkCodecs, type VmdkCodecs } from './compression.js';
import { createVmdk } from './create.js';
import { nodeCodecs } from './node/codecs.js';
import { openOva } from './open-ova.js';
import { chunkName } from './ova-chunks.js';
import { gunzipMember, maxStreamOptimizedBytes, storageBytes } from './ova-gzip.js';
import { readOvaStream } from './ova-read-stream.js';
import { tarOf } from './test-ova.js';
import { parseSparseHeader } from './sparse-header.js';
import { openStreamVmdk } from './stream-disk.js';
import { streamVmdk } from './stream.js';
import { webCodecs } from './web-codecs.js';

const tmp = tempDir('img-ova-gzip-');
afterAll(() => tmp.cleanup());
const at = (name: string) => join(tmp.path, name);

/** 4 MiB with data, a hole, a text-like run and data in the last grain. */
const guest = new Uint8Array(4 << 20);
guest.set(seededBytes(300_000, 5), 0);
guest.fill(0x41, 3 << 20, (3 << 20) + 100_000);
guest.set(seededBytes(70_000, 6), guest.length - 70_000);
const vmdk = await collectBytes((await streamVmdk(await openRaw(MemoryStorage.from(guest)))).chunks);
const HREF = 'vm-disk1.vmdk.gz';

function ovf(href: string, size: number | undefined, attrs = ' ovf:compression="gzip"'): Uint8Array {
  return new TextEncoder().encode(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
 <References><File ovf:href="${href}" ovf:id="file1"${size === undefined ? '' : ` ovf:size="${size}"`}${attrs}/></References>
 <DiskSection><Info>d</Info><Disk ovf:capacity="${guest.length}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/></DiskSection>
 <VirtualSystem ovf:id="vm"><Info>vm</Info><Name>vm</Name></VirtualSystem>
</Envelope>
`);
}

function manifest(members: [string, Uint8Array][]): Uint8Array {
  return new TextEncoder().encode(members.map(([n, b]) => `SHA256(${n})= ${createHash('sha256').update(b).digest('hex')}\n`).join(''));
}

/** An OVA holding `member` as the gzip disk (ovf:size its length), with a manifest of the bytes as stored. */
function gzOva(member: Uint8Array, attrs?: string): Uint8Array {
  const d = ovf(HREF, member.length, attrs);
  const files: [string, Uint8Array][] = [
    ['vm.ovf', d],
    [HREF, member],
  ];
  return tarOf([...files, ['vm.mf', manifest(files)]]);
}

async function withDisk<T>(ova: Uint8Array, fn: (d: Disk) => Promise<T>, options: { untrusted?: boolean; verifyManifest?: boolean } = {}): Promise<T> {
  const d = await openOva(MemoryStorage.from(ova, { name: 'x.ova' }), options);
  try {
    return await fn(d);
  } finally {
    await d.close();
  }
}

const readAll = (ova: Uint8Array, options: { untrusted?: boolean; verifyManifest?: boolean } = {}) => withDisk(ova, (d) => d.read(0, d.size), options);

/** What img convert does: the extents walked, data read in chunks, into a raw disk. */
async function copied(ova: Uint8Array): Promise<Uint8Array> {
  return withDisk(ova, async (d) => {
    const out = new MemoryStorage({ name: 'out.raw' });
    const dst = await createRaw(out, { size: d.size });
    await sparseCopy(d, dst, { chunkSize: 1 << 20 });
    await dst.close();
    return out.toBytes();
  });
}

async function extentsOf(d: Disk): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of d.extents()) out.push(e);
  return out;
}

async function viaPipe(ova: Uint8Array, options: { untrusted?: boolean; verifyManifest?: boolean } = {}): Promise<Uint8Array> {
  const source = await readOvaStream(chunked(ova, 4093), options);
  const out = new Uint8Array(source.size);
  for await (const { offset, data } of source.pieces) out.set(data, offset);
  return out;
}

const same = (a: Uint8Array, b: Uint8Array = guest) => Buffer.from(a).equals(Buffer.from(b));

/** The error a promise rejects with (fails the test if it resolves). */
async function failure(p: Promise<unknown>): Promise<ImageError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(ImageError.isInstance(e), String(e)).toBe(true);
  return e as ImageError;
}

for (const [name, codecs] of [
  ['node', nodeCodecs],
  ['web', webCodecs],
] as const) {
  describe(`gzip disk members through the ${name} codecs`, () => {
    let before: VmdkCodecs;
    beforeAll(() => {
      before = setVmdkCodecs(codecs);
    });
    afterAll(() => {
      setVmdkCodecs(before);
    });

    it('read as the VMDK they hold: from a file (read, sparseCopy, extents as the uncompressed OVA) and from a pipe; the manifest is of the bytes as stored', async () => {
      expect(vmdkCodecs().name).toBe(name);
      const gz = gzipSync(vmdk, { level: 6 });
      const ova = gzOva(gz);
      expect(same(await readAll(ova, { untrusted: true }))).toBe(true);
      expect(same(await copied(ova))).toBe(true);
      expect(same(await viaPipe(ova, { untrusted: true }))).toBe(true);
      const plain = tarOf([
        ['vm.ovf', ovf('vm-disk1.vmdk', vmdk.length, '')],
        ['vm-disk1.vmdk', vmdk],
      ]);
      const want = await withDisk(plain, extentsOf);
      expect(want.some((e) => e.kind === 'hole')).toBe(true);
      expect(await withDisk(ova, extentsOf)).toEqual(want);
      for (const [offset, length] of [
        [0, 1 << 20],
        [(1 << 20) + 5, 2 << 20],
        [guest.length - 4096, 4096],
      ] as const) {
        const part: Extent[] = [];
        await withDisk(ova, async (d) => {
          for await (const e of d.extents({ offset, length })) part.push(e);
        });
        expect(part[0]!.offset).toBe(offset);
        expect(part.reduce((n, e) => n + e.length, 0)).toBe(length);
      }
      // info: the OVF's compression, the VMDK's fields as for the same VMDK uncompressed.
      const info = await withDisk(ova, (d) => d.info!());
      const plainInfo = await withDisk(plain, (d) => d.info!());
      const fs = info.formatSpecific as { disks: { compression?: string }[]; inner: { extents: { filename: string }[] } };
      expect(fs.disks[0]!.compression).toBe('gzip');
      expect({ ...fs.inner, extents: [] }).toEqual({ ...(plainInfo.formatSpecific as { inner: object }).inner, extents: [] });
      // A digest of the uncompressed VMDK is not the member's: refused, from a file and from a pipe.
      const wrong = tarOf([
        ['vm.ovf', ovf(HREF, gz.length)],
        [HREF, gz],
        ['vm.mf', manifest([[HREF, vmdk]])],
      ]);
      expect((await failure(readAll(wrong, { verifyManifest: true }))).code).toBe(ERROR_CODES.UNSAFE);
      expect((await failure(viaPipe(wrong))).code).toBe(ERROR_CODES.UNSAFE);
      // ovf:size is the compressed size: the VMDK's size there is a mismatch with the member.
      const sized = tarOf([
        ['vm.ovf', ovf(HREF, vmdk.length)],
        [HREF, gz],
      ]);
      for (const e of [await failure(readAll(sized)), await failure(viaPipe(sized))]) {
        expect(e.code).toBe(ERROR_CODES.CORRUPT);
        expect(e.message).toContain(`the OVF says "${HREF}" holds ${vmdk.length} bytes, the tar member holds ${gz.length}`);
      }
    });

    it('a gzip file in chunks (ovf:chunkSize): the chunks of the compressed file, joined, then inflated', async () => {
      const gz = gzipSync(vmdk);
      const size = 100_000;
      const chunks: [string, Uint8Array][] = [];
      for (let o = 0, i = 0; o < gz.length; o += size, i++) chunks.push([chunkName(HREF, i), gz.subarray(o, o + size)]);
      expect(chunks.length).toBeGreaterThan(2);
      const d = ovf(HREF, gz.length, ` ovf:compression="gzip" ovf:chunkSize="${size}"`);
      const ova = tarOf([['vm.ovf', d], ...chunks, ['vm.mf', manifest([['vm.ovf', d], ...chunks])]]);
      expect(same(await readAll(ova, { untrusted: true }))).toBe(true);
      expect(same(await viaPipe(ova, { untrusted: true }))).toBe(true);
    });

    it('reads that go back start a new pass over the member; reads in order take one, concurrent ones too', async () => {
      const ova = gzOva(gzipSync(vmdk));
      await withDisk(ova, async (d) => {
        const tail = await d.read(guest.length - (1 << 20), 1 << 20);
        const head = await d.read(0, 1 << 20);
        const middle = await d.read((2 << 20) + 17, 100_000);
        expect(same(tail, guest.subarray(guest.length - (1 << 20)))).toBe(true);
        expect(same(head, guest.subarray(0, 1 << 20))).toBe(true);
        expect(same(middle, guest.subarray((2 << 20) + 17, (2 << 20) + 17 + 100_000))).toBe(true);
      });
      const member = MemoryStorage.from(gzipSync(vmdk), { name: 'm.gz' });
      let passes = 0;
      const disk = await openStreamVmdk({
        name: 'm.gz',
        storage: member,
        bytes: () => {
          passes++;
          return gunzipMember(storageBytes(member), { file: 'x.ova', member: 'm.gz' });
        },
      });
      expect(passes).toBe(1); // the header and descriptor
      for (let o = 0; o < guest.length; o += 65536 * 3) expect(same(await disk.read(o, Math.min(65536 * 3, guest.length - o)), guest.subarray(o, o + 65536 * 3))).toBe(true);
      expect(disk.readPasses).toBe(1);
      // Concurrent reads in call order (as sparseCopy issues them) share a pass; one that goes back starts another.
      const parts = await Promise.all([0, 1, 2, 3].map((i) => disk.read(i << 20, 1 << 20)));
      expect(same(Buffer.concat(parts))).toBe(true);
      expect(disk.readPasses).toBe(2);
      expect(passes).toBe(3);
      await disk.close();
    });

    it('hostile members: truncated, a bad CRC, a bad length, no gzip, bytes after the gzip stream: one ImageError each, from a file and a pipe', async () => {
      const gz = gzipSync(vmdk);
      const crc = Buffer.from(gz);
      crc[crc.length - 8]! ^= 0x01;
      const length = Buffer.from(gz);
      length[length.length - 2]! ^= 0x01;
      const cases: [string, Uint8Array, RegExp][] = [
        ['truncated', gz.subarray(0, gz.length - 5000), /the gzip stream of "vm-disk1\.vmdk\.gz" ends early, after \d+ bytes inflated: the member is truncated/],
        ['bad CRC', crc, /"vm-disk1\.vmdk\.gz" fails its gzip check \(incorrect data check\) after \d+ bytes inflated: the member is damaged/],
        ['bad length', length, /"vm-disk1\.vmdk\.gz" fails its gzip check \(incorrect length check\)/],
        ['not gzip', vmdk, /"vm-disk1\.vmdk\.gz" is not valid gzip data \(incorrect header check\) after 0 bytes inflated/],
        ['trailing garbage', Buffer.concat([gz, Buffer.from('garbage after the gzip stream')]), /"vm-disk1\.vmdk\.gz" is not valid gzip data/],
      ];
      for (const [what, member, message] of cases) {
        const ova = gzOva(member);
        const errors = [await failure(viaPipe(ova))];
        if (what !== 'not gzip') {
          errors.push(await failure(readAll(ova)), await failure(copied(ova)), await failure(withDisk(ova, extentsOf)));
        } else errors.push(await failure(openOva(MemoryStorage.from(ova, { name: 'x.ova' }))));
        for (const e of errors) {
          expect(e.code, what).toBe(ERROR_CODES.CORRUPT);
          expect(e.message, what).toMatch(message);
          expect(e.message.split('\n'), what).toHaveLength(1);
        }
      }
    });

    it('random damage to the member (a flipped byte, a cut): the data or one ImageError, never a hang or a crash', async () => {
      const gz = gzipSync(vmdk);
      let seed = 12345;
      const next = (n: number) => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return seed % n;
      };
      let failed = 0;
      for (let i = 0; i < 24; i++) {
        const member = Buffer.from(gz);
        if (i % 3 === 2) member.writeUInt8(member[next(member.length)]! ^ (1 + next(255)), next(member.length));
        const bad = i % 3 === 0 ? member.subarray(0, next(member.length)) : member;
        if (i % 3 === 1) bad[next(bad.length)]! ^= 1 << next(8);
        const ova = gzOva(bad);
        for (const read of [() => copied(ova), () => viaPipe(ova)]) {
          const outcome = await read().then(
            (bytes) => ({ bytes }),
            (e: unknown) => ({ e }),
          );
          if ('bytes' in outcome) expect(same(outcome.bytes), `case ${i}`).toBe(true);
          else {
            expect(ImageError.isInstance(outcome.e), `case ${i}: ${String(outcome.e)}`).toBe(true);
            failed++;
          }
        }
      }
      expect(failed).toBeGreaterThan(24);
    });

    it('a member that inflates past what a streamOptimized VMDK of its capacity holds is a bomb: ERR_IMG_CORRUPT, stopped there', async () => {
      const limit = maxStreamOptimizedBytes(parseSparseHeader(vmdk, 0))!;
      expect(limit).toBeGreaterThan(vmdk.length);
      expect(limit).toBeLessThan(guest.length * 1.1 + (3 << 20));
      // A valid VMDK followed by 256 MiB of zeros (which a stream reader takes as padding), 256 KiB compressed.
      const bomb = gzipSync(Buffer.concat([vmdk, new Uint8Array(256 << 20)]), { level: 9 });
      expect(bomb.length).toBeLessThan(1 << 20);
      const ova = gzOva(bomb);
      for (const e of [await failure(viaPipe(ova)), await failure(readAll(ova)), await failure(withDisk(ova, extentsOf))]) {
        expect(e.code).toBe(ERROR_CODES.CORRUPT);
        expect(e.message).toMatch(new RegExp(`"vm-disk1\\.vmdk\\.gz" \\(ovf:compression="gzip"\\) inflates to more than ${limit} bytes, more than a streamOptimized VMDK of its header's capacity can hold: a decompression bomb`));
        // Stopped within a piece of the bound, not at the 256 MiB the member holds.
        expect(e.data.actual as number).toBeLessThan(limit + (4 << 20));
      }
    });
  });
}

describe('gzip members img refuses', () => {
  it('a sparse VMDK that is not streamOptimized, or a raw disk, inside gzip: ERR_IMG_UNSUPPORTED naming the member and why', async () => {
    const storage = new MemoryStorage({ name: 's.vmdk' });
    const sparse = await createVmdk(storage, { size: guest.length });
    await sparse.write(0, guest.subarray(0, 1 << 20));
    await sparse.close();
    for (const [what, member, kind] of [
      ['monolithicSparse', storage.toBytes(), 'a sparse VMDK of another kind'],
      ['raw', guest, 'another format'],
    ] as const) {
      const e = await failure(openOva(MemoryStorage.from(gzOva(gzipSync(member)), { name: 'x.ova' })));
      expect(e.code, what).toBe(ERROR_CODES.UNSUPPORTED);
      expect(e.message, what).toBe(
        `ova: x.ova: disk "vmdisk1" ("vm-disk1.vmdk.gz") is gzip-compressed (ovf:compression="gzip") and is not a streamOptimized VMDK; only that can be read from a compressed member, front to back (${kind} would need random access into it): decompress the member first`,
      );
    }
  });

  it('a streamOptimized VMDK whose grains go back (createVmdk appends a partly written grain last): ERR_IMG_UNSUPPORTED from a file, read from a pipe', async () => {
    const storage = new MemoryStorage({ name: 'c.vmdk' });
    const disk = await createVmdk(storage, { size: 4 * 65536, subformat: 'streamOptimized' });
    const content = new Uint8Array(4 * 65536);
    content.set(seededBytes(1000, 1), 100);
    content.set(seededBytes(65536, 2), 2 * 65536);
    await disk.write(100, content.subarray(100, 1100));
    await disk.write(2 * 65536, content.subarray(2 * 65536, 3 * 65536));
    await disk.close();
    const ova = gzOva(gzipSync(storage.toBytes()));
    expect(same(await viaPipe(ova), content)).toBe(true);
    for (const e of [await failure(readAll(ova)), await failure(withDisk(ova, extentsOf))]) {
      expect(e.code).toBe(ERROR_CODES.UNSUPPORTED);
      expect(e.message).toMatch(/the grain for guest offset 0 comes after grains that lie beyond it; a stream read front to back needs its grains in guest order \(decompress the member first, or read the OVA from a pipe\)/);
    }
  });

  it('an ovf:compression other than gzip: ERR_IMG_UNSUPPORTED naming it', async () => {
    const ova = gzOva(gzipSync(vmdk), ' ovf:compression="bzip2"');
    for (const e of [await failure(readAll(ova)), await failure(viaPipe(ova))]) {
      expect(e.code).toBe(ERROR_CODES.UNSUPPORTED);
      expect(e.message).toMatch(/is compressed with ovf:compression="bzip2", which is not supported \(only "gzip" is read\)/);
    }
  });
});

/** Builds, with python3 alone, an OVA whose disk is the gzip of `vmdkPath` (tarfile, gzip, a SHA256 manifest), and unpacks its disk again. */
const PYTHON_OVA = `
import gzip, hashlib, io, sys, tarfile
vmdk, ova, unpacked, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
data = gzip.compress(open(vmdk, 'rb').read(), compresslevel=6, mtime=0)
href = 'disk1.vmdk.gz'
chunks = [(href, data)] if chunk == 0 else [('%s.%09d' % (href, i), data[o:o + chunk]) for i, o in enumerate(range(0, len(data), chunk))]
ovf = ('<?xml version="1.0" encoding="UTF-8"?>\\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">'
  '<References><File ovf:href="%s" ovf:id="file1" ovf:size="%d" ovf:compression="gzip"%s/></References>'
  '<DiskSection><Info>d</Info><Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30" ovf:diskId="vmdisk1" ovf:fileRef="file1"/></DiskSection>'
  '<VirtualSystem ovf:id="vm"><Info>vm</Info><Name>vm</Name></VirtualSystem></Envelope>\\n') % (href, len(data), ' ovf:chunkSize="%d"' % chunk if chunk else '')
members = [('vm.ovf', ovf.encode())] + chunks
members.append(('vm.mf', ''.join('SHA256(%s)= %s\\n' % (n, hashlib.sha256(b).hexdigest()) for n, b in members).encode()))
with tarfile.open(ova, 'w') as t:
    for n, b in members:
        info = tarfile.TarInfo(n)
        info.size = len(b)
        t.addfile(info, io.BytesIO(b))
with tarfile.open(ova) as t:
    names = [m.name for m in t.getmembers() if m.name.startswith(href)]
    joined = b''.join(t.extractfile(n).read() for n in sorted(names))
open(unpacked, 'wb').write(gzip.decompress(joined))
`;

const oracle = hasTool('python3') ? describeQemu : describe.skip;
oracle('an OVA python3 wrote (tarfile, gzip), against qemu-img on the VMDK python3 unpacked from it', () => {
  const raw = new Uint8Array(24 << 20);
  raw.set(seededBytes(1 << 20, 71), 0);
  raw.set(seededBytes(300_000, 72), 5_000_003);
  raw.fill(0x5a, 9 << 20, 11 << 20);
  raw.set(seededBytes(4096, 73), raw.length - 4096);

  for (const [layout, chunk] of [
    ['qemu-img', 0],
    ['qemu-img', 1 << 20],
    ['img', 0],
  ] as const) {
    it(`a streamOptimized VMDK made by ${layout}${chunk ? ', the gzip file in chunks' : ''}: qemu-img compare finds img's raw identical, img's extents are qemu-img map's`, async () => {
      const base = `${layout}-${chunk}`;
      writeFileSync(at(`${base}.raw`), raw);
      if (layout === 'qemu-img') qemuImg(['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', at(`${base}.raw`), at(`${base}.vmdk`)]);
      else writeFileSync(at(`${base}.vmdk`), await collectBytes((await streamVmdk(await openRaw(MemoryStorage.from(raw)))).chunks));
      const py = spawnSync('python3', ['-c', PYTHON_OVA, at(`${base}.vmdk`), at(`${base}.ova`), at(`${base}-unpacked.vmdk`), String(chunk)], { encoding: 'utf8' });
      expect(py.status, py.stderr).toBe(0);
      expect(Buffer.compare(readFileSync(at(`${base}-unpacked.vmdk`)), readFileSync(at(`${base}.vmdk`)))).toBe(0);
      qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', at(`${base}-unpacked.vmdk`), at(`${base}-qemu.raw`)]);

      await using disk = await openOva(await FileStorage.open(at(`${base}.ova`)), { untrusted: true });
      await using out = await createRaw(await FileStorage.create(at(`${base}-img.raw`)), { size: disk.size });
      await sparseCopy(disk, out);
      await out.flush();
      expect(qemuCompare(at(`${base}-qemu.raw`), at(`${base}-img.raw`), 'raw', 'raw')).toBe(true);
      const ours = (await extentsOf(disk)).filter((e) => e.kind === 'data').map((e) => [e.offset, e.length]);
      const theirs = qemuMap(at(`${base}-unpacked.vmdk`), 'vmdk')
        .filter((e) => e.data)
        .map((e) => [e.start, e.length]);
      expect(ours).toEqual(theirs);
      // And from a pipe.
      const source = await readOvaStream(chunked(readFileSync(at(`${base}.ova`)), 65_537), { untrusted: true });
      const piped = new Uint8Array(source.size);
      for await (const { offset, data } of source.pieces) piped.set(data, offset);
      expect(same(piped, raw)).toBe(true);
    });
  }
});
