/**
 * img commit -b BASE (qemu-img commit -b): write what every layer above
 * BASE holds into BASE, an ancestor of the image that need not be its
 * immediate backing file. As qemu-img does, the image and the layers in
 * between keep their data (-b implies -d) and the chain keeps its shape;
 * BASE alone changes, so the image reads the same after the commit.
 */
import { invalidArg, ratePace, throwIfAborted, type CopyProgress, type Disk, type Extent, type Resolver } from '@img/block';
import { FileStorage, resolveRelative } from '@img/block/node';
import { qemuLocation, qemuResolverWith } from './qemu-names.js';
import type { FormatRegistry } from '@img/block';
import { openImageFile } from '../node.js';
import { identityOfPath, identityOfStorage, type FileIdentity } from './same-file.js';

export interface CommitBaseOptions {
  /** Format of the top image (probed when absent). */
  format?: string;
  registry?: FormatRegistry;
  onProgress?: (p: CopyProgress) => void;
  signal?: AbortSignal;
  /** Move no more than this many bytes of data per second (qemu-img commit -r). Default (or 0): no limit. */
  rateLimit?: number;
}

export interface CommitBaseResult {
  /** Bytes written into the base (data and zeros of the layers above it). */
  bytesCommitted: number;
  /** The base's file, as the chain names it. */
  base: string;
  /** How many layers above the base were committed (1: the image alone). */
  layers: number;
}

const CHUNK = 4 << 20;

/** How much of the guest a commit lists extents for at a time. */
const COMMIT_WINDOW = 1 << 30;

function sameFile(a: FileIdentity | undefined, b: FileIdentity | undefined): boolean {
  return a !== undefined && b !== undefined && a.key === b.key;
}

function backingOf(disk: Disk): Disk | undefined {
  return disk.backing ?? (disk as { parent?: Disk }).parent;
}

/** The layers of an open chain, top first. */
function layersOf(top: Disk): Disk[] {
  const out: Disk[] = [];
  for (let d: Disk | undefined = top; d; d = backingOf(d)) out.push(d);
  return out;
}

/**
 * Commits the image at `path` and every layer between it and `base` into
 * `base`, which names a member of its backing chain: relative to the
 * image's directory as a backing file name is, or as a path from here.
 * A name that is not in the chain (or is the image itself) is
 * ERR_IMG_INVALID_ARG, in qemu-img's words.
 *
 * @example
 * ```ts
 * await commitIntoBase('top.qcow2', 'base.qcow2'); // top -> mid -> base: base now holds all three
 * ```
 */
export async function commitIntoBase(path: string, base: string, options: CommitBaseOptions = {}): Promise<CommitBaseResult> {
  const registry = options.registry;
  const common = { ...(registry ? { registry } : {}) };
  // 1. Find the base in the chain, by file identity.
  let basePath: string;
  let baseFormat: string;
  let baseId: FileIdentity | undefined;
  let depth: number;
  {
    const top = await openImageFile(path, { ...common, ...(options.format !== undefined ? { format: options.format } : {}) });
    try {
      const wanted = [identityOfPath(resolveRelative({ name: base, from: top.storage })), identityOfPath(base)];
      const layers = layersOf(top);
      depth = layers.findIndex((layer, i) => i > 0 && wanted.some((w) => sameFile(w, identityOfStorage(layer.storage))));
      if (depth < 0) throw invalidArg(top.format, `Did not find '${base}' in the backing chain of '${path}'`, { file: path, field: 'base', actual: base });
      basePath = layers[depth]!.storage.name;
      baseFormat = layers[depth]!.format;
      baseId = identityOfStorage(layers[depth]!.storage);
    } finally {
      await top.close();
    }
  }
  // 2. The base, writable (its own backing files read-only); then the chain again, reading the base without a lock of its own.
  const target = await openImageFile(basePath, { ...common, format: baseFormat, readOnly: false });
  try {
    const names = qemuResolverWith();
    const resolver: Resolver = async (request) => {
      const resolved = qemuLocation(request.name, request.from.name);
      if (!request.writable && sameFile(identityOfPath(resolved), baseId)) return FileStorage.open(resolved, { readOnly: true, forceShare: true });
      return names(request);
    };
    const top = await openImageFile(path, { ...common, ...(options.format !== undefined ? { format: options.format } : {}), resolver });
    try {
      if (target.size < top.size) {
        if (!target.resize) throw invalidArg(target.format, `${basePath}: the base is smaller than the image and cannot grow`, { file: basePath });
        await target.resize(top.size);
      }
      const isAbove = (e: Extent) => e.kind !== 'hole' && (e.depth ?? 0) < depth;
      let total = 0;
      for await (const e of top.extents()) if (isAbove(e)) total += e.length;
      let done = 0;
      const pace = ratePace(options.rateLimit, options.signal);
      // A limited commit moves pieces of at most one burst of its rate (in whole sectors).
      const piece = pace ? Math.min(CHUNK, Math.floor(pace.burst / 512) * 512) : CHUNK;
      const buffer = new Uint8Array(Math.min(piece, Math.max(512, total)));
      // Each window's extents are listed before its copy (which changes the base, which the chain's extents would
      // read), a window at a time: a list of them all took ~100 bytes an extent, gigabytes for tens of millions.
      for (let from = 0; from < top.size; from += COMMIT_WINDOW) {
        const above: Extent[] = [];
        for await (const e of top.extents({ offset: from, length: Math.min(COMMIT_WINDOW, top.size - from) })) if (isAbove(e)) above.push(e);
        for (const e of above) {
          for (let pos = e.offset; pos < e.offset + e.length;) {
            throwIfAborted(options.signal);
            const n = Math.min(buffer.length, e.offset + e.length - pos);
            if (e.kind === 'zero') {
              await target.writeZeroes(pos, n);
            } else {
              await pace?.(n);
              throwIfAborted(options.signal);
              const view = buffer.subarray(0, n);
              await top.readInto(pos, view);
              await target.write(pos, view);
            }
            pos += n;
            done += n;
            options.onProgress?.({ bytesDone: done, bytesTotal: total, bytesRead: done, bytesWritten: done });
          }
        }
      }
      await target.flush();
      return { bytesCommitted: done, base: basePath, layers: depth };
    } finally {
      await top.close();
    }
  } finally {
    await target.close();
  }
}
