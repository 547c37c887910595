// inspectImage over the negative corpora in tools/make-corpus: an image a
// reader refuses is never called safe, and inspection itself never throws.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '@img/block';
import { repoRoot } from '@img/testkit';
import { defaultRegistry } from './formats.js';
import { inspectImage } from './inspect.js';

interface CorpusCase {
  name: string;
  expect: string;
  bytes: Uint8Array | (() => Uint8Array | Promise<Uint8Array>);
}

for (const format of ['qcow2', 'vhd']) {
  const module = join(repoRoot, 'tools', 'make-corpus', `${format}.mjs`);
  describe(`inspectImage on the ${format} negative corpus`, () => {
    it('has a corpus', () => {
      expect(existsSync(module)).toBe(true);
    });
    if (!existsSync(module)) return;
    it('calls no refused image safe, and never throws', async () => {
      const { cases } = (await import(module)) as { cases: CorpusCase[] };
      expect(cases.length).toBeGreaterThan(20);
      const wrong: string[] = [];
      for (const c of cases) {
        const bytes = typeof c.bytes === 'function' ? await c.bytes() : c.bytes;
        const report = await inspectImage(MemoryStorage.from(bytes, { name: `${c.name}.${format}` }), { registry: defaultRegistry(), format });
        if (c.expect.startsWith('ERR_') && report.safe) wrong.push(`${c.name}: expected ${c.expect}, inspect says safe`);
      }
      expect(wrong).toEqual([]);
    }, 120_000);

    it('with deep, also calls unsafe every image whose data cannot be read', async () => {
      const { cases } = (await import(module)) as { cases: CorpusCase[] };
      const registry = defaultRegistry();
      const driver = registry.require(format);
      const wrong: string[] = [];
      for (const c of cases) {
        const bytes = typeof c.bytes === 'function' ? await c.bytes() : c.bytes;
        const report = await inspectImage(MemoryStorage.from(bytes), { registry, format, deep: true });
        // The reference: does reading every allocated byte fail?
        let readFails = false;
        try {
          const disk = await driver.open(MemoryStorage.from(bytes), { untrusted: true, noBacking: true, formats: registry });
          for await (const e of disk.extents({ topOnly: true })) if (e.kind === 'data') await disk.read(e.offset, e.length);
        } catch {
          readFails = true;
        }
        if (readFails && report.safe) wrong.push(`${c.name}: unreadable, but deep inspection says safe`);
      }
      expect(wrong).toEqual([]);
    }, 120_000);
  });
}
