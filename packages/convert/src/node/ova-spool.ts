/**
 * The spool a new OVA's compressed disk waits in while its size is not yet
 * known (streamOva): a temporary file in the system's temporary directory
 * (TMPDIR), unlinked as soon as it is open, so that it takes disk space only
 * while the conversion runs and never outlives the process.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Storage } from '@img/block';
import { FileStorage } from '@img/block/node';

/** A new, empty, already unlinked temporary file as a Storage. */
export async function ovaTempSpool(): Promise<Storage> {
  const dir = await mkdtemp(join(tmpdir(), 'img-ova-'));
  try {
    return await FileStorage.create(join(dir, 'disk.vmdk'), { cache: 'unsafe', lock: false });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
