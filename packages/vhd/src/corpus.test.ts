/**
 * The negative corpus (tools/make-corpus/vhd.mjs): every case opens with
 * the error code it names (or opens, with or without problems), checkVhd
 * gives the verdict it names, an untrusted open gives its strict verdict,
 * and whatever opens can be read, mapped, described and streamed quickly
 * with nothing but ImageErrors.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, type Resolver } from '@img/block';
import { describeQemu, loadManifest, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import { afterAll, describe, expect, it } from 'vitest';
import { createVhd } from './create.js';
import { checkVhd } from './check.js';
import type { VhdDisk } from './disk.js';
import { openVhd } from './open.js';
import { readVhdStream } from './read-stream.js';

interface CorpusCase {
  name: string;
  description: string;
  bytes: Uint8Array | (() => Uint8Array);
  expect: string;
  untrusted?: string;
  check?: 'corrupt' | 'leak' | 'clean';
  self?: string;
  files?: () => Record<string, Uint8Array>;
}

// Plain Node ESM with no types: imported by URL so that TypeScript leaves it alone.
const corpusUrl = new URL('../../../tools/make-corpus/vhd.mjs', import.meta.url).href;
const { cases, caseBytes } = (await import(corpusUrl)) as { cases: CorpusCase[]; caseBytes: (c: CorpusCase) => Uint8Array };

type Verdict = string;

async function verdict(fn: () => Promise<VhdDisk>, use?: (d: VhdDisk) => Promise<void>): Promise<Verdict> {
  let disk: VhdDisk;
  try {
    disk = await fn();
  } catch (e) {
    if (ImageError.isInstance(e)) return e.code;
    throw e;
  }
  try {
    await use?.(disk);
    return disk.problems.length ? 'problem' : 'ok';
  } finally {
    await disk.close();
  }
}

/** Reads, maps and describes an open disk; only ImageErrors may come out. */
async function exercise(disk: VhdDisk): Promise<void> {
  try {
    for await (const e of disk.extents()) expect(e.length).toBeGreaterThan(0);
    const step = 1 << 20;
    for (let pos = 0; pos < Math.min(disk.size, 16 * step); pos += step) await disk.read(pos, Math.min(step, disk.size - pos));
    if (disk.size > 0) await disk.read(disk.size - 1, 1);
    await disk.info();
  } catch (e) {
    if (!ImageError.isInstance(e)) throw e;
  }
}

function resolverFor(files: Record<string, Uint8Array>): Resolver {
  return async ({ name }) => {
    const base = name.split(/[\\/]/).pop()!;
    const bytes = files[base];
    if (!bytes) throw new ImageError('ERR_IMG_NOT_FOUND', `no ${base} in the corpus case`);
    return MemoryStorage.from(bytes, { name: base });
  };
}

function strictDefault(c: CorpusCase): string {
  if (c.untrusted) return c.untrusted;
  // Untrusted opens never follow a parent (noBacking here): chain damage is not seen.
  if (c.expect === 'ERR_IMG_CHAIN') return 'ok';
  return c.expect;
}

describe('VHD negative corpus', () => {
  it('has every kind of damage the brief lists', () => {
    const names = cases.map((c) => c.name).join(' ');
    for (const kind of [
      'truncated-footer',
      'truncated-header',
      'truncated-bat',
      'bad-footer-checksum',
      'bad-header-checksum',
      'size-over-2040g',
      'max-table-entries-huge',
      'bat-past-eof',
      'block-size-0',
      'block-size-not-power-of-two',
      'block-size-2^31',
      'bat-entry-into-header',
      'bat-entry-past-eof',
      'bat-entries-overlap',
      'data-offset-past-eof',
      'locator-length-huge',
      'locator-offset-huge',
      'chain-cycle',
      'chain-too-deep',
      'partial-block-bitmap-at-eof',
    ]) {
      expect(names).toContain(kind);
    }
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
  });

  for (const c of cases) {
    it(`${c.name}: ${c.description}`, async () => {
      const started = Date.now();
      const bytes = caseBytes(c);
      const files = c.files?.();
      const name = c.self ?? `${c.name}.vhd`;
      const storage = () => MemoryStorage.from(bytes, { name });
      const links = files ? { resolver: resolverFor(files) } : { noBacking: true };

      expect(await verdict(() => openVhd(storage(), links), exercise), 'open').toBe(c.expect);
      expect(await verdict(() => openVhd(storage(), { untrusted: true, noBacking: true }), exercise), 'untrusted open').toBe(strictDefault(c));

      const report = await checkVhd(storage(), files ? { resolver: resolverFor(files) } : {});
      const want = c.check ?? (c.expect === 'ok' ? 'clean' : 'corrupt');
      const got = report.corruptions > 0 ? 'corrupt' : report.leaks > 0 ? 'leak' : 'clean';
      expect([got, report.checkErrors], `check: ${report.messages.join('; ')}`).toEqual([want, 0]);

      // A stream of the same bytes: decoded or refused with an ImageError, never anything else.
      try {
        const src = await readVhdStream(
          (async function* () {
            yield bytes;
          })(),
        );
        for await (const _ of src.pieces);
      } catch (e) {
        if (!ImageError.isInstance(e)) throw e;
      }
      expect(Date.now() - started, 'time (ms)').toBeLessThan(3000);
    });
  }
});

describe('untrusted opens still accept real images', () => {
  it('every committed fixture and images we write (dynamic, fixed, 512-byte to 2 MiB blocks, grown, shrunk)', async () => {
    for (const e of loadManifest().images.filter((x) => x.format === 'vhd')) {
      const bytes = new Uint8Array(readFileSync(join(testImagesDir, e.file)));
      expect(await verdict(() => openVhd(MemoryStorage.from(bytes), { untrusted: true }), exercise), e.file).toBe('ok');
    }
    for (const [type, blockSize] of [
      ['dynamic', 512],
      ['dynamic', 2 * 1024 * 1024],
      ['fixed', 4096],
    ] as const) {
      const s = new MemoryStorage({ name: 'w.vhd' });
      const d = await createVhd(s, { type, size: 5_000_000, blockSize });
      await d.write(1_000_000, seededBytes(300_000, 1));
      await d.resize(9_000_000);
      await d.resize(4_000_000, { shrink: true });
      await d.close();
      expect(await verdict(() => openVhd(MemoryStorage.from(s.toBytes()), { untrusted: true })), `${type} ${blockSize}`).toBe('ok');
    }
  });
});

describeQemu('untrusted opens accept what qemu-img writes', () => {
  const tmp = tempDir('vhd-untrusted-');
  afterAll(() => tmp.cleanup());
  it('qemu-img create and convert, dynamic and fixed, with and without force_size', async () => {
    const raw = join(tmp.path, 'src.raw');
    execFileSync('qemu-img', ['create', '-f', 'raw', raw, '3M']);
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 64k', raw]);
    for (const [i, o] of ['subformat=dynamic', 'subformat=fixed', 'subformat=dynamic,force_size=on', 'subformat=fixed,force_size=on'].entries()) {
      const out = join(tmp.path, `q${i}.vhd`);
      execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vpc', '-o', o, raw, out]);
      const bytes = new Uint8Array(readFileSync(out));
      expect(await verdict(() => openVhd(MemoryStorage.from(bytes), { untrusted: true }), exercise), o).toBe('ok');
    }
  });
});
