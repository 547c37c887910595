/**
 * The VHD checksum (spec, "Hard Disk Footer Format", Checksum): the ones'
 * complement of the byte sum of a structure, its own checksum field
 * counted as zero. The footer and the dynamic disk header use it.
 */

/**
 * Computes the checksum of `bytes`, treating the 4 bytes at
 * `checksumOffset` as zero.
 */
export function vhdChecksum(bytes: Uint8Array, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (i >= checksumOffset && i < checksumOffset + 4) continue;
    sum += bytes[i]!;
  }
  return ~sum >>> 0;
}
