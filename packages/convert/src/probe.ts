import { PROBE_BYTES, unsafe, type FormatRegistryLike, type Storage, type ProbeResult } from '@img/block';

/** The bytes formats probe with: the head of the file and its last 512 bytes. */
export async function probeBytes(storage: Storage): Promise<{ head: Uint8Array; tail: Uint8Array; size: number }> {
  const size = await storage.size();
  const head = await storage.read(0, Math.min(PROBE_BYTES, size));
  const tail = size >= 512 ? await storage.read(size - 512, 512) : new Uint8Array(0);
  return { head, tail, size };
}

/** Every registered format's score for a storage, best first. */
export async function probeStorage(registry: FormatRegistryLike, storage: Storage): Promise<ProbeResult[]> {
  const { head, tail, size } = await probeBytes(storage);
  return registry.probe(head, size, tail);
}

/** The score at and above which a probe counts as "clearly this format". */
export const CONFIDENT = 50;

/**
 * Refuses (ERR_IMG_UNSAFE) when the bytes are clearly another registered
 * format than the declared one: treating a qcow2 file as raw would hand its
 * metadata to a guest, and the reverse would follow names inside it.
 */
export async function checkDeclaredFormat(registry: FormatRegistryLike, storage: Storage, declared: string): Promise<ProbeResult[]> {
  const results = await probeStorage(registry, storage);
  const canonical = registry.get(declared)?.name ?? declared;
  const mine = results.find((r) => r.format === canonical)?.score ?? 0;
  const other = results.find((r) => r.format !== canonical && r.score >= CONFIDENT && r.score > mine);
  if (other) {
    throw unsafe(canonical, storage.name, `the file looks like ${other.format}, not ${canonical}; refusing to treat it as ${canonical} (pass --force-format to override)`, {
      field: 'format',
      expected: canonical,
      actual: other.format,
    });
  }
  return results;
}
