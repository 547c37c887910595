/**
 * What commit and rebase change in the active layer's own metadata: the
 * backing file reference (qemu-img rebase -u) and emptying the layer so
 * that every read falls through to the backing image (after a commit).
 */
import { invalidArg, utf8Encode } from '@img/block';
import { AUTOCLEAR_DATA_FILE_RAW, EXT_BACKING_FORMAT, MAX_BACKING_FILE_NAME } from './constants.js';
import { hasFeature } from './header.js';
import { stringExtension } from './extensions.js';
import type { Qcow2Image } from './core.js';
import { writeHeaderCluster } from './header-cluster-write.js';
import { changing, exclusiveQcow2, writableRange } from './io.js';
import { zeroOrDiscardExclusive } from './writer.js';

const FORMAT = 'qcow2';

/**
 * Rewrites the backing file reference only: the name and format stored in
 * the image, or none. The backing image open now stays in use until the
 * image is reopened.
 */
export async function setQcow2Backing(core: Qcow2Image, name: string | undefined, format?: string): Promise<void> {
  writableRange(core, 0, 0);
  if (name !== undefined && (name.length === 0 || hasFeature(core.header.autoclearFeatures, AUTOCLEAR_DATA_FILE_RAW))) {
    throw invalidArg(FORMAT, name.length === 0 ? 'empty backing file name' : 'an image with a raw external data file cannot have a backing file', { field: 'backing_file' });
  }
  if (name !== undefined && utf8Encode(name).length > MAX_BACKING_FILE_NAME) throw invalidArg(FORMAT, `backing file name longer than ${MAX_BACKING_FILE_NAME} bytes`, { field: 'backing_file' });
  await exclusiveQcow2(core, async () => {
    const others = core.extensions.filter((e) => e.type !== EXT_BACKING_FORMAT);
    core.setBackingName(name, name !== undefined && format !== undefined ? [stringExtension(EXT_BACKING_FORMAT, format), ...others] : others);
    await writeHeaderCluster(core, (need, cs) => invalidArg(FORMAT, `the header, its extensions and the backing file name need ${need} bytes, more than one ${cs}-byte cluster`, { field: 'backing_file' }));
  });
}

/** Deallocates every cluster of the active layer (and its L2 tables) so that reads fall through to the backing image. */
export async function makeQcow2Empty(core: Qcow2Image): Promise<void> {
  await exclusiveQcow2(core, async () => {
    const size = core.active.size;
    await changing(core, 0, size);
    if (size) await zeroOrDiscardExclusive(core, 0, size, 'discard', true);
    await core.writer!.map.dropTablesFrom(0);
    await core.storage.flush();
  });
}
