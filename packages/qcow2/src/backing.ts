/**
 * Backing files and external data files: named inside the image, opened
 * through the caller's resolver, never through the file system directly.
 */
import { ERROR_CODES, ImageError, PROBE_BYTES, cannotOpenError, chainCycleError, chainTooDeepError, missingFileError, noResolverError, unsafe, unsupported } from '@img/block';
import type { ChainOpenOptions, Disk, FormatRegistryLike, OpenOptions, ResolveRequest, Resolver, Storage } from '@img/block';

const FORMAT = 'qcow2';
/** Default bound on chain depth. */
export const DEFAULT_MAX_CHAIN_DEPTH = 64;

/** An opened backing image. */
export interface OpenedBacking {
  disk: Disk;
  /** The format it was opened with. */
  format: string;
  /** True when the image did not name the format and it was probed. */
  probed: boolean;
  /** The resolved name of the backing storage (its path for files). */
  fullName: string;
}

/**
 * Opens the backing file `name` of the image in `from`. `format` is the
 * backing format extension's value (undefined: probe among `formats`).
 */
export async function openBacking(from: Storage, name: string, format: string | undefined, options: ChainOpenOptions, formats: FormatRegistryLike): Promise<OpenedBacking> {
  const file = from.name;
  if (options.untrusted) {
    throw unsafe(FORMAT, file, `refusing to open backing file "${name}" of an untrusted image`, { field: 'backing_file' });
  }
  if (!options.resolver) {
    throw noResolverError(FORMAT, file, 'a backing file', name, 'noBacking to read without it', { field: 'backing_file' });
  }
  const chain = [...(options.chain ?? []), file];
  const maxDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  // `chain` holds the images above the backing file; with it the chain has chain.length + 1 images.
  if (chain.length + 1 > maxDepth) {
    throw chainTooDeepError(FORMAT, file, maxDepth, { field: 'backing_file' });
  }
  const writable = options.backingWritable === true;
  const storage = await resolve(options.resolver, { name, kind: 'backing', from, writable });
  try {
    if (chain.includes(storage.name)) {
      throw chainCycleError(FORMAT, file, `backing file "${name}" (${storage.name})`, { field: 'backing_file', chain });
    }
    let chosen = format;
    let probed = false;
    if (chosen === undefined) {
      const size = await storage.size();
      const head = await storage.read(0, Math.min(PROBE_BYTES, size));
      const tail = size >= 512 ? await storage.read(size - 512, 512) : undefined;
      const best = formats.probe(head, size, tail)[0];
      if (!best) throw unsupported(FORMAT, file, `cannot tell the format of backing file "${name}"`, { field: 'backing_file' });
      chosen = best.format;
      probed = true;
    }
    const driver = formats.get(chosen);
    if (!driver) throw unsupported(FORMAT, file, `backing file "${name}" has format "${chosen}", which is not registered`, { field: 'backing format', actual: chosen });
    // Only the immediate backing file is opened writable (commit writes into it), never deeper layers.
    // The backing file's own options (qemu's backing.*) move up one level; without them it takes this image's passphrase.
    const { backing: own, ...rest } = options;
    const below: ChainOpenOptions = {
      ...rest,
      readOnly: !writable,
      backingWritable: false,
      chain,
      ...(own?.passphrase !== undefined ? { passphrase: own.passphrase } : {}),
      ...(own?.backing !== undefined ? { backing: own.backing } : {}),
    };
    const disk = await driver.open(storage, below);
    return { disk, format: driver.name, probed, fullName: storage.name };
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

/** Opens the external data file `name` of the image in `from`. */
export async function openDataFile(from: Storage, name: string | undefined, options: OpenOptions, writable: boolean): Promise<Storage> {
  const file = from.name;
  if (name === undefined) {
    throw unsupported(FORMAT, file, 'the image uses an external data file but names none (no data file name extension)', { field: 'data file' });
  }
  if (options.untrusted) throw unsafe(FORMAT, file, `refusing to open external data file "${name}" of an untrusted image`, { field: 'data file' });
  if (!options.resolver) {
    throw noResolverError(FORMAT, file, 'an external data file', name, 'noDataFile to read its metadata only', { field: 'data file' });
  }
  return resolve(options.resolver, { name, kind: 'data-file', from, writable });
}

/** Calls the resolver; its own failures become ImageErrors that name the file asked for. */
async function resolve(resolver: Resolver, request: ResolveRequest): Promise<Storage> {
  try {
    return await resolver(request);
  } catch (e) {
    const what = request.kind === 'data-file' ? 'external data file' : 'backing file';
    if (ImageError.isInstance(e) && e.code === ERROR_CODES.NOT_FOUND) {
      throw missingFileError(FORMAT, request.from.name, what, request.name, typeof e.data.file === 'string' ? e.data.file : undefined, { cause: e });
    }
    if (ImageError.isInstance(e)) throw e;
    throw cannotOpenError(FORMAT, request.from.name, what, request.name, e, { field: request.kind });
  }
}
