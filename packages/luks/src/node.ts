/**
 * @img/luks/node: open and create luks files by path. (Node's crypto, the
 * faster one, is installed when Node loads @img/luks: see node/root.ts.)
 */
import { FileStorage } from '@img/block/node';
import { createLuks, type LuksCreateOptions } from './create.js';
import type { LuksDisk } from './disk.js';
import { openLuks, type LuksOpenOptions } from './open.js';

/**
 * Opens the luks file at `path` (read-only unless `readOnly: false`).
 *
 * @example
 * ```ts
 * await using disk = await openLuksFile('vm.luks', { passphrase: 'correct horse' });
 * ```
 */
export async function openLuksFile(path: string, options: LuksOpenOptions = {}): Promise<LuksDisk> {
  const storage = await FileStorage.open(path, { readOnly: options.readOnly ?? true });
  try {
    return await openLuks(storage, options);
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

/** Creates (or replaces) the luks file at `path`, open for writing. */
export async function createLuksFile(path: string, options: LuksCreateOptions): Promise<LuksDisk> {
  const storage = await FileStorage.create(path);
  try {
    return await createLuks(storage, options);
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}
