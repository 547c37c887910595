/**
 * Differencing chains: finding a parent through its locators (W2ru, W2ku,
 * MacX, then the deprecated ones), the parent unicode name and a search
 * path; checking its unique id; depth limit and cycle detection.
 */
import { ERROR_CODES, ImageError, missingFileError, type Resolver, type Storage } from '@img/block';
import { fromVhdTimestamp } from './footer.js';
import type { VhdDisk } from './image.js';
import { openVhd, type VhdOpenOptions } from './open.js';
import { PLATFORM_CODE, baseName, decodeLocatorData, joinPath, locatorToName } from './parent-locator.js';
import { vhdProblem } from './problems.js';
import { FORMAT, type VhdState } from './state.js';

/** Default limit on the number of layers in a chain. */
export const DEFAULT_MAX_CHAIN_DEPTH = 64;

const LOCATOR_ORDER = [PLATFORM_CODE.W2RU, PLATFORM_CODE.W2KU, PLATFORM_CODE.MACX, PLATFORM_CODE.WI2R, PLATFORM_CODE.WI2K];

interface ChainOptions extends VhdOpenOptions {
  /** @internal unique ids of the layers above, for cycle detection. */
  _uuids?: readonly string[];
}

function chainError(file: string, message: string): ImageError {
  return new ImageError(ERROR_CODES.CHAIN, `vhd: ${file}: ${message}`, { data: { format: FORMAT, file } });
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

/** Finds, opens and checks the parent of the differencing disk in `s`. */
export async function openParent(s: VhdState, options: ChainOptions): Promise<void> {
  const file = s.storage.name;
  const h = s.header!;
  const chain = options.chain ?? [];
  const uuids = options._uuids ?? [];
  const maxDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (chain.length + 2 > maxDepth) throw chainError(file, `chain is deeper than ${maxDepth} layers`);
  if ([...uuids, s.footer.uniqueId].includes(h.parentUniqueId)) {
    throw chainError(file, `parent unique id ${h.parentUniqueId} is already in the chain (a cycle)`);
  }
  const resolver = options.resolver;
  if (!resolver) {
    throw new ImageError(ERROR_CODES.NOT_FOUND, `vhd: ${file}: differencing disk needs its parent: pass a resolver (or noBacking)`, {
      data: { format: FORMAT, file, field: 'parent locator' },
    });
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
      throw chainError(file, `parent ${storage.name} is already in the chain (a cycle)`);
    }
    let parent: VhdDisk;
    try {
      parent = await openVhd(storage, {
        ...options,
        readOnly: !writable,
        writableParent: false,
        backingWritable: false,
        allowCoalescing: true,
        chain: [...chain, file],
        _uuids: [...uuids, s.footer.uniqueId],
      } as ChainOptions);
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
        mismatch = new ImageError(ERROR_CODES.MISMATCH, `vhd: ${file}: ${message}`, {
          data: { format: FORMAT, file, field: 'parent unique id', offset: s.headerOffset + 0x28, expected: h.parentUniqueId, actual: parent.uniqueId },
        });
        continue;
      }
    }
    if (parent.footer.timestamp !== h.parentTimestamp) {
      s.problems.push(
        vhdProblem('parent-timestamp-mismatch', 'info', `parent timestamp mismatch: the child recorded ${fromVhdTimestamp(h.parentTimestamp).toISOString()}, ${storage.name} has ${fromVhdTimestamp(parent.footer.timestamp).toISOString()}`, s.headerOffset + 0x38),
      );
    }
    s.parent = parent;
    s.parentName = name;
    s.parentFile = storage.name;
    return;
  }
  if (mismatch) throw mismatch;
  const data = { field: 'parent locator', offset: s.headerOffset + 0x240, tried };
  if (!missing && failed) throw failed;
  if (!missing) throw missingFileError(FORMAT, file, 'parent', h.parentUnicodeName || h.parentUniqueId, undefined, { data });
  const alsoTried = candidates.filter((c) => c !== missing!.name);
  throw missingFileError(FORMAT, file, 'parent', missing.name, missing.resolved, { cause: missing.cause, data, alsoTried });
}

/** Options of openVhdChain. */
export interface VhdChainOptions extends VhdOpenOptions {
  /** Opens parents (alias of `resolver`). */
  resolve?: Resolver;
  /** Opens the top image when `source` is a path. */
  openFile?: (path: string) => Promise<Storage>;
}

/**
 * Opens a VHD and every parent below it. Parents must carry the unique id
 * their child records (unless `allowUuidMismatch`); a parent timestamp
 * mismatch is recorded in `problems`.
 *
 * @example
 * ```ts
 * const top = await openVhdChain(storage, { resolve: fileResolver, searchPath: ['/images'] });
 * for (const layer of top.layers) console.log(layer.storage.name);
 * ```
 */
export async function openVhdChain(source: Storage | string, options: VhdChainOptions = {}): Promise<VhdDisk> {
  let storage: Storage;
  if (typeof source === 'string') {
    if (!options.openFile) throw new TypeError('vhd: openVhdChain(path) needs options.openFile (or use @img/vhd/node)');
    storage = await options.openFile(source);
  } else {
    storage = source;
  }
  const resolver = options.resolve ?? options.resolver;
  try {
    return await openVhd(storage, { ...options, ...(resolver ? { resolver } : {}) });
  } catch (e) {
    if (typeof source === 'string') await storage.close().catch(() => undefined);
    throw e;
  }
}

/** Every layer of a chain, top first. */
export function vhdChainLayers(disk: VhdDisk): VhdDisk[] {
  const out: VhdDisk[] = [];
  let d: VhdDisk | undefined = disk;
  while (d) {
    out.push(d);
    const p: unknown = d.parent;
    d = p && (p as VhdDisk).format === FORMAT && '_state' in (p as object) ? (p as VhdDisk) : undefined;
  }
  return out;
}

