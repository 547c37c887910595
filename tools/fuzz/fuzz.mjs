// Mutation fuzzing across formats. Each case takes a valid fixture,
// damages its metadata (bit flips, absurd integers, truncation), and runs
// probe, open, reads, extents and check through the format registry.
// A case fails if anything but an ImageError escapes, or a call does not
// return within the time bound.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FormatRegistry, ImageError, MemoryStorage, rawDriver } from '@img/block';
import { seededRandom } from '@img/testkit';
import { qcow2Driver } from '@img/qcow2';
import { vhdDriver } from '@img/vhd';
import { vmdkDriver } from '@img/vmdk';

const defaultRegistry = () => new FormatRegistry([rawDriver, qcow2Driver, vhdDriver, vmdkDriver]);

const root = new URL('../../test-images/', import.meta.url).pathname;

/** Fixtures worth fuzzing: small, and standing alone (no backing file needed with noBacking). */
export function loadSeeds(maxBytes = 1 << 20) {
  const manifest = JSON.parse(readFileSync(join(root, 'MANIFEST.json'), 'utf8'));
  const seeds = [];
  for (const e of manifest.images) {
    if (e.format === 'raw') continue;
    const bytes = readFileSync(join(root, e.file));
    if (bytes.length > maxBytes || bytes.length === 0) continue;
    seeds.push({ file: e.file, format: e.format, bytes: new Uint8Array(bytes) });
  }
  return seeds;
}

const INTERESTING_U32 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffe00, 0x200, 0x10000, 0x1000000];

/** Damages a copy of `bytes`; metadata lives near the start (qcow2, VHD header/BAT) and at the end (VHD footer). */
export function mutate(bytes, random) {
  const out = bytes.slice();
  const n = 1 + Math.floor(random() * 4);
  const pick = () => {
    const r = random();
    if (r < 0.55) return Math.floor(random() * Math.min(out.length, 4096));
    if (r < 0.75) return Math.max(0, out.length - 512 + Math.floor(random() * 512));
    return Math.floor(random() * out.length);
  };
  for (let i = 0; i < n; i++) {
    const kind = random();
    const at = pick();
    if (kind < 0.3) {
      out[at] ^= 1 << Math.floor(random() * 8);
    } else if (kind < 0.6) {
      const aligned = at & ~3;
      const v = INTERESTING_U32[Math.floor(random() * INTERESTING_U32.length)];
      if (aligned + 4 <= out.length) new DataView(out.buffer, out.byteOffset).setUint32(aligned, v);
    } else if (kind < 0.8) {
      const aligned = at & ~7;
      if (aligned + 8 <= out.length) {
        const dv = new DataView(out.buffer, out.byteOffset);
        dv.setUint32(aligned, Math.floor(random() * 0x100000000));
        dv.setUint32(aligned + 4, Math.floor(random() * 0x100000000));
      }
    } else if (kind < 0.9) {
      out[at] = random() < 0.5 ? 0 : 0xff;
    } else {
      return out.subarray(0, Math.floor(random() * out.length));
    }
  }
  return out;
}

async function bounded(what, ms, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`HANG: ${what} did not return within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs one damaged image through every entry point. Returns undefined or a failure description. */
export async function runCase(format, bytes, random, { timeoutMs = 10_000 } = {}) {
  const registry = defaultRegistry();
  const driver = registry.require(format);
  const step = async (what, fn) => {
    try {
      await bounded(what, timeoutMs, fn());
      return true;
    } catch (e) {
      if (String(e?.message).startsWith('HANG')) throw e;
      if (ImageError.isInstance(e)) return false;
      throw new Error(`${what}: ${e?.constructor?.name ?? typeof e} escaped: ${e?.message ?? e}`, { cause: e });
    }
  };
  try {
    const head = bytes.subarray(0, 4096);
    const tail = bytes.length >= 512 ? bytes.subarray(bytes.length - 512) : new Uint8Array(0);
    registry.probe(head, bytes.length, tail);
    let disk;
    await step('open', async () => {
      disk = await driver.open(MemoryStorage.from(bytes, { readOnly: true }), { untrusted: true, noBacking: true, readOnly: true, formats: registry });
    });
    if (disk) {
      await step('extents', async () => {
        let count = 0;
        for await (const _ of disk.extents()) if (++count > 1_000_000) throw new Error('too many extents');
      });
      for (let i = 0; i < 4; i++) {
        const len = Math.min(disk.size, 1 + Math.floor(random() * 200_000));
        const off = Math.floor(random() * Math.max(1, disk.size - len));
        if (len > 0) await step(`read ${off}+${len}`, () => disk.read(off, len));
      }
      await step('info', async () => disk.info?.());
      await step('close', () => disk.close());
    }
    if (driver.check) {
      await step('check', () => driver.check(MemoryStorage.from(bytes, { readOnly: true }), { formats: registry }));
      await step('check -r all', () => driver.check(MemoryStorage.from(bytes), { repair: 'all', formats: registry }));
    }
    return undefined;
  } catch (e) {
    return e?.message ?? String(e);
  }
}

/** Fuzzes `cases` damaged images from a seed. Returns the failures. */
export async function fuzz({ seed = 1, cases = 200, seeds = loadSeeds(), onCase } = {}) {
  const random = seededRandom(seed);
  const failures = [];
  for (let i = 0; i < cases; i++) {
    const base = seeds[Math.floor(random() * seeds.length)];
    const bytes = mutate(base.bytes, random);
    const failure = await runCase(base.format, bytes, random);
    onCase?.(i, base.file, failure);
    if (failure) failures.push({ case: i, seed, file: base.file, failure });
  }
  return failures;
}
