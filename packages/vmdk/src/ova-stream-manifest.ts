/**
 * The `.mf` manifest of an OVA read from a pipe: the members it names can
 * only be hashed as they pass by, before the manifest (last in the archive)
 * says which algorithm it used, so each member kept (the OVF, the disk) is
 * hashed with all three (SHA-1, SHA-256, SHA-512), and the digests are
 * compared once the manifest has arrived. The rules are the seekable
 * path's (ova-manifest.ts): a digest that differs is ERR_IMG_UNSAFE; in
 * untrusted mode so is a manifest that names a member the archive does
 * not hold, or that does not name the disk read.
 */
import { unsafe } from '@img/block';
import type { ManifestEntry } from './ova-manifest.js';
import { newHasher, type Hasher, type ManifestAlgorithm } from './sha.js';

const ALGORITHMS: readonly ManifestAlgorithm[] = ['sha1', 'sha256', 'sha512'];

/** One member's digests under every manifest algorithm, updated piece by piece. */
export class MemberDigests {
  readonly #hashers = new Map<ManifestAlgorithm, Hasher>(ALGORITHMS.map((a) => [a, newHasher(a)]));
  #done: Map<ManifestAlgorithm, string> | undefined;

  update(data: Uint8Array): void {
    for (const h of this.#hashers.values()) h.update(data);
  }

  /** The digest under `algorithm` (lowercase hex); no update after the first call. */
  digest(algorithm: ManifestAlgorithm): string {
    this.#done ??= new Map([...this.#hashers].map(([a, h]) => [a, h.hex()]));
    return this.#done.get(algorithm)!;
  }
}

/** What passed by on the pipe: the hashed members by name, every member's name, and the disk's (its chunks, when split). */
export interface PassedMembers {
  hashed: ReadonlyMap<string, MemberDigests>;
  names: ReadonlySet<string>;
  disk: readonly string[];
}

/**
 * Checks a manifest read from a pipe against the members hashed as they
 * passed. Entries naming members that were skipped unhashed are not
 * checked (their bytes are gone); in untrusted mode, an entry naming a
 * member the archive does not hold, and a manifest that does not name the
 * disk, are refused.
 */
export function checkStreamManifest(entries: readonly ManifestEntry[], passed: PassedMembers, file: string, untrusted: boolean): void {
  for (const e of entries) {
    const digests = passed.hashed.get(e.name);
    if (!digests) {
      if (untrusted && !passed.names.has(e.name)) throw unsafe('ova', file, `the manifest names "${e.name}", which the OVA does not hold`, { field: 'manifest', actual: e.name });
      continue;
    }
    const actual = digests.digest(e.algorithm);
    if (actual !== e.digest) throw unsafe('ova', file, `the ${e.algorithm.toUpperCase()} of "${e.name}" is ${actual}, but the manifest says ${e.digest}`, { field: 'manifest', expected: e.digest, actual });
  }
  const unlisted = untrusted ? passed.disk.find((name) => !entries.some((e) => e.name === name)) : undefined;
  if (unlisted !== undefined) {
    throw unsafe('ova', file, `the manifest does not list the disk "${unlisted}", so its bytes cannot be checked`, { field: 'manifest', actual: unlisted });
  }
}
