// The SDK in headless Chromium: the test page (page/main.ts) is bundled as
// a web app would bundle it, served to the browser from memory, and given
// fixture images through its <input type=file>. Each must hash to its
// MANIFEST sha256 (the Node golden suites' expected hashes) and list the
// extents qemu-img map lists; each qcow2 is converted to a dynamic VHD in
// memory and read back to the same bytes; a qcow2 the browser writes with
// deflate clusters must pass qemu-img check and convert to what it wrote.
// With CI=true a missing Chromium fails; locally the suite skips with a
// notice. IMG_CHROMIUM names another executable.
import { createHash } from 'node:crypto';
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

/** Uncompressed, deflate (64 KiB and 512-byte clusters), zstd, extended L2; VHD dynamic and fixed; raw. */
const FIXTURES = [
  'qcow2/v3-64k.qcow2',
  'qcow2/compressed-zlib-64k.qcow2',
  'qcow2/compressed-zlib-512.qcow2',
  'qcow2/compressed-zstd-64k.qcow2',
  'qcow2/extended-l2.qcow2',
  'vhd/dynamic-default.vhd',
  'vhd/fixed-default.vhd',
  'raw/odd-size.img',
];

if (!haveChromium && !inCI) {
  console.warn(`\n*** tools/browser: no Chromium at ${CHROMIUM}: the browser suite is SKIPPED (CI=true makes this a failure; IMG_CHROMIUM names another) ***\n`);
}

describe.runIf(haveChromium || inCI)('the SDK in headless Chromium', () => {
  let browser: Browser | undefined;
  let results: PageResults;
  const manifest = loadManifest();

  beforeAll(async () => {
    if (!haveChromium) throw new Error(`CI=true and no Chromium at ${CHROMIUM}: install it (apt-get install chromium) or set IMG_CHROMIUM`);
    const bundle = await bundleForBrowser(readFileSync(join(toolDir, 'page/main.ts'), 'utf8'), { minify: true });
    expect(bundle.nodeImports).toEqual([]);
    const html = readFileSync(join(toolDir, 'page/index.html'), 'utf8');
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
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
    await page.setInputFiles('#files', FIXTURES.map((f) => join(testImagesDir, f)));
    await page.waitForFunction(() => window.__imgResults !== undefined, undefined, { timeout: 45_000 });
    results = (await page.evaluate(() => window.__imgResults))!;
    expect(errors).toEqual([]);
  });

  afterAll(async () => {
    await browser?.close();
  });

  it('runs the web codecs with no Node globals, without a page-level error', () => {
    expect(results.error).toBeUndefined();
    expect(results.codecs).toBe('web');
    expect(results.hasNodeGlobals).toBe(false);
    expect(results.files.map((f) => f.name)).toEqual(FIXTURES.map((f) => f.split('/').pop()));
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
