// The pure-JS crypto primitives (for browsers and workers) against node:crypto's, call by call, and through whole
// images: LUKS and AES images qemu-img made read with them as qemu-img decrypts them, and a LUKS image written with
// them reads in qemu-img and checks clean.
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStorage } from '@img/block/node';
import { describeQemu, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { openQcow2 } from './open.js';
import { createQcow2 } from './create.js';
import { qcow2CryptoPrimitives, setQcow2CryptoPrimitives } from './crypto-primitives.js';
import { nodeCryptoPrimitives } from './node/crypto.js';
import { webCryptoPrimitives as web } from './web-crypto.js';

const node = nodeCryptoPrimitives;
const bytes = (n: number) => new Uint8Array(randomBytes(n));

describe('web crypto primitives, against node:crypto', () => {
  // The @noble modules load on prepare() (the image code awaits it through readyCryptoPrimitives).
  beforeAll(() => web.prepare!());

  it('are installed from the start (this file imports no Node entry, which would install node:crypto)', () => {
    expect(qcow2CryptoPrimitives()).toBe(web);
  });

  it('AES blocks (128, 192, 256; both ways) and CBC encryption', () => {
    for (const keyBytes of [16, 24, 32]) {
      for (let round = 0; round < 20; round++) {
        const key = bytes(keyBytes);
        const data = bytes(16 * (1 + round * 7));
        const iv = bytes(16);
        for (const direction of ['encrypt', 'decrypt'] as const) {
          expect(Buffer.from(web.aesBlocks(key, direction, data)).equals(Buffer.from(node.aesBlocks(key, direction, data))), `${keyBytes} ${direction}`).toBe(true);
        }
        expect(Buffer.from(web.aesCbcEncrypt(key, iv, data)).equals(Buffer.from(node.aesCbcEncrypt(key, iv, data)))).toBe(true);
      }
    }
    expect(() => web.aesBlocks(bytes(20), 'encrypt', bytes(16))).toThrow(/16, 24 or 32 bytes/);
  });

  it('digests and their lengths, for every hash LUKS names; PBKDF2 with and without SubtleCrypto', async () => {
    for (const hash of ['md5', 'sha1', 'sha224', 'sha256', 'sha384', 'sha512', 'ripemd160']) {
      expect(web.hashLength(hash), hash).toBe(node.hashLength(hash));
      for (const n of [0, 1, 55, 56, 64, 1000]) {
        const data = bytes(n);
        expect(Buffer.from(web.digest(hash, data)).equals(Buffer.from(node.digest(hash, data))), `${hash} ${n}`).toBe(true);
      }
      for (const password of [bytes(11), new Uint8Array(0)]) {
        const salt = bytes(32);
        const want = await node.pbkdf2(password, salt, 1000, 40, hash);
        expect(Buffer.from(await web.pbkdf2(password, salt, 1000, 40, hash)).equals(Buffer.from(want)), `${hash} pbkdf2 ${password.length}`).toBe(true);
      }
    }
    expect(web.hashLength('whirlpool')).toBeUndefined();
    await expect(web.pbkdf2(bytes(4), bytes(4), 1, 16, 'whirlpool')).rejects.toThrow(/not available/);
  });

  it('random bytes past getRandomValues bound of 65536 per call', () => {
    const r = web.randomBytes(200000);
    expect(r.length).toBe(200000);
    expect(r.subarray(150000).some((b) => b !== 0)).toBe(true);
  });
});

describeQemu('encrypted images through the web crypto primitives', () => {
  const tmp = tempDir('img-webcrypto-');
  const p = (n: string) => join(tmp.path, n);
  const secret = ['--object', 'secret,id=s,data=pass phrase'];
  const opts = (file: string) => ['--image-opts', `driver=qcow2,file.filename=${file},encrypt.key-secret=s`];
  const KINDS: Record<string, string> = {
    'luks-default': 'encrypt.format=luks',
    'luks-cbc-essiv': 'encrypt.format=luks,encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256',
    'luks-cbc-plain64-sha512': 'encrypt.format=luks,encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain64,encrypt.hash-alg=sha512',
    aes: 'encrypt.format=aes',
  };
  let previous: ReturnType<typeof qcow2CryptoPrimitives>;
  beforeAll(() => {
    previous = setQcow2CryptoPrimitives(web);
    const raw = new Uint8Array(4 << 20);
    raw.set(seededBytes(70000, 1), 0);
    raw.set(seededBytes(1 << 20, 2), 2 << 20);
    writeFileSync(p('src.raw'), raw);
    for (const [name, o] of Object.entries(KINDS)) {
      // qemu-img times PBKDF2 for encrypt.iter-time and here now and then fails "Unable to get accurate CPU usage".
      let made = false;
      for (const ms of [50, 100, 70, 200, 130, 300, 90, 500, 110, 1000]) {
        const r = qemuImg(['convert', ...secret, '-O', 'qcow2', '-o', `${o},encrypt.key-secret=s${o.includes('luks') ? `,encrypt.iter-time=${ms}` : ''}`, p('src.raw'), p(`${name}.qcow2`)], { allowFail: true });
        made = r.status === 0;
        if (made) break;
        if (!/accurate CPU usage/.test(r.stderr)) throw new Error(r.stderr);
      }
      if (!made) throw new Error(`qemu-img could not make ${name}.qcow2 (PBKDF2 timing failed every time)`);
    }
  }, 300_000); // qemu-img times PBKDF2 for every image it makes: minutes on a loaded machine
  afterAll(() => {
    setQcow2CryptoPrimitives(previous);
    tmp.cleanup();
  });

  it.each(Object.keys(KINDS))('%s (qemu-img made it) reads as qemu-img decrypts it', async (name) => {
    const out = p(`${name}.raw`);
    qemuImg(['convert', ...secret, ...opts(p(`${name}.qcow2`)), '-O', 'raw', out]);
    const disk = await openQcow2(await FileStorage.open(p(`${name}.qcow2`), { readOnly: true }), { passphrase: 'pass phrase' });
    try {
      expect(Buffer.from(await disk.read(0, disk.size)).equals(readFileSync(out))).toBe(true);
    } finally {
      await disk.close();
    }
  });

  it('a LUKS image written with them reads in qemu-img, which checks it clean', async () => {
    const file = p('web-written.qcow2');
    const disk = await createQcow2(await FileStorage.create(file), { size: 4 << 20, encryptFormat: 'luks', encryptPassphrase: 'pass phrase', encryptIterTime: 20, encryptCipherMode: 'cbc', encryptIvgenAlg: 'essiv' });
    const model = new Uint8Array(4 << 20);
    for (const [at, data] of [
      [0, seededBytes(70000, 3)],
      [(1 << 20) + 511, seededBytes(5000, 4)],
    ] as const) {
      await disk.write(at, data);
      model.set(data, at);
    }
    await disk.close();
    expect(qemuImg(['check', ...secret, ...opts(file)]).status).toBe(0);
    const out = p('web-written.raw');
    qemuImg(['convert', ...secret, ...opts(file), '-O', 'raw', out]);
    expect(readFileSync(out).equals(Buffer.from(model))).toBe(true);
  });

  it.each([
    ['serpent-128-xts-plain64', { encryptCipherAlg: 'serpent-128' }],
    ['twofish-256-cbc-essiv', { encryptCipherAlg: 'twofish-256', encryptCipherMode: 'cbc', encryptIvgenAlg: 'essiv' }],
    ['cast5-128-ctr-essiv:md5', { encryptCipherAlg: 'cast5-128', encryptCipherMode: 'ctr', encryptIvgenAlg: 'essiv', encryptIvgenHashAlg: 'md5' }],
  ] as const)("a %s image (img's own cipher; the web hashes and PBKDF2) written with them reads in qemu-img, and back in img", async (name, options) => {
    const file = p(`web-${name.replace(/[^a-z0-9]/g, '')}.qcow2`);
    const disk = await createQcow2(await FileStorage.create(file), { size: 1 << 20, encryptFormat: 'luks', encryptPassphrase: 'pass phrase', encryptIterTime: 20, ...options });
    const model = new Uint8Array(1 << 20);
    const data = seededBytes(70001, 5);
    await disk.write(4095, data);
    model.set(data, 4095);
    await disk.close();
    expect(qemuImg(['check', ...secret, ...opts(file)]).status).toBe(0);
    const out = p(`web-${name.replace(/[^a-z0-9]/g, '')}.raw`);
    qemuImg(['convert', ...secret, ...opts(file), '-O', 'raw', out]);
    expect(readFileSync(out).equals(Buffer.from(model))).toBe(true);
    const again = await openQcow2(await FileStorage.open(file, { readOnly: true }), { passphrase: 'pass phrase' });
    try {
      expect(Buffer.from(await again.read(0, 1 << 20)).equals(Buffer.from(model))).toBe(true);
    } finally {
      await again.close();
    }
  });
});
