import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ByteStreamReader } from './byte-stream.js';

async function* chunks(bytes: Uint8Array, sizes: number[]): AsyncGenerator<Uint8Array> {
  let at = 0;
  let i = 0;
  while (at < bytes.length) {
    const n = Math.max(1, sizes[i++ % sizes.length]!);
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

describe('ByteStreamReader', () => {
  it('reads, skips and drains the same bytes whatever the chunking', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 5000 }), fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 8 }), fc.integer({ min: 0, max: 600 }), async (len, sizes, keep) => {
        const bytes = new Uint8Array(len).map((_, i) => (i * 7 + 3) & 0xff);
        const r = new ByteStreamReader(chunks(bytes, sizes), 'test');
        const a = Math.min(len, 100);
        expect([...(await r.exact(a, 'head'))]).toEqual([...bytes.subarray(0, a)]);
        const to = Math.min(len, a + 1000);
        expect(await r.skipTo(to)).toBe(true);
        expect(r.position).toBe(to);
        const tail = await r.drain(keep);
        const want = bytes.subarray(Math.max(to, len - keep));
        expect([...tail]).toEqual([...want]);
        expect(r.position).toBe(len);
      }),
      { seed: 4, numRuns: 200 },
    );
  });

  it('names what was being read when the stream ends too early', async () => {
    const r = new ByteStreamReader(chunks(new Uint8Array(10), [3]), 'vhd', 'up.vhd');
    await expect(r.exact(20, 'the footer')).rejects.toMatchObject({ code: 'ERR_IMG_CORRUPT', message: expect.stringMatching(/vhd: up.vhd: the stream ends at 0xa, inside the footer at 0x0/) });
    const s = new ByteStreamReader(chunks(new Uint8Array(10), [3]), 'qcow2');
    expect(await s.skipTo(50)).toBe(false);
    const t = new ByteStreamReader(chunks(new Uint8Array(10), [3]), 'qcow2');
    await expect(t.skipTo(50, 'the L1 table')).rejects.toMatchObject({ message: expect.stringMatching(/before the L1 table at 0x32/) });
  });
});
