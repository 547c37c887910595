// Hostile luks headers: every edit of the header and key material ends in an ImageError or a clean read, never a
// crash, a hang or an unbounded allocation; and the refusals a user meets name the field and the file.
import { describe, expect, it } from 'vitest';
import { ImageError, MemoryStorage, writeU32Be } from '@img/block';
import { installNodeCryptoPrimitives } from '@img/qcow2/node';
import { seededRandom } from '@img/testkit';
import { createLuks } from './create.js';
import { luksDriver } from './driver.js';
import { openLuks } from './open.js';

installNodeCryptoPrimitives();

const PASS = 'pw';

async function made(options: Record<string, unknown> = {}): Promise<Uint8Array> {
  const storage = new MemoryStorage({ name: 'v.luks' });
  const disk = await createLuks(storage, { size: 64 * 1024, passphrase: PASS, iterTime: 5, ...options });
  await disk.write(0, new Uint8Array(64 * 1024).fill(0xa5));
  const bytes = (await storage.read(0, await storage.size())).slice();
  await disk.close();
  return bytes;
}

async function openBytes(bytes: Uint8Array, passphrase?: string) {
  return openLuks(MemoryStorage.from(bytes, { name: 'v.luks' }), passphrase !== undefined ? { passphrase } : {});
}

async function outcome(bytes: Uint8Array): Promise<string> {
  try {
    const disk = await openBytes(bytes, PASS);
    await disk.read(0, disk.size);
    await disk.close();
    return 'ok';
  } catch (e) {
    if (!ImageError.isInstance(e)) throw e;
    expect(e.message).toMatch(/^luks: /);
    return e.code;
  }
}

describe('hostile luks headers', () => {
  it('random edits of the header, the slot entries and the key material: an ImageError or a clean read', async () => {
    const good = await made();
    const rnd = seededRandom(1130);
    const seen = new Set<string>();
    for (let i = 0; i < 60; i++) {
      const bytes = good.slice();
      // Mostly the 592 bytes of fields, sometimes slot 0's key material.
      for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) {
        const at = rnd() < 0.8 ? Math.floor(rnd() * 592) : 4096 + Math.floor(rnd() * 4096);
        bytes[at] = Math.floor(rnd() * 256);
      }
      seen.add(await outcome(bytes));
    }
    expect(seen.has('ERR_IMG_CORRUPT')).toBe(true);
  }, 120_000);

  it('refuses, naming the field: LUKS2, a truncated file, a payload past the end or inside the header, key material in the payload, odd stripes, too many iterations', async () => {
    const good = await made();
    const edit = (f: (b: Uint8Array) => void) => {
      const b = good.slice();
      f(b);
      return b;
    };
    const cases: Array<[string, Uint8Array, string, RegExp]> = [
      ['LUKS2', edit((b) => (b[7] = 2)), 'ERR_IMG_UNSUPPORTED', /LUKS version 2 header \(LUKS2\).*LUKS1 only/],
      ['truncated', good.slice(0, 300), 'ERR_IMG_CORRUPT', /shorter than a LUKS header/],
      ['payload past the end', edit((b) => writeU32Be(b, 104, 0xffffff)), 'ERR_IMG_CORRUPT', /payload offset .* past the end of the file/],
      ['payload inside the header', edit((b) => writeU32Be(b, 104, 1)), 'ERR_IMG_CORRUPT', /payload offset 0x200 lies inside the LUKS header/],
      ['key material in the payload', edit((b) => writeU32Be(b, 208 + 7 * 48 + 40, good.length / 512 - 8)), 'ERR_IMG_CORRUPT', /key slot 7's key material/],
      ['stripes', edit((b) => writeU32Be(b, 208 + 44, 3999)), 'ERR_IMG_CORRUPT', /key slot 0 has 3999 stripes/],
      ['iterations', edit((b) => writeU32Be(b, 208 + 4, 0xffffffff)), 'ERR_IMG_UNSUPPORTED', /key slot 0 asks for 4294967295 PBKDF2 iterations/],
      ['not LUKS', edit((b) => (b[0] = 0)), 'ERR_IMG_WRONG_FORMAT', /not a luks image/],
    ];
    for (const [name, bytes, code, message] of cases) {
      const e = await openBytes(bytes, PASS).then(
        () => undefined,
        (x: unknown) => x,
      );
      expect(ImageError.isInstance(e), name).toBe(true);
      expect([name, (e as ImageError).code], (e as Error).message).toEqual([name, code]);
      expect((e as Error).message, name).toMatch(message);
      expect((e as Error).message, name).toMatch(/^luks: v\.luks: /);
    }
    // A LUKS2 header is no luks image to the probe (qemu's probe wants version 1), and its open says why.
    expect(
      luksDriver.probe(
        edit((b) => (b[7] = 2)),
        good.length,
      ),
    ).toBe(0);
    expect(luksDriver.probe(good, good.length)).toBe(100);
  });

  it('without the passphrase: info and extents, and a read refused in one sentence naming the file', async () => {
    await using disk = await openBytes(await made({ cipherMode: 'cbc', ivgenAlg: 'essiv' }));
    expect((await disk.info()).formatSpecific).toMatchObject({ 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv', 'ivgen-hash-alg': 'sha256' });
    await expect(disk.read(0, 1)).rejects.toMatchObject({ code: 'ERR_IMG_INVALID_ARG', message: expect.stringMatching(/^luks: v\.luks is a LUKS encrypted volume: its data reads and writes only with the passphrase/) });
  });
});
