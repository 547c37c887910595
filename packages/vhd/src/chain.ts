/**
 * Differencing chains: finding a parent through its locators (W2ru, W2ku,
 * MacX, then the deprecated ones), the parent unicode name and a search
 * path; checking its unique id; depth limit and cycle detection.
 */
import { ERROR_CODES, ImageError, chainCycleError, chainTooDeepError, missingFileError, noResolverError, parentMismatchError, type ChainOpenOptions, type Storage } from '@img/block';
import { VhdDisk } from './disk.js';
import { fromVhdTimestamp } from './footer.js';
import type { VhdOpenOptions } from './open-options.js';
import { PLATFORM_CODE, baseName, decodeLocatorData, joinPath, locatorToName } from './parent-locator.js';
import { vhdProblem } from './problems.js';
import { FORMAT, type VhdState } from './state.js';

/** Default limit on the number of layers in a chain. */
export const DEFAULT_MAX_CHAIN_DEPTH = 64;

const LOCATOR_ORDER = [PLATFORM_CODE.W2RU, PLATFORM_CODE.W2KU, PLATFORM_CODE.MACX, PLATFORM_CODE.WI2R, PLATFORM_CODE.WI2K];

/** Open options as they pass down a chain: with the unique ids of the layers above (cycle detection). */
export interface LayerOptions extends VhdOpenOptions, ChainOpenOptions {
  uuids?: readonly string[];
}

/** What the chain walker needs of an opened parent (a VhdDisk, or the core when check and coalesce open it). */
export interface ParentLayer {
  readonly uniqueId: string;
  readonly footer: { readonly timestamp: number };
  close(): Promise<void>;
}

/**
 * The names under which the parent of a differencing disk may be found, in
 * the order they are tried: locators (relative first), the parent unicode
 * name, then each search-path directory with the parent's base name.
 */
export async function parentCandidates(s: VhdState, searchPath: readonly string[] = []): Promise<string[]> {
  const h = s.header;
  if (!h) return [];
  const names: string[] = [];
  for (const code of LOCATOR_ORDER) {
    for (const l of h.parentLocators) {
      if (l.platformCode !== code || l.platformDataLength === 0) continue;
      const inFile = s.metadata.some((m) => m.start === l.platformDataOffset);
      if (!inFile) continue;
      const data = await s.storage.read(l.platformDataOffset, l.platformDataLength);
      const stored = decodeLocatorData(code, data);
      const name = stored === undefined ? undefined : locatorToName(code, stored);
      if (name) names.push(name);
    }
  }
  if (h.parentUnicodeName) names.push(locatorToName(PLATFORM_CODE.W2RU, h.parentUnicodeName) ?? h.parentUnicodeName);
  const bases = [...new Set(names.map(baseName))];
  for (const dir of searchPath) for (const b of bases) names.push(joinPath(dir, b));
  return [...new Set(names)];
}

/**
 * Finds, opens (with `open`, which opens the parent's own parents in
 * turn) and checks the parent of the differencing disk in `s`; records the
 * name it was found under in `s` and returns it (the caller keeps it).
 */
export async function openParent<L extends ParentLayer>(s: VhdState, options: LayerOptions, open: (storage: Storage, options: LayerOptions) => Promise<L>): Promise<L> {
  const file = s.storage.name;
  const h = s.header!;
  const chain = options.chain ?? [];
  const uuids = options.uuids ?? [];
  const maxDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (chain.length + 2 > maxDepth) throw chainTooDeepError(FORMAT, file, maxDepth);
  if ([...uuids, s.footer.uniqueId].includes(h.parentUniqueId)) {
    throw chainCycleError(FORMAT, file, `parent unique id ${h.parentUniqueId}`);
  }
  const resolver = options.resolver;
  if (!resolver) {
    throw noResolverError(FORMAT, file, 'a parent', h.parentUnicodeName || h.parentUniqueId, 'noBacking to read without it', { field: 'parent locator' });
  }
  const writable = options.writableParent ?? options.backingWritable ?? false;
  const candidates = await parentCandidates(s, options.searchPath);
  const tried: string[] = [];
  let mismatch: ImageError | undefined;
  // The first name that could not be opened is what the error names; the others are listed after it.
  let missing: { name: string; resolved: string | undefined; cause: unknown } | undefined;
  let failed: ImageError | undefined;
  for (const name of candidates) {
    let storage: Storage;
    try {
      storage = await resolver({ name, kind: 'parent', from: s.storage, writable: writable });
    } catch (e) {
      const resolved = (e as { data?: { file?: unknown } } | undefined)?.data?.file;
      tried.push(`${name} (${(e as Error).message})`);
      if (ImageError.isInstance(e) && e.code !== ERROR_CODES.NOT_FOUND) failed ??= e;
      else missing ??= { name, resolved: typeof resolved === 'string' ? resolved : undefined, cause: e };
      continue;
    }
    if (storage.name === file || chain.includes(storage.name)) {
      await storage.close();
      throw chainCycleError(FORMAT, file, `parent ${storage.name}`);
    }
    let parent: L;
    try {
      parent = await open(storage, {
        ...options,
        readOnly: !writable,
        writableParent: false,
        backingWritable: false,
        allowCoalescing: true,
        chain: [...chain, file],
        uuids: [...uuids, s.footer.uniqueId],
      });
    } catch (e) {
      await storage.close().catch(() => undefined);
      throw e;
    }
    if (parent.uniqueId !== h.parentUniqueId) {
      const message = `parent ${storage.name} has unique id ${parent.uniqueId}, the child expects ${h.parentUniqueId}`;
      if (options.allowUuidMismatch) {
        s.problems.push(vhdProblem('parent-uuid-mismatch', 'corruption', message, s.headerOffset + 0x28));
      } else {
        await parent.close();
        mismatch = parentMismatchError(FORMAT, file, storage.name, { label: 'parent unique id', parentLabel: 'unique id', expected: h.parentUniqueId, actual: parent.uniqueId, allow: 'allowUuidMismatch' }, { field: 'parent unique id', offset: s.headerOffset + 0x28 });
        continue;
      }
    }
    if (parent.footer.timestamp !== h.parentTimestamp) {
      s.problems.push(vhdProblem('parent-timestamp-mismatch', 'info', `parent timestamp mismatch: the child recorded ${fromVhdTimestamp(h.parentTimestamp).toISOString()}, ${storage.name} has ${fromVhdTimestamp(parent.footer.timestamp).toISOString()}`, s.headerOffset + 0x38));
    }
    s.parentName = name;
    s.parentFile = storage.name;
    return parent;
  }
  if (mismatch) throw mismatch;
  const data = { field: 'parent locator', offset: s.headerOffset + 0x240, tried };
  if (!missing && failed) throw failed;
  if (!missing) throw missingFileError(FORMAT, file, 'parent', h.parentUnicodeName || h.parentUniqueId, undefined, { data });
  const alsoTried = candidates.filter((c) => c !== missing!.name);
  throw missingFileError(FORMAT, file, 'parent', missing.name, missing.resolved, { cause: missing.cause, data, alsoTried });
}

/** Every layer of a chain, top first. */
export function vhdChainLayers(disk: VhdDisk): VhdDisk[] {
  const out: VhdDisk[] = [];
  let d: VhdDisk | undefined = disk;
  while (d) {
    out.push(d);
    const p: unknown = d.parent;
    d = p instanceof VhdDisk ? p : undefined;
  }
  return out;
}
