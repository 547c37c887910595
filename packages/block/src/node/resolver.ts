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

/**
 * The default resolver for local files: opens backing files, parents and
 * data files relative to the image that names them.
 */
export const fileResolver: Resolver = async (request) =>
  request.create
    ? FileStorage.create(resolveRelative(request), { exclusive: true })
    : FileStorage.open(resolveRelative(request), { readOnly: !request.writable });
