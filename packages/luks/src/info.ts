/**
 * What `img info` shows of a luks image, as `qemu-img info` shows it:
 * "encrypted: yes" and the LUKS header under "Format specific
 * information" (qemu's QCryptoBlockInfoLUKS: the fields a LUKS qcow2's
 * "encrypt" block lists, without its "format" key). No passphrase needed.
 */
import type { ImageInfo } from '@img/block';
import { describeLuks } from '@img/qcow2/luks';
import type { LuksImage } from './image.js';
import { FORMAT } from './luks-errors.js';

/** The image's info. */
export function luksInfo(core: LuksImage): ImageInfo {
  const { format: _format, ...formatSpecific } = describeLuks(core.header);
  return { format: FORMAT, virtualSize: core.size, encrypted: true, formatSpecific };
}
