// Every cipher, mode and IV generator qemu-img 7.2 makes luks images with, both ways: aes, serpent and twofish
// (128-, 192- and 256-bit keys; 192 in xts only, where qemu-img 7.2 aborts on the others) in ecb, cbc, xts and ctr
// with plain, plain64 and essiv IVs, and cast5-128 in ecb, cbc and ctr (essiv with md5 only: its IV cipher is
// keyed with the digest). For each: an image img makes, into which qemu-img writes known data (qemu-img convert -n
// --target-image-opts), reads as that data in img; img's own writes into it (odd offsets, partial sectors) compare
// identical in qemu-img; qemu-img info reads the header img meant, and img info is qemu-img info. Images qemu-img
// makes whole (header and key slot too: qemu-img convert of the data) read as their data in img, for a set that
// has every cipher, every mode and every IV generator (each qemu-img make times PBKDF2 for seconds; on a loaded
// machine it fails now and then, so not all 90). The combinations qemu-img refuses, img refuses, in its words.
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { ImageError } from '@img/block';
import { FileStorage } from '@img/block/node';
import { installNodeCryptoPrimitives } from '@img/qcow2/node';
import { describeQemu, qemuImg, seededBytes, seededRandom, tempDir } from '@img/testkit';
import { createLuks } from './create.js';
import { openLuks } from './open.js';

installNodeCryptoPrimitives();

const PASS = 'correct horse';
const secret = ['--object', `secret,id=s,data=${PASS}`];
const opts = (file: string) => `driver=luks,file.filename=${file},key-secret=s`;

/** The cipher sets, as `-o` text (without key-secret). */
const COMBOS: string[] = [];
for (const family of ['aes', 'serpent', 'twofish']) {
  for (const bits of [128, 192, 256]) {
    for (const mode of ['ecb', 'cbc', 'xts', 'ctr']) {
      if (bits === 192 && mode !== 'xts') continue;
      for (const ivgen of ['plain', 'plain64', 'essiv']) COMBOS.push(`cipher-alg=${family}-${bits},cipher-mode=${mode},ivgen-alg=${ivgen}`);
    }
  }
}
for (const mode of ['ecb', 'cbc', 'ctr']) for (const ivgen of ['plain', 'plain64']) COMBOS.push(`cipher-alg=cast5-128,cipher-mode=${mode},ivgen-alg=${ivgen}`);
// essiv keyed by a digest of another size: cast5 with md5 (its one key size), serpent-256's IVs with serpent-128, aes-128's with aes-256.
COMBOS.push('cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5', 'cipher-alg=serpent-256,cipher-mode=xts,ivgen-alg=essiv,ivgen-hash-alg=md5', 'cipher-alg=aes-128,cipher-mode=ctr,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha512');

/** The combinations qemu-img makes whole: every cipher with every mode, each IV generator with every cipher. */
const WHOLE: string[] = [
  'cipher-alg=aes-256,cipher-mode=ecb,ivgen-alg=plain',
  'cipher-alg=aes-128,cipher-mode=ctr,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha512',
  'cipher-alg=serpent-256,cipher-mode=xts,ivgen-alg=plain64',
  'cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv',
  'cipher-alg=serpent-256,cipher-mode=ecb,ivgen-alg=essiv',
  'cipher-alg=serpent-128,cipher-mode=ctr,ivgen-alg=plain',
  'cipher-alg=twofish-128,cipher-mode=xts,ivgen-alg=essiv',
  'cipher-alg=twofish-256,cipher-mode=cbc,ivgen-alg=plain',
  'cipher-alg=twofish-128,cipher-mode=ecb,ivgen-alg=plain64',
  'cipher-alg=twofish-256,cipher-mode=ctr,ivgen-alg=essiv',
  'cipher-alg=serpent-192,cipher-mode=xts,ivgen-alg=plain',
  'cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5',
  'cipher-alg=cast5-128,cipher-mode=ecb,ivgen-alg=plain',
  'cipher-alg=cast5-128,cipher-mode=ctr,ivgen-alg=plain64',
];

const nameOf = (o: string) => o.replace(/[a-z-]+=/g, '').replace(/,/g, '-');

/** `-o` text as typed create options, with the passphrase. */
function typed(o: string): Record<string, unknown> {
  const out: Record<string, unknown> = { passphrase: PASS, iterTime: 10 };
  for (const item of o.split(',')) {
    const [k, v] = item.split('=') as [string, string];
    out[k.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase())] = v;
  }
  return out;
}

/**
 * qemu-img with LUKS options, as @img/testkit's qemuImgLuks (tried again with other iter-times while it fails
 * "Unable to get accurate CPU usage", more often on a loaded machine: more tries), but asynchronous: it spends
 * seconds timing PBKDF2, while other tests run.
 */
async function qemuLuks(args: string[]): Promise<void> {
  let last = '';
  for (const ms of [10, 20, 50, 10, 100, 20, 200, 50, 10, 300, 20, 100, 500, 50, 10, 1000]) {
    try {
      await promisify(execFile)(
        'qemu-img',
        args.map((a, i) => (args[i - 1] === '-o' ? `${a},iter-time=${ms}` : a)),
      );
      return;
    } catch (e) {
      last = (e as { stderr?: string }).stderr ?? String(e);
      if (!/accurate CPU usage/.test(last)) break;
    }
  }
  throw new Error(`qemu-img ${args.join(' ')}: ${last}`);
}

describeQemu('luks images of every cipher qemu-img makes', () => {
  const tmp = tempDir('img-luks-ciphers-');
  const p = (n: string) => join(tmp.path, n);
  const SIZE = 70 * 1024 + 512;
  let source: Uint8Array;

  beforeAll(async () => {
    source = seededBytes(SIZE, 11);
    writeFileSync(p('src.raw'), source);
    for (const o of WHOLE) await qemuLuks(['convert', ...secret, '-f', 'raw', '-O', 'luks', '-o', `key-secret=s,${o}`, p('src.raw'), p(`q-${nameOf(o)}.luks`)]);
  }, 900_000);
  afterAll(() => tmp.cleanup());

  it.each(WHOLE)('%s: made by qemu-img, reads as the data it was made from, and describes itself as qemu-img info', async (o) => {
    const file = p(`q-${nameOf(o)}.luks`);
    // qemu-img's own decryption agrees with the data it was given.
    qemuImg(['convert', ...secret, '--image-opts', opts(file), '-O', 'raw', p('q.raw')]);
    expect(readFileSync(p('q.raw')).equals(Buffer.from(source))).toBe(true);
    await using disk = await openLuks(await FileStorage.open(file, { readOnly: true }), { passphrase: PASS });
    expect(Buffer.from(await disk.read(0, disk.size)).equals(Buffer.from(source))).toBe(true);
    const rnd = seededRandom(o.length);
    for (let i = 0; i < 12; i++) {
      const offset = Math.floor(rnd() * (SIZE - 1));
      const length = 1 + Math.floor(rnd() * Math.min(3000, SIZE - offset - 1));
      expect(Buffer.from(await disk.read(offset, length)).equals(Buffer.from(source.subarray(offset, offset + length))), `${offset}+${length}`).toBe(true);
    }
    const theirs = JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as { 'format-specific': { data: unknown } };
    expect((await disk.info()).formatSpecific).toEqual(theirs['format-specific'].data);
  });

  it.each(COMBOS)('%s: made by img, written by qemu-img and by img (odd offsets, partial sectors), read back by both', async (o) => {
    const file = p(`i-${nameOf(o)}.luks`);
    await (await createLuks(await FileStorage.create(file), { size: SIZE, ...typed(o) })).close();
    // qemu-img encrypts the data into img's image (its key slot opened by qemu-img) ...
    qemuImg(['convert', '-n', ...secret, '-f', 'raw', p('src.raw'), '--target-image-opts', opts(file)]);
    const model = source.slice();
    {
      // ... img decrypts it, and writes over parts of it.
      await using disk = await openLuks(await FileStorage.open(file, { readOnly: false }), { passphrase: PASS, readOnly: false });
      expect(Buffer.from(await disk.read(0, SIZE)).equals(Buffer.from(source))).toBe(true);
      const rnd = seededRandom(3 + o.length);
      for (let i = 0; i < 16; i++) {
        const offset = Math.floor(rnd() * (SIZE - 1));
        const length = 1 + Math.floor(rnd() * Math.min(5000, SIZE - offset - 1));
        const data = seededBytes(length, i + 40);
        model.set(data, offset);
        await disk.write(offset, data);
      }
      expect(Buffer.from(await disk.read(0, SIZE)).equals(Buffer.from(model))).toBe(true);
    }
    // qemu-img decrypts img's writes.
    writeFileSync(p('i.model'), model);
    expect(qemuImg(['compare', ...secret, '--image-opts', opts(file), `driver=raw,file.filename=${p('i.model')}`]).stdout).toBe('Images are identical.\n');
    const theirs = JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as { 'format-specific': { data: Record<string, unknown> } };
    const t = typed(o);
    expect(theirs['format-specific'].data).toMatchObject({ 'cipher-alg': t.cipherAlg, 'cipher-mode': t.cipherMode, 'ivgen-alg': t.ivgenAlg, 'hash-alg': t.hashAlg ?? 'sha256' });
    await using disk = await openLuks(await FileStorage.open(file, { readOnly: true }));
    expect((await disk.info()).formatSpecific).toEqual(theirs['format-specific'].data);
  });

  /** The error createLuks ends in for `o` (its storage closed after it). */
  const refusal = async (o: string) => {
    const storage = await FileStorage.create(p('refused-img.luks'));
    try {
      return await createLuks(storage, { size: 1 << 20, ...typed(o) }).then(
        async (d) => {
          await d.close();
          return undefined;
        },
        (x: unknown) => x,
      );
    } finally {
      await storage.close();
    }
  };

  it.each([
    ['cipher-alg=cast5-128,cipher-mode=xts', /Unsupported cipher mode xts/, 'ERR_IMG_INVALID_ARG'],
    ['cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv', /Cipher cast5-128 not supported with essiv/, 'ERR_IMG_INVALID_ARG'],
    ['cipher-alg=twofish-256,cipher-mode=xts,ivgen-alg=essiv,ivgen-hash-alg=sha1', /No Twofish cipher with key size 20 available/, 'ERR_IMG_INVALID_ARG'],
    ['cipher-alg=serpent-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha512', /No Serpent cipher with key size 64 available/, 'ERR_IMG_INVALID_ARG'],
    ['cipher-alg=des,cipher-mode=cbc', /Algorithm 'des' not supported/, 'ERR_IMG_UNSUPPORTED'],
    ['cipher-alg=sm4,cipher-mode=cbc', /does not accept value 'sm4'/, 'ERR_IMG_INVALID_ARG'],
  ])('%s: refused by qemu-img and by img', async (o, theirs, code) => {
    const r = qemuImg(['create', '-f', 'luks', ...secret, '-o', `key-secret=s,iter-time=10,${o}`, p('refused.luks'), '1M'], { allowFail: true });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(theirs);
    const e = await refusal(o);
    expect(ImageError.isInstance(e) && e.code).toBe(code);
    // In qemu-img's words too, where it has words of its own for it.
    if (!o.includes('sm4')) expect((e as Error).message).toMatch(theirs);
  });

  it('192-bit keys outside xts are refused (qemu-img 7.2 aborts on their 187.5 sectors of key material)', async () => {
    for (const alg of ['aes-192', 'serpent-192', 'twofish-192']) {
      for (const mode of ['ecb', 'cbc', 'ctr']) {
        const e = await refusal(`cipher-alg=${alg},cipher-mode=${mode}`);
        expect(ImageError.isInstance(e) && e.code, `${alg}-${mode}`).toBe('ERR_IMG_UNSUPPORTED');
        expect((e as Error).message).toMatch(/qemu-img 7.2 aborts/);
      }
    }
  });
});
