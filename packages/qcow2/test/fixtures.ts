/** Helpers for this package's tests (not built into dist). */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryStorage, ImageError, writeU32Be, writeU64Be } from '@img/block';
import type { Resolver } from '@img/block';
import { testImagesDir } from '@img/testkit';
import { openQcow2, type Qcow2OpenOptions } from '../src/open.js';
import '../src/driver.js';

export const qcow2Dir = join(testImagesDir, 'qcow2');

export function fixturePath(name: string): string {
  return join(qcow2Dir, name);
}

/** Every committed .qcow2 fixture's file name. */
export function fixtureNames(): string[] {
  return readdirSync(qcow2Dir)
    .filter((f) => f.endsWith('.qcow2'))
    .sort();
}

export function loadFixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(fixturePath(name)));
}

/** Resolves names against the in-memory fixture directory (copies of the committed files). */
export const memoryResolver: Resolver = async ({ name }) => MemoryStorage.from(loadFixture(name), { name, readOnly: true });

/** Opens bytes as an image named `name`. */
export function openBytes(bytes: Uint8Array, options: Qcow2OpenOptions = {}, name = 'test.qcow2') {
  return openQcow2(MemoryStorage.from(bytes, { name }), options);
}

export function setU32(buf: Uint8Array, at: number, value: number): Uint8Array {
  writeU32Be(buf, at, value);
  return buf;
}

export function setU64(buf: Uint8Array, at: number, value: number): Uint8Array {
  writeU64Be(buf, at, value);
  return buf;
}

/** The ImageError a promise rejects with (fails the test if it resolves or throws something else). */
export async function imageError(p: Promise<unknown>): Promise<ImageError> {
  try {
    await p;
  } catch (e) {
    if (ImageError.isInstance(e)) return e;
    throw new Error(`expected an ImageError, got ${String(e)}`, { cause: e });
  }
  throw new Error('expected an ImageError, but the call succeeded');
}
