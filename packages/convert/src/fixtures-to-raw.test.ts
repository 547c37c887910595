// `img-convert <fmt> raw` on every committed fixture: the output's sha256
// equals qemu-img's raw export recorded in the manifest.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadManifest, tempDir, testImagesDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-fixtures-');
afterAll(() => tmp.cleanup());
const manifest = existsSync(join(testImagesDir, 'MANIFEST.json')) ? loadManifest() : { images: [] };

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

describe('img-convert <fmt> raw reproduces every fixture byte for byte', () => {
  // The 40 GiB VHD is checked by its own package (hashing it here would take too long).
  for (const entry of manifest.images.filter((e) => e.format !== 'raw' && e.virtualSize <= 1 << 30)) {
    it(entry.file, async () => {
      const out = join(tmp.path, entry.file.replace(/\//g, '_') + '.raw');
      const r = run('img-convert', [entry.format, 'raw', join(testImagesDir, entry.file), out]);
      expect(r.status, r.stderr).toBe(0);
      expect(await sha256(out)).toBe(entry.sha256);
    });
  }
});
