import { dirname, isAbsolute, resolve } from 'node:path';
import type { ResolveRequest, Resolver } from '../disk.js';
import { FileStorage } from './file-storage.js';

/**
 * Resolves a name found inside an image against the referring image's
 * own directory (never the process's working directory), as a path.
 */
export function resolveRelative(request: Pick<ResolveRequest, 'name' | 'from'>): string {
  const name = request.name.startsWith('file:') && !request.name.startsWith('file://') ? request.name.slice(5) : request.name;
  if (isAbsolute(name)) return name;
  return resolve(dirname(request.from.name), name);
}

/** How fileResolverWith opens what it resolves. */
export interface FileResolverOptions {
  /**
   * Open backing files and parents read-only with qemu-img -U semantics (no
   * locks, no checks), as `qemu-img info -U` does for the whole chain.
   * Writable requests (commit into a backing file) still lock.
   */
  forceShare?: boolean;
  /** `false`: no image locks at all (FileStorageOptions.lock). */
  lock?: boolean;
}

/**
 * A resolver for local files, like fileResolver, with lock options for the
 * files it opens.
 *
 * @example
 * ```ts
 * await openQcow2(await FileStorage.open('top.qcow2', { forceShare: true }), { resolver: fileResolverWith({ forceShare: true }) });
 * ```
 */
export function fileResolverWith(options: FileResolverOptions = {}): Resolver {
  const lock = options.lock ?? true;
  return async (request) =>
    request.create
      ? FileStorage.create(resolveRelative(request), { exclusive: true, lock })
      : FileStorage.open(resolveRelative(request), {
          readOnly: !request.writable,
          lock,
          forceShare: !request.writable && options.forceShare === true,
        });
}

/**
 * The default resolver for local files: opens backing files, parents and
 * data files relative to the image that names them, with image locks
 * (shared for read-only files).
 */
export const fileResolver: Resolver = fileResolverWith();
