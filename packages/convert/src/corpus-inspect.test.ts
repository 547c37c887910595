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
  });
}
