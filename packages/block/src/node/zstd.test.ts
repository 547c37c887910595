import { spawnSync } from 'node:child_process';
import { seededBytes, seededText, describeWith } from '@img/testkit';
import { expect, it } from 'vitest';
import { nativeStatus } from './native-loader.js';
import { compressZstdClusters, nativeZstdAvailable } from './zstd.js';

const status = nativeStatus();
// CI installs qemu-utils, which brings libzstd.so.1: there the helper must find it.
if (process.env.CI && process.platform === 'linux' && status.features.zstd === undefined) throw new Error('CI: the native helper must find libzstd for these tests');

/** The zstd command line tool's decoding of one frame (an oracle that is not this code). */
function unzstd(frame: Uint8Array): Uint8Array {
  const r = spawnSync('zstd', ['-d', '-c', '-q'], { input: frame, maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`zstd -d failed: ${r.stderr.toString()}`);
  return new Uint8Array(r.stdout);
}

describeWith('zstd', 'native zstd clusters (the system libzstd, on the thread pool)', () => {
  it.runIf(nativeZstdAvailable())('each cluster becomes one frame the zstd tool decodes to it; incompressible ones are -1; a short last one is padded with zeros', async () => {
    const cs = 65536;
    const clusters = [seededText(cs, 1), seededBytes(cs, 7), new Uint8Array(cs), seededText(cs, 2), seededText(cs / 2 + 100, 3)];
    const input = new Uint8Array(4 * cs + clusters[4]!.length);
    clusters.forEach((c, i) => input.set(c, i * cs));
    const sizes = new Int32Array(5);
    const output = new Uint8Array(5 * cs).fill(0xee);
    const written = await compressZstdClusters(input, cs, 3, output, sizes);
    expect(sizes[1]).toBe(-1);
    let at = 0;
    for (let i = 0; i < 5; i++) {
      if (i === 1) continue;
      const n = sizes[i]!;
      expect(n, `cluster ${i}`).toBeGreaterThan(0);
      expect(n).toBeLessThan(cs);
      const frame = output.subarray(at, at + n);
      // Magic, then a single-segment header with the content size, as qemu's frames (RFC 8878 3.1.1.1).
      expect([...frame.subarray(0, 4)]).toEqual([0x28, 0xb5, 0x2f, 0xfd]);
      expect(frame[4]! & 0x20).toBe(0x20);
      const want = new Uint8Array(cs);
      want.set(clusters[i]!);
      expect(Buffer.compare(unzstd(frame), want), `cluster ${i}`).toBe(0);
      at += n;
    }
    expect(written).toBe(at);
    // Nothing is written past the frames.
    expect(output.subarray(at).every((b) => b === 0xee)).toBe(true);
  });

  it.runIf(nativeZstdAvailable())('many calls at once (more than the pool has threads) each get their own frames', async () => {
    const cs = 4096;
    const inputs = Array.from({ length: 24 }, (_, k) => seededText(16 * cs, 100 + k));
    const results = await Promise.all(
      inputs.map(async (input) => {
        const sizes = new Int32Array(16);
        const output = new Uint8Array(16 * cs);
        await compressZstdClusters(input, cs, 3, output, sizes);
        return { sizes, output };
      }),
    );
    results.forEach(({ sizes, output }, k) => {
      const frames = [];
      let at = 0;
      for (const n of sizes) {
        expect(n).toBeGreaterThan(0);
        frames.push(output.subarray(at, at + n));
        at += n;
      }
      // Concatenated frames decode to the concatenated clusters.
      const all = Buffer.concat(frames);
      expect(Buffer.compare(unzstd(all), inputs[k]!), `call ${k}`).toBe(0);
    });
  });

  it.runIf(nativeZstdAvailable())('refuses sizes and outputs that do not fit the input, and odd cluster sizes', () => {
    const cs = 4096;
    const input = new Uint8Array(3 * cs);
    expect(() => compressZstdClusters(input, cs, 3, new Uint8Array(3 * cs), new Int32Array(2))).toThrow(RangeError);
    expect(() => compressZstdClusters(input, cs, 3, new Uint8Array(2 * cs), new Int32Array(3))).toThrow(RangeError);
    expect(() => compressZstdClusters(input, 100, 3, new Uint8Array(3 * cs), new Int32Array(123))).toThrow(RangeError);
    expect(() => compressZstdClusters(input, cs, 3, new Uint8Array(3 * cs), new Float64Array(3) as unknown as Int32Array)).toThrow(TypeError);
  });

  it('IMG_NATIVE_ZSTD=0 turns it off, and nativeStatus says which libzstd is in use', () => {
    if (status.features.zstd !== undefined) expect(status.features.zstd).toMatch(/^1\.\d+\.\d+$/);
    const dist = new URL('../../dist/node/index.js', import.meta.url);
    const script = `import { nativeStatus, nativeZstdAvailable, compressZstdClusters } from ${JSON.stringify(dist.href)}; console.log(JSON.stringify([nativeStatus().features.zstd ?? null, nativeZstdAvailable(), compressZstdClusters(new Uint8Array(4096), 4096, 3, new Uint8Array(4096), new Int32Array(1)) ?? null]));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, IMG_NATIVE_ZSTD: '0' } });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual([null, false, null]);
  });
});
