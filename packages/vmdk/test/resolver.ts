/** Test helper: a resolver over named in-memory files, recording every name asked for. */
import { MemoryStorage, type Resolver, type Storage } from '@img/block';

/**
 * Resolves names (as the descriptor writes them) to in-memory files;
 * created files are added to `files`.
 */
export function memoryResolver(files: Map<string, Uint8Array | MemoryStorage>, opened: string[] = []): Resolver {
  return async (request): Promise<Storage> => {
    opened.push(request.name);
    const existing = files.get(request.name);
    if (existing instanceof MemoryStorage) return existing;
    if (existing) return MemoryStorage.from(existing.slice(), { name: request.name, readOnly: !request.writable });
    if (request.create) {
      const s = new MemoryStorage({ name: request.name });
      files.set(request.name, s);
      return s;
    }
    throw new Error(`memoryResolver: no file "${request.name}"`);
  };
}
