/**
 * measureLuks: the size of a new luks image, as `qemu-img measure -O luks`
 * answers it: the LUKS header area (the payload offset for the cipher's
 * key size) plus the guest size, required and fully allocated alike (every
 * guest sector is written, encrypted). Like qemu-img, it wants the
 * key-secret (a passphrase) although no key is derived.
 */
import { driverOptions, invalidArg, type MeasureInput, type MeasureResult } from '@img/block';
import { luksAreaBytes } from '@img/qcow2/luks';
import { LUKS_CREATE_OPTIONS, LUKS_TYPED_CREATE_KEYS, luksCreateSpec } from './create.js';
import { FORMAT } from './luks-errors.js';

/** What a luks image of `input.size` guest bytes (or `input.source`'s size) takes in its file. */
export async function measureLuks(input: MeasureInput): Promise<MeasureResult> {
  const o = driverOptions(FORMAT, LUKS_CREATE_OPTIONS, input.options ?? {}, { extra: LUKS_TYPED_CREATE_KEYS });
  if (o.passphrase === undefined && o.keySecret === undefined) throw invalidArg(FORMAT, "Parameter 'key-secret' is required for cipher", { field: 'key-secret' });
  const spec = luksCreateSpec(o);
  const size = input.source?.size ?? input.size;
  const total = luksAreaBytes(spec.spec.keyBytes) + size;
  return { required: total, fullyAllocated: total };
}
