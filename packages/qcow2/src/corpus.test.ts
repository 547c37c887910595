/**
 * The negative corpus (tools/make-corpus/qcow2.mjs): every case opens with
 * the error code it names (or opens), images that open give the read and
 * check verdicts they name, an untrusted open refuses at least as much,
 * the stream reader decodes or refuses each with an ImageError, and every
 * case finishes quickly with nothing but ImageErrors escaping.
 */
import { ImageError, MemoryStorage, type Resolver } from '@img/block';
import { describe, expect, it } from 'vitest';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check-qcow2.js';
import { readQcow2Stream } from './read-stream.js';
import type { Qcow2Disk } from './image.js';

interface CorpusCase {
  name: string;
  description: string;
  bytes: Uint8Array | (() => Uint8Array | Promise<Uint8Array>);
  expect: string;
  read?: string;
  check?: 'corrupt' | 'clean';
  self?: string;
  files?: () => Record<string, Uint8Array>;
}

// Plain Node ESM with no types: imported by URL so that TypeScript leaves it alone.
const corpusUrl = new URL('../../../tools/make-corpus/qcow2.mjs', import.meta.url).href;
const { cases, caseBytes } = (await import(corpusUrl)) as { cases: CorpusCase[]; caseBytes: (c: CorpusCase) => Promise<Uint8Array> };

async function codeOf(fn: () => Promise<unknown>): Promise<string> {
  try {
    await fn();
    return 'ok';
  } catch (e) {
    if (ImageError.isInstance(e)) return e.code;
    throw e;
  }
}

/** Maps the extents and reads every byte (1 MiB at a time, at most 64 MiB). */
async function readAll(disk: Qcow2Disk): Promise<void> {
  for await (const e of disk.extents()) expect(e.length).toBeGreaterThan(0);
  const step = 1 << 20;
  for (let pos = 0; pos < Math.min(disk.size, 64 * step); pos += step) await disk.read(pos, Math.min(step, disk.size - pos));
  await disk.info();
}

function resolverFor(files: Record<string, Uint8Array>): Resolver {
  return async ({ name }) => {
    const base = name.split(/[\\/]/).pop()!;
    const bytes = files[base];
    if (!bytes) throw new ImageError('ERR_IMG_NOT_FOUND', `no ${base} in the corpus case`);
    return MemoryStorage.from(bytes, { name: base, readOnly: true });
  };
}

describe('qcow2 negative corpus', () => {
  it('has every kind of damage the brief lists', () => {
    const names = cases.map((c) => c.name).join(' ');
    for (const kind of [
      'truncated-header',
      'truncated-l1',
      'truncated-l2',
      'truncated-refcount-table',
      'l1-size-over-32m',
      'refcount-table-over-8m',
      'snapshots-over-65536',
      'snapshot-extra-data-over-1k',
      'cluster-bits-8',
      'cluster-bits-22',
      'header-length-not-multiple-of-8',
      'header-length-past-cluster',
      'extension-past-cluster-0',
      'l1-past-eof',
      'l2-past-eof',
      'data-past-eof',
      'l1-misaligned',
      'l2-misaligned',
      'data-misaligned',
      'l1-over-header',
      'l2-over-refcount-table',
      'chain-cycle',
      'chain-too-deep',
      'unknown-incompatible-bit',
      'encrypted-aes',
      'encrypted-luks',
      'compressed-inflates-short',
      'compressed-inflates-long',
      'compressed-past-eof',
      'zstd-bomb',
    ]) {
      expect(names).toContain(kind);
    }
    expect(new Set(cases.map((c) => c.name)).size).toBe(cases.length);
  });

  for (const c of cases) {
    it(`${c.name}: ${c.description}`, async () => {
      const started = Date.now();
      const bytes = await caseBytes(c);
      const files = c.files?.();
      const name = c.self ?? `${c.name}.qcow2`;
      const storage = () => MemoryStorage.from(bytes, { name, readOnly: true });
      const links = files ? { resolver: resolverFor(files) } : { noBacking: true };

      let disk: Qcow2Disk | undefined;
      const opened = await codeOf(async () => {
        disk = await openQcow2(storage(), links);
      });
      expect(opened, 'open').toBe(c.expect);
      if (disk) {
        const d = disk;
        expect(await codeOf(() => readAll(d)), 'read').toBe(c.read ?? 'ok');
        await d.close();
        const report = await checkQcow2(storage());
        const verdict = report.corruptions > 0 || report.checkErrors > 0 ? 'corrupt' : 'clean';
        expect(verdict, `check: ${report.messages.slice(0, 3).join('; ')}`).toBe(c.check ?? 'clean');
      } else if (c.check) {
        // A chain error belongs to the chain, and an L1 table past the end is counted (as qemu-img check does): the image itself checks as the case says.
        const report = await checkQcow2(storage());
        expect(report.corruptions > 0 ? 'corrupt' : 'clean', 'check').toBe(c.check);
      } else {
        // What does not open does not check either: refused with an ImageError.
        expect(await codeOf(() => checkQcow2(storage())), 'check').not.toBe('ok');
      }
      // An untrusted open never accepts what a trusted one refuses.
      const strict = await codeOf(async () => (await openQcow2(storage(), { untrusted: true })).close());
      if (c.expect !== 'ok') expect(strict, 'untrusted open').not.toBe('ok');
      // The stream reader: decoded or refused with an ImageError, never anything else.
      await codeOf(async () => {
        const src = await readQcow2Stream(
          (async function* () {
            yield bytes;
          })(),
        );
        for await (const _ of src.pieces);
      });
      expect(Date.now() - started, 'time (ms)').toBeLessThan(3000);
    });
  }
});
