/**
 * The `.mf` manifest of an OVA: lines `SHA256(name)= hex` (or SHA1, SHA512;
 * also OpenSSL 3's `SHA2-256(name)= hex` and BSD's `SHA256 (name) = hex`),
 * checked against the members' bytes, read in bounded chunks.
 */
import { corrupt, unsafe, type Storage } from '@img/block';
import type { TarMember } from './ova.js';
import { newHasher, type ManifestAlgorithm } from './sha.js';

/** One manifest line. */
export interface ManifestEntry {
  algorithm: ManifestAlgorithm;
  name: string;
  digest: string;
}

const HEX_LENGTH = { sha1: 40, sha256: 64, sha512: 128 } as const;
const CHUNK = 1 << 20;

/** Parses manifest text; a line that is not `ALG(name)= hex` is ERR_IMG_CORRUPT. */
export function parseManifest(text: string, file: string): ManifestEntry[] {
  const out: ManifestEntry[] = [];
  for (const [i, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === '') continue;
    // OVF's own style `SHA256(name)= hex`, OpenSSL 3's `SHA2-256(name)= hex`, BSD's `SHA256 (name) = hex` (sha256sum --tag), any case.
    const m = /^(SHA-?1|SHA(?:2?-)?256|SHA(?:2?-)?512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)$/i.exec(line);
    const algorithm = m ? (`sha${m[1]!.replace(/^sha(2?-)?/i, '').replace(/^-/, '')}` as ManifestEntry['algorithm']) : undefined;
    if (!m || !algorithm || m[3]!.length !== HEX_LENGTH[algorithm]) {
      throw corrupt('ova', file, `manifest line ${i + 1} is not "SHA256(name)= hex" (nor SHA1, SHA512, OpenSSL's SHA2-256 or BSD's "SHA256 (name) = hex")`, { field: `line ${i + 1}`, actual: line.slice(0, 200) });
    }
    out.push({ algorithm, name: m[2]!, digest: m[3]!.toLowerCase() });
  }
  return out;
}

/** Hashes each member the manifest names and compares; a mismatch or a missing member is ERR_IMG_UNSAFE. */
export async function verifyManifest(storage: Storage, entries: readonly ManifestEntry[], members: readonly TarMember[], signal?: AbortSignal): Promise<void> {
  for (const e of entries) {
    const member = members.find((m) => m.name === e.name);
    if (!member) throw unsafe('ova', storage.name, `the manifest names "${e.name}", which the OVA does not hold`, { field: 'manifest', actual: e.name });
    const hash = newHasher(e.algorithm);
    const buf = new Uint8Array(Math.min(CHUNK, Math.max(1, member.size)));
    for (let done = 0; done < member.size;) {
      signal?.throwIfAborted();
      const n = Math.min(buf.length, member.size - done);
      const got = await storage.readInto(member.offset + done, buf.subarray(0, n));
      if (got !== n) throw corrupt('ova', storage.name, `member "${e.name}" ends early while hashing`, { field: 'size', offset: member.offset + done });
      hash.update(buf.subarray(0, n));
      done += n;
    }
    const actual = hash.hex();
    if (actual !== e.digest) throw unsafe('ova', storage.name, `the ${e.algorithm.toUpperCase()} of "${e.name}" is ${actual}, but the manifest says ${e.digest}`, { field: 'manifest', expected: e.digest, actual });
  }
}
