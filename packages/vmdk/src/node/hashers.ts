/**
 * Node's hashers for OVA manifests: node:crypto, the same digests as the
 * portable ones in sha.ts at several times their speed (64 MiB: SHA-256
 * about 50 ms against 420 ms), which matters when a disk arriving on a
 * pipe is hashed with every manifest algorithm at once.
 */
import { createRequire } from 'node:module';
import { setManifestHashers, type Hasher, type HasherFactory, type ManifestAlgorithm } from '../sha.js';

type NodeCrypto = typeof import('node:crypto');
let crypto: NodeCrypto | undefined;

/**
 * node:crypto, loaded at the first hash: loading it costs every command
 * about 3 ms of start-up (it starts OpenSSL), and only OVA manifests use it.
 */
function nodeCrypto(): NodeCrypto {
  return (crypto ??= createRequire(import.meta.url)('node:crypto') as NodeCrypto);
}

/** node:crypto's incremental hash, as a manifest Hasher. */
export const nodeHashers: HasherFactory = (algorithm: ManifestAlgorithm): Hasher => {
  const h = nodeCrypto().createHash(algorithm);
  return {
    update: (data) => void h.update(data),
    hex: () => h.digest('hex'),
  };
};

/** Makes manifests use node:crypto in this realm; answers the factory it replaced. */
export function installNodeHashers(): HasherFactory | undefined {
  return setManifestHashers(nodeHashers);
}
