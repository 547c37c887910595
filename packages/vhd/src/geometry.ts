/**
 * CHS geometry (spec, Appendix "CHS Calculation") and the rules qemu uses
 * to decide whether a VHD's size is its CHS product or its current size.
 */

/** Sector size of every VHD structure and of the virtual disk. */
export const VHD_SECTOR = 512;
/** Largest CHS geometry the spec allows: 65535 cylinders, 16 heads, 255 sectors. */
export const VHD_MAX_CHS_SECTORS = 65535 * 16 * 255;
/** Largest disk qemu (and Virtual PC) accept: 2040 GiB. */
export const VHD_MAX_SIZE = 2040 * 1024 * 1024 * 1024;

export interface VhdGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/**
 * The geometry the spec's algorithm gives for `totalSectors` (it rounds
 * down: the product may be smaller than the request).
 */
export function chsForSectors(totalSectors: number): VhdGeometry {
  const sectors = Math.min(totalSectors, VHD_MAX_CHS_SECTORS);
  let spt: number;
  let heads: number;
  let cth: number;
  if (sectors >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(sectors / spt);
  } else {
    spt = 17;
    cth = Math.floor(sectors / spt);
    heads = Math.floor((cth + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(sectors / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(sectors / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

/** Cylinders x heads x sectors, in sectors. */
export function chsProduct(g: VhdGeometry): number {
  return g.cylinders * g.heads * g.sectorsPerTrack;
}

/** True for the maximal geometry 65535/16/255, which always means "use current size". */
export function isMaxGeometry(g: VhdGeometry): boolean {
  return chsProduct(g) === VHD_MAX_CHS_SECTORS;
}

/**
 * The smallest CHS-exact geometry whose product is at least `totalSectors`
 * (what qemu-img create does without force_size). Returns the maximal
 * geometry when none fits.
 */
export function chsRoundUp(totalSectors: number): VhdGeometry {
  const want = Math.min(totalSectors, VHD_MAX_CHS_SECTORS);
  let g: VhdGeometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
  for (let i = 0; want > chsProduct(g); i++) g = chsForSectors(want + i);
  return g;
}

/**
 * Creator applications whose images are sized by the footer's current
 * size (qemu's list: Hyper-V, qemu with force_size, disk2vhd, XenConverter,
 * XenServer's tapdisk). Every other creator (Virtual PC's "vpc ", "qemu",
 * anything unknown) is sized by its CHS geometry, unless the geometry is
 * the maximal one.
 */
export const CURRENT_SIZE_CREATORS: readonly string[] = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];

/** How the virtual size is derived from the footer. */
export type VhdSizeMode = 'auto' | 'chs' | 'current-size';

/**
 * The virtual size in bytes, exactly as qemu computes it: the CHS product
 * for CHS creators, otherwise (or for the maximal geometry, or when
 * forced) the current size rounded down to a sector.
 */
export function vhdVirtualSize(creatorApp: string, geometry: VhdGeometry, currentSize: number, mode: VhdSizeMode = 'auto'): number {
  const chs = chsProduct(geometry);
  let useChs = !CURRENT_SIZE_CREATORS.includes(creatorApp);
  if (mode === 'chs') useChs = true;
  if (mode === 'current-size' || isMaxGeometry(geometry)) useChs = false;
  return useChs ? chs * VHD_SECTOR : Math.floor(currentSize / VHD_SECTOR) * VHD_SECTOR;
}
