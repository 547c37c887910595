// The SDK in headless Chromium: the test page (page/main.ts) is bundled as
// a web app would bundle it, served to the browser from memory, and given
// fixture images through its <input type=file>. Each must hash to its
// MANIFEST sha256 (the Node golden suites' expected hashes) and list the
// extents qemu-img map lists; each qcow2 is converted to a dynamic VHD in
// memory and read back to the same bytes; a qcow2 the browser writes with
// deflate clusters must pass qemu-img check and convert to what it wrote.
// With CI=true a missing Chromium fails; locally the suite skips with a
// notice. IMG_CHROMIUM names another executable.
import { createHash, randomFillSync } from 'node:crypto';
import { deflateRawSync } from 'node:zlib';
import { MemoryStorage } from '@img/block';
import { createQcow2 } from '@img/qcow2';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { compareWithQemuMap, hasQemuImg, inCI, loadManifest, normalizeExtents, normalizeQemuMap, qemuCheck, qemuImg, tempDir, testImagesDir } from '@img/testkit';
import type { PageResults } from '../page/main.js';
import { bundleForBrowser, toolDir } from './bundle.js';

const CHROMIUM = process.env.IMG_CHROMIUM ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
// localhost is a secure context (WebCrypto's digest needs one); nothing listens there: page.route answers.
const ORIGIN = 'http://localhost';

/** Uncompressed, deflate (64 KiB and 512-byte clusters), zstd, extended L2; VHD dynamic and fixed; streamOptimized VMDK (qemu-img's, and python3-vmdkstream's with a footer); raw. */
const FIXTURES = [
  'qcow2/v3-64k.qcow2',
  'qcow2/compressed-zlib-64k.qcow2',
  'qcow2/compressed-zlib-512.qcow2',
  'qcow2/compressed-zstd-64k.qcow2',
  'qcow2/extended-l2.qcow2',
  'vhd/dynamic-default.vhd',
  'vhd/fixed-default.vhd',
  'vmdk/stream-qemu.vmdk',
  'vmdk/stream-vmdkstream.vmdk',
  'raw/odd-size.img',
];

if (!haveChromium && !inCI) {
  console.warn(`\n*** tools/browser: no Chromium at ${CHROMIUM}: the browser suite is SKIPPED (CI=true makes this a failure; IMG_CHROMIUM names another) ***\n`);
}

/**
 * Made here by qemu-img at test time: deflate clusters of 2 MiB (one
 * cluster's stream spans many DecompressionStream chunks) and of 4 KiB.
 */
interface Generated {
  file: string;
  size: number;
  sha256: string;
}

function generate(dir: string): Generated[] {
  // Compressible text, then a random run (stored uncompressed), then zeros.
  const size = 6 * 1024 * 1024;
  const raw = Buffer.alloc(size);
  const text = Buffer.from('qcow2 deflate cluster in a browser, made by qemu-img; ');
  for (let at = 0; at < 4 * 1024 * 1024; at += text.length) text.copy(raw, at, 0, Math.min(text.length, 4 * 1024 * 1024 - at));
  randomFillSync(raw, 4 * 1024 * 1024, 1024 * 1024);
  const rawPath = join(dir, 'generated.raw');
  writeFileSync(rawPath, raw);
  const sha256 = createHash('sha256').update(raw).digest('hex');
  return ['2M', '4k'].map((cs) => {
    const file = join(dir, `generated-zlib-${cs}.qcow2`);
    qemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cs},compression_type=zlib`, rawPath, file]);
    const compressed = qemuCheck(file, 'qcow2').result?.['compressed-clusters'];
    if (typeof compressed !== 'number' || compressed < 2) throw new Error(`${file}: qemu-img stored ${String(compressed)} compressed clusters`);
    return { file, size, sha256 };
  });
}

/** The passphrase the page opens `*-luks.qcow2` files with. */
const LUKS_PASSPHRASE = 'browser pass';

/**
 * An encrypted qcow2 (LUKS, aes-256-xts, qemu-img's defaults) made here by
 * qemu-img from the same guest bytes: the page decrypts it with the pure-JS
 * AES and SubtleCrypto's PBKDF2.
 */
function generateLuks(dir: string): Generated {
  const rawPath = join(dir, 'generated.raw');
  const file = join(dir, 'generated-luks.qcow2');
  // qemu-img times PBKDF2 for encrypt.iter-time and here now and then fails "Unable to get accurate CPU usage".
  for (const ms of [100, 150, 70, 200, 130, 300, 90, 500]) {
    const r = qemuImg(['convert', '--object', `secret,id=s,data=${LUKS_PASSPHRASE}`, '-f', 'raw', '-O', 'qcow2', '-o', `encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=${ms}`, rawPath, file], { allowFail: true });
    if (r.status === 0) return { file, size: 6 * 1024 * 1024, sha256: createHash('sha256').update(readFileSync(rawPath)).digest('hex') };
    if (!/accurate CPU usage/.test(r.stderr)) throw new Error(r.stderr);
  }
  throw new Error('qemu-img could not make a LUKS image (PBKDF2 timing failed every time)');
}

/**
 * Two damaged copies of a one-cluster compressed qcow2 (written here with
 * Node's codecs, whose deflate bytes are known): the stream replaced by
 * garbage, and by the start of a deflate bomb (64 MiB of zeros).
 */
async function damaged(dir: string): Promise<string[]> {
  const clusterSize = 65536;
  const cluster = Buffer.alloc(clusterSize);
  for (let i = 0; i < clusterSize; i++) cluster[i] = (i * 7919) % 251 < 40 ? i & 0xff : 0x20;
  const mem = new MemoryStorage();
  const disk = await createQcow2(mem, { size: clusterSize, clusterSize });
  await disk.writeCompressed(0, cluster);
  await disk.close();
  const image = Buffer.from(mem.toBytes());
  const stream = deflateRawSync(cluster, { level: 6, windowBits: 12 });
  const at = image.indexOf(stream);
  if (at < 0 || stream.length < 200) throw new Error('the compressed cluster was not found in the image');
  const garbage = Buffer.from(image);
  garbage.fill(0xff, at, at + stream.length);
  const bomb = Buffer.from(image);
  deflateRawSync(Buffer.alloc(64 * 1024 * 1024)).copy(bomb, at, 0, stream.length);
  return [
    ['damaged-garbage.qcow2', garbage],
    ['damaged-bomb.qcow2', bomb],
  ].map(([name, bytes]) => {
    const file = join(dir, name as string);
    writeFileSync(file, bytes as Buffer);
    return file;
  });
}

if (!haveChromium && inCI) {
  describe('the SDK in headless Chromium', () => {
    it(`has a Chromium at ${CHROMIUM} (CI=true requires one)`, () => {
      expect.fail(`CI=true and no Chromium at ${CHROMIUM}: install it (apt-get install chromium) or set IMG_CHROMIUM`);
    });
  });
}

describe.runIf(haveChromium)('the SDK in headless Chromium', () => {
  let bad: string[] = [];
  let browser: Browser | undefined;
  let results: PageResults;
  let generated: Generated[] = [];
  let luks: Generated[] = [];
  const work = tempDir('img-browser-gen-');
  const manifest = loadManifest();

  beforeAll(async () => {
    const bundle = await bundleForBrowser(readFileSync(join(toolDir, 'page/main.ts'), 'utf8'), { minify: true });
    expect(bundle.nodeImports).toEqual([]);
    const html = readFileSync(join(toolDir, 'page/index.html'), 'utf8');
    // A container's /dev/shm is often 64 MiB: Chromium then shares memory through /tmp.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--disable-dev-shm-usage'] });
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // Served from memory: the page, the bundle, nothing else (no Node polyfills, no other files).
    await page.route(`${ORIGIN}/**`, (route) => {
      const path = new URL(route.request().url()).pathname;
      if (path === '/') return route.fulfill({ body: html, contentType: 'text/html' });
      if (path === '/main.js') return route.fulfill({ body: bundle.js, contentType: 'text/javascript' });
      return route.fulfill({ status: 404, body: 'not found' });
    });
    await page.goto(`${ORIGIN}/`);
    await page.waitForSelector('body[data-ready="true"]', { timeout: 20_000 });
    if (hasQemuImg || inCI) {
      generated = generate(work.path);
      luks = [generateLuks(work.path)];
    }
    bad = await damaged(work.path);
    await page.setInputFiles('#files', [...FIXTURES.map((f) => join(testImagesDir, f)), ...generated.map((g) => g.file), ...luks.map((g) => g.file), ...bad]);
    await page.waitForFunction(() => window.__imgResults !== undefined, undefined, { timeout: 45_000 });
    results = (await page.evaluate(() => window.__imgResults))!;
    expect(errors).toEqual([]);
    if (process.env.IMG_BROWSER_TIMES) for (const f of results.files) console.log(`chromium: ${f.name}: ${f.ms} ms (${f.size} bytes)`);
  });

  afterAll(async () => {
    await browser?.close();
    work.cleanup();
  });

  it('runs the web codecs with no Node globals, without a page-level error', () => {
    expect(results.error).toBeUndefined();
    expect(results.codecs).toBe('web');
    expect(results.vmdkCodecs).toBe('web');
    expect(results.hasNodeGlobals).toBe(false);
    expect(results.files.map((f) => f.name)).toEqual([...FIXTURES, ...generated.map((g) => g.file), ...luks.map((g) => g.file), ...bad].map((f) => f.split('/').pop()));
  });

  for (const [i, fixture] of FIXTURES.entries()) {
    it(`${fixture}: guest bytes hash to the MANIFEST sha256; extents as qemu-img map`, () => {
      const entry = manifest.images.find((m) => m.file === fixture)!;
      const r = results.files[i]!;
      expect(r.error).toBeUndefined();
      expect(r.format).toBe(entry.format);
      expect(r.size).toBe(entry.virtualSize);
      expect(r.sha256).toBe(entry.sha256);
      const ours = normalizeExtents(r.extents as Parameters<typeof normalizeExtents>[0]);
      expect(compareWithQemuMap(ours, normalizeQemuMap(entry.map), entry.format !== 'qcow2')).toBeUndefined();
      if (entry.format === 'qcow2') {
        // qcow2 -> dynamic VHD in memory, back through a Blob: the same guest bytes.
        expect(r.vhdSha256).toBe(entry.sha256);
        expect(r.vhdSize).toBeGreaterThanOrEqual(entry.virtualSize);
      }
    });
  }

  it('streamOptimized VMDKs inflated in the page (DecompressionStream) hash as qemu-img convert -O raw', () => {
    if (!hasQemuImg && !inCI) return;
    const vmdks = FIXTURES.filter((f) => f.endsWith('.vmdk'));
    expect(vmdks.length).toBe(2);
    for (const f of vmdks) {
      const r = results.files[FIXTURES.indexOf(f)]!;
      expect(r.error, f).toBeUndefined();
      const raw = join(work.path, `${f.split('/').pop()}.raw`);
      qemuImg(['convert', '-f', 'vmdk', '-O', 'raw', join(testImagesDir, f), raw]);
      const bytes = readFileSync(raw);
      expect(r.size, f).toBe(bytes.length);
      expect(r.sha256, f).toBe(createHash('sha256').update(bytes).digest('hex'));
    }
  });

  it('qcow2 images qemu-img compressed with 2 MiB and 4 KiB clusters read to the bytes qemu-img was given', () => {
    if (!hasQemuImg && !inCI) return;
    expect(generated.length).toBe(2);
    for (const [k, g] of generated.entries()) {
      const r = results.files[FIXTURES.length + k]!;
      expect(r.error, g.file).toBeUndefined();
      expect(r.size).toBe(g.size);
      expect(r.sha256, g.file).toBe(g.sha256);
      expect(r.vhdSha256, g.file).toBe(g.sha256);
    }
  });

  it('a LUKS-encrypted qcow2 qemu-img made decrypts in the page (pure-JS AES, SubtleCrypto PBKDF2) to the bytes qemu-img was given', () => {
    if (!hasQemuImg && !inCI) return;
    const g = luks[0]!;
    const r = results.files[FIXTURES.length + generated.length]!;
    expect(r.name).toBe('generated-luks.qcow2');
    expect(r.error).toBeUndefined();
    expect(r.size).toBe(g.size);
    expect(r.sha256).toBe(g.sha256);
    expect(r.vhdSha256).toBe(g.sha256);
  });

  it('the VHDs converted in the browser read in qemu-img (vpc) as the qcow2 guest bytes', () => {
    if (!hasQemuImg && !inCI) return;
    const dir = tempDir('img-browser-vhd-');
    try {
      const converted = results.files.filter((f) => f.vhdBase64);
      expect(converted.length).toBeGreaterThanOrEqual(FIXTURES.filter((f) => f.endsWith('.qcow2')).length);
      for (const r of converted) {
        const vhd = join(dir.path, `${r.name}.vhd`);
        const raw = join(dir.path, `${r.name}.raw`);
        writeFileSync(vhd, Buffer.from(r.vhdBase64!, 'base64'));
        qemuImg(['convert', '-f', 'vpc', '-O', 'raw', vhd, raw]);
        const bytes = readFileSync(raw);
        // qemu sizes a VHD as its footer says (or by CHS for some creators): at least the guest, zeros after it.
        expect(bytes.length, r.name).toBeGreaterThanOrEqual(r.size);
        expect(createHash('sha256').update(bytes.subarray(0, r.size)).digest('hex'), r.name).toBe(r.sha256);
        expect(
          bytes.subarray(r.size).every((b) => b === 0),
          r.name,
        ).toBe(true);
      }
    } finally {
      dir.cleanup();
    }
  });

  it('a damaged deflate cluster (garbage, a bomb) is ERR_IMG_CORRUPT naming the cluster, not a hang or a crash', () => {
    const [garbage, bomb] = results.files.slice(-2);
    expect(garbage!.error).toMatch(/^ERR_IMG_CORRUPT ImageError: qcow2: damaged-garbage\.qcow2: compressed cluster at 0x[0-9a-f]+ is not a valid deflate stream/);
    expect(bomb!.error).toMatch(/^ERR_IMG_CORRUPT ImageError: qcow2: damaged-bomb\.qcow2: compressed cluster at 0x[0-9a-f]+ inflates to more than one cluster \(65536 bytes\)/);
  });

  it('a qcow2 written in the browser with deflate clusters reads back, passes qemu-img check and holds what was written', () => {
    const w = results.written!;
    expect(w.readBackSha256).toBe(w.guestSha256);
    if (!hasQemuImg && !inCI) return;
    const dir = tempDir('img-browser-');
    try {
      const file = join(dir.path, 'browser.qcow2');
      const raw = join(dir.path, 'browser.raw');
      writeFileSync(file, Buffer.from(w.qcow2Base64, 'base64'));
      const check = qemuCheck(file, 'qcow2');
      expect(check.status, check.stderr).toBe(0);
      // The three compressible clusters are stored compressed (the random one plain), as qemu counts them.
      expect(check.result?.['compressed-clusters']).toBe(3);
      expect(check.result?.['allocated-clusters']).toBe(4);
      qemuImg(['convert', '-f', 'qcow2', '-O', 'raw', file, raw]);
      expect(createHash('sha256').update(readFileSync(raw)).digest('hex')).toBe(w.guestSha256);
    } finally {
      dir.cleanup();
    }
  });

  it('took well under a minute in the page', () => {
    expect(results.ms).toBeLessThan(30_000);
  });
});
