// examples/browser, the page a user opens: given a qcow2 through its file input, it prints the image's info and draws
// an allocation map whose cells agree with the extents the SDK reports in Node for the same file.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileStorage } from '@img/block/node';
import { openQcow2 } from '@img/qcow2';
import { inCI, repoRoot, testImagesDir } from '@img/testkit';
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundleForBrowser } from './bundle.js';

const CHROMIUM = process.env.IMG_CHROMIUM ?? '/usr/bin/chromium';
const ORIGIN = 'http://localhost';
const example = join(repoRoot, 'examples', 'browser');
const run = existsSync(CHROMIUM) ? describe : inCI ? describe : describe.skip;

run('examples/browser in headless Chromium', () => {
  let browser: Browser;
  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`Chromium is required in CI but ${CHROMIUM} does not exist`);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
  });

  it("shows a qcow2 image's info and its allocation map", async () => {
    const bundle = await bundleForBrowser(readFileSync(join(example, 'main.ts'), 'utf8'));
    expect(bundle.nodeImports).toEqual([]);
    const html = readFileSync(join(example, 'index.html'), 'utf8').replace('<script src="dist/main.js"></script>', '<script type="module" src="/main.js"></script>');
    const page = await browser.newPage();
    await page.route(`${ORIGIN}/**`, (route) => {
      const path = new URL(route.request().url()).pathname;
      if (path === '/') return route.fulfill({ body: html, contentType: 'text/html' });
      if (path === '/main.js') return route.fulfill({ body: bundle.js, contentType: 'text/javascript' });
      return route.fulfill({ status: 404, body: 'not found' });
    });
    await page.goto(`${ORIGIN}/`);
    await page.waitForSelector('body[data-ready="true"]');
    const fixture = join(testImagesDir, 'qcow2/v3-64k.qcow2');
    await page.setInputFiles('#file', fixture);
    await page.waitForSelector('body[data-shown]', { timeout: 30_000 });
    const info = await page.textContent('#info');
    expect(info).toContain('file format: qcow2');
    expect(info).toContain('virtual size: 1 MiB (1048576 bytes)');
    expect(info).toContain('cluster_size: 65536');
    // The cells the page drew, counted by colour, against the extents read in Node.
    const drawn = await page.evaluate(() => {
      const canvas = document.getElementById('map') as HTMLCanvasElement;
      const px = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
      const count = { data: 0, zero: 0, hole: 0 };
      for (let i = 0; i < px.length; i += 4) {
        const rgb = `${px[i]},${px[i + 1]},${px[i + 2]}`;
        if (rgb === '43,108,176') count.data++;
        else if (rgb === '203,213,224') count.zero++;
        else if (rgb === '255,255,255') count.hole++;
      }
      return count;
    });
    const disk = await openQcow2(await FileStorage.open(fixture), { noBacking: true });
    const cell = 512; // 1 MiB over 512 x 256 cells: the smallest cell, one sector
    const rank = { hole: 0, zero: 1, data: 2 } as const;
    const kinds = new Uint8Array(disk.size / cell);
    for await (const e of disk.extents()) for (let c = e.offset / cell; c < (e.offset + e.length) / cell; c++) kinds[c] = Math.max(kinds[c]!, rank[e.kind]);
    await disk.close();
    const want = { data: 0, zero: 0, hole: 0 };
    for (const k of kinds) want[(['hole', 'zero', 'data'] as const)[k]!]++;
    expect(drawn).toEqual(want);
    expect(want.data).toBeGreaterThan(0);
    expect(info).toContain(`map cells: ${want.data} data, ${want.zero} zeros, ${want.hole} not allocated`);
    await page.close();
  }, 90_000);
});
