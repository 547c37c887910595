/**
 * Names inside an image read over NBD: a backing file, parent or data file
 * named relative to the image has nothing to be relative to (an export has
 * no directory), so it is refused with a sentence saying so, as qemu-img
 * refuses it ("Cannot generate a base directory for NBD nodes"), instead of
 * the name being joined onto the URI or looked for in the working
 * directory. Absolute names are opened as local files, as qemu-img does.
 */
import { isAbsolute } from 'node:path';
import { unsupported, type Resolver } from '@img/block';
import { isNbdUri } from '@img/nbd';

/** Is `name` one whose place an image read over NBD cannot tell (relative, not a URI)? */
export function relativeToNbd(imagePath: string, name: string): boolean {
  return isNbdUri(imagePath) && !isAbsolute(name) && !isNbdUri(name) && !/^file:\//.test(name);
}

/** `resolver`, refusing the relative names of images read over NBD (see the module comment). */
export function nbdAwareResolver(resolver: Resolver): Resolver {
  return async (request) => {
    if (relativeToNbd(request.from.name, request.name)) {
      const what = request.kind === 'data-file' ? 'external data file' : request.kind === 'parent' ? 'parent' : 'backing file';
      throw unsupported('nbd', request.from.name, `cannot open the ${what} "${request.name}": it is named relative to the image, and an image read over NBD has no directory to resolve it in`, {
        field: request.kind,
        actual: request.name,
      });
    }
    return resolver(request);
  };
}
