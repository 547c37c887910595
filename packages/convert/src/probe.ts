/**
 * Probing: which format are these bytes? Every registered driver's probe,
 * plus the signatures of container formats no driver here opens (QED,
 * VMDK, VDI, ...), so that neither kind is ever taken for another, or for a
 * raw disk.
 */
import { findSignatures, PROBE_BYTES, SIGNATURE_TAIL_BYTES, unsafe, unsupported, wrongFormat, type FormatRegistryLike, type ProbeResult, type SignatureMatch, type Storage } from '@img/block';

/** The bytes formats probe with: the head of the file, its last 512 bytes (`tail`) and its last KiB (`end`). */
export async function probeBytes(storage: Storage): Promise<{ head: Uint8Array; tail: Uint8Array; end: Uint8Array; size: number }> {
  const size = await storage.size();
  const head = await storage.read(0, Math.min(PROBE_BYTES, size));
  const endLength = Math.min(SIGNATURE_TAIL_BYTES, size);
  const end = endLength > 0 ? await storage.read(size - endLength, endLength) : new Uint8Array(0);
  const tail = size >= 512 ? end.subarray(end.length - 512) : new Uint8Array(0);
  return { head, tail, end, size };
}

/** Every registered format's score for a storage, best first. */
export async function probeStorage(registry: FormatRegistryLike, storage: Storage): Promise<ProbeResult[]> {
  const { head, tail, size } = await probeBytes(storage);
  return registry.probe(head, size, tail);
}

/** The score at and above which a probe counts as "clearly this format". */
export const CONFIDENT = 50;

/** What the bytes clearly are: confident registered formats and container signatures, one entry per format. */
export interface Identity {
  /** Registered formats that probe confidently, best first. */
  probed: ProbeResult[];
  /** Container signatures found (registered formats or not). */
  signatures: SignatureMatch[];
  /** Every format the bytes claim, probed ones first, no repeats. */
  formats: string[];
}

/** What a storage's bytes claim to be (see {@link Identity}). */
export async function identifyStorage(registry: FormatRegistryLike, storage: Storage): Promise<Identity> {
  const { head, tail, end, size } = await probeBytes(storage);
  return identify(registry, head, size, tail, end);
}

/** {@link identifyStorage} over bytes already read. */
export function identify(registry: FormatRegistryLike, head: Uint8Array, size: number, tail: Uint8Array, end: Uint8Array): Identity {
  const probed = registry.probe(head, size, tail).filter((r) => r.score >= CONFIDENT);
  const signatures = findSignatures(head, size, end);
  const formats = [...probed.map((r) => r.format)];
  for (const s of signatures) {
    const name = registry.get(s.format)?.name ?? s.format;
    if (!formats.includes(name)) formats.push(name);
  }
  return { probed, signatures, formats };
}

/** How a message names what the bytes look like: "qed (a QED image: \"QED\\0\" at 0x0)". */
export function lookDescription(identity: Identity, format: string): string {
  const s = identity.signatures.find((m) => m.format === format);
  return s ? `${format} (${s.description}: ${s.evidence})` : format;
}

/**
 * Refuses a declared format the bytes contradict, registered or not:
 * ERR_IMG_WRONG_FORMAT when they are plainly another format (`-f qcow2` on
 * a VHD), ERR_IMG_UNSAFE when they would be confused: a container declared
 * raw (treating a qcow2 or QED file as raw hands its metadata to a guest,
 * and the reverse would follow names inside it), or a file that is two
 * formats at once, whichever one is declared.
 */
export async function checkDeclaredFormat(registry: FormatRegistryLike, storage: Storage, declared: string): Promise<ProbeResult[]> {
  const { head, tail, end, size } = await probeBytes(storage);
  const identity = identify(registry, head, size, tail, end);
  const canonical = registry.get(declared)?.name ?? declared;
  const other = identity.formats.find((f) => f !== canonical);
  if (other !== undefined && canonical !== 'raw' && !identity.formats.includes(canonical)) {
    // Plainly another format: not a `declared` image at all.
    const s = identity.signatures.find((m) => m.format === other);
    throw wrongFormat(canonical, storage.name, s ? `${s.description} (${s.evidence})` : `a ${other} image`, { field: 'format', expected: canonical, actual: other });
  }
  if (other !== undefined) {
    // Raw takes any bytes, so a container read as raw is a confusion, not an error in the bytes; so is a file that is two formats.
    const s = identity.signatures.find((m) => m.format === other);
    const evidence = s ? ` (${s.description}: ${s.evidence})` : '';
    throw unsafe(canonical, storage.name, `the file looks like ${other}, not ${canonical}${evidence}; refusing to treat it as ${canonical} (pass --force-format to override)`, {
      field: 'format',
      expected: canonical,
      actual: other,
    });
  }
  return registry.probe(head, size, tail);
}

/**
 * The format of a file nobody declared: the best registered probe, raw
 * when nothing else matches. Bytes that carry a container signature are
 * never guessed to be raw: a registered format's driver gets them, and a
 * format no driver here opens (QED, VDI, ...) is ERR_IMG_UNSUPPORTED,
 * naming it.
 */
export async function detectFormat(registry: FormatRegistryLike, storage: Storage): Promise<string> {
  const { head, tail, end, size } = await probeBytes(storage);
  const best = registry.probe(head, size, tail)[0];
  if (best && best.score >= CONFIDENT) return best.format;
  const foreign = findSignatures(head, size, end)[0];
  if (foreign) {
    // A signature its driver's probe did not take up (an old VHD footer 1 KiB from the end): that driver decides.
    const driver = registry.get(foreign.format);
    if (driver) return driver.name;
    throw unsupported(foreign.format, storage.name, `${foreign.description} (${foreign.evidence}): this format is not supported; convert it with qemu-img first, or pass -f raw --force-format to read its bytes as a raw disk`, {
      field: 'format',
      actual: foreign.format,
      offset: foreign.offset,
    });
  }
  return best?.format ?? 'raw';
}
