/**
 * A new image made a LUKS image, as qemu-img create makes one: the empty
 * image is laid out as any other, then clusters are allocated for the
 * encryption header area (LUKS header and key material), written there,
 * and the header switched to crypt_method 2 with the encryption header
 * pointer. The image holds no data yet, so nothing is encrypted but the
 * master key.
 */
import { lentStorage, unsupported, writeU64Be } from '@img/block';
import type { Storage } from '@img/block';
import { CRYPT_LUKS, EXT_CRYPTO, EXT_FEATURE_TABLE } from './constants.js';
import { readyCryptoPrimitives } from './crypto-primitives.js';
import { headerClusterBytes } from './header-cluster.js';
import { writeHeaderCluster } from './header-cluster-write.js';
import { closeQcow2 } from './io.js';
import { createLuksArea, type LuksCreateSpec } from './luks.js';
import { openQcow2Image } from './open.js';

const FORMAT = 'qcow2';

/** Makes the empty image in `storage` a LUKS image whose one key slot opens with `passphrase`. */
export async function encryptNewImage(storage: Storage, spec: LuksCreateSpec, passphrase: Uint8Array): Promise<void> {
  const crypto = await readyCryptoPrimitives();
  if (!crypto) throw unsupported(FORMAT, storage.name, 'encrypting an image needs crypto primitives, and this platform has none installed (setQcow2CryptoPrimitives)', { field: 'encrypt.format' });
  for (const hash of [spec.hash, ...(spec.spec.ivgenHash !== undefined ? [spec.spec.ivgenHash] : [])]) {
    if (crypto.hashLength(hash) === undefined) throw unsupported(FORMAT, storage.name, `the hash "${hash}" is not one this platform's crypto (${crypto.name}) has`, { field: 'encrypt.hash-alg', actual: hash });
  }
  const { area } = await createLuksArea(crypto, spec, passphrase);
  const core = await openQcow2Image(lentStorage(storage), { readOnly: false, noBacking: true, noDataFile: true, checkOnly: true });
  try {
    const cs = core.geom.clusterSize;
    const clusters = Math.ceil(area.length / cs);
    const at = await core.writer!.allocator.allocate(clusters);
    // The unused bytes of the last cluster are zeros (spec: "Full disk encryption header pointer").
    const padded = new Uint8Array(clusters * cs);
    padded.set(area);
    await core.storage.write(at, padded);
    await core.storage.flush();
    const pointer = new Uint8Array(16);
    writeU64Be(pointer, 0, at);
    writeU64Be(pointer, 8, area.length);
    core.setHeader({ cryptMethod: CRYPT_LUKS });
    const withPointer = [{ type: EXT_CRYPTO, data: pointer }, ...core.extensions];
    // The feature name table is a courtesy (create.ts): it gives way to the pointer where both do not fit (512-byte clusters).
    const fits = headerClusterBytes(core.header, withPointer, core.backingName) <= cs;
    core.setExtensions(fits ? withPointer : withPointer.filter((e) => e.type !== EXT_FEATURE_TABLE));
    await writeHeaderCluster(core, (need, size) => unsupported(FORMAT, storage.name, `the header and its extensions with the encryption header pointer need ${need} bytes, more than one ${size}-byte cluster`, { field: 'cluster_size' }));
    await core.storage.flush();
  } finally {
    await closeQcow2(core);
  }
}
