/**
 * The extent map of a luks image: every guest byte is data. Its sectors
 * are stored encrypted, so neither a hole of the file nor a run of zero
 * bytes in it says that the guest reads zeros there (both decrypt to
 * noise), and no guest byte has a file offset holding it as itself: one
 * data extent, with no host offset, as qemu-img map shows it.
 */
import { extentRange, type Extent, type ExtentOptions } from '@img/block';
import type { LuksImage } from './image.js';

/** The extents of `options`' range (default: the whole disk). */
export async function* luksExtents(core: LuksImage, options?: ExtentOptions): AsyncGenerator<Extent> {
  const { start, end } = extentRange(options, core.size);
  if (start < end) yield { offset: start, length: end - start, kind: 'data', depth: 0 };
}
