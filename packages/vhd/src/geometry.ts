/**
 * CHS geometry (spec, Appendix "CHS Calculation") and the rule that decides
 * whether a VHD's size is its CHS product or its current size.
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
 * Creator applications whose images are sized by their CHS geometry:
 * Virtual PC ("vpc ") and qemu before force_size ("qemu"). Every other
 * creator, known or not, is sized by the footer's current size, as the
 * spec says and as libvhdi, dissect.hypervisor and qemu >= 10.0 read it
 * (qemu 7.2 still had the opposite default: a list of current-size
 * creators, CHS for the rest).
 */
export const CHS_CREATORS: readonly string[] = ['vpc ', 'qemu'];

/** How the virtual size is derived from the footer: `auto` applies the creator rule. */
export type VhdSizeMode = 'auto' | 'chs' | 'current-size';

/** The rule that sized a disk: its CHS product or its current size. */
export type VhdSizeRule = 'chs' | 'current-size';

/** Which rule sizes a disk, and why (for info). */
export interface VhdSizeDecision {
  rule: VhdSizeRule;
  reason: string;
}

function quoted(creatorApp: string): string {
  return JSON.stringify(creatorApp);
}

/**
 * Decides how a footer sizes its disk: the maximal geometry 65535/16/255
 * always means current size (its CHS product cannot be meant); otherwise
 * a forced mode wins; otherwise CHS for Virtual PC and old qemu, current
 * size for every other creator.
 */
export function vhdSizeRule(creatorApp: string, geometry: VhdGeometry, mode: VhdSizeMode = 'auto'): VhdSizeDecision {
  if (isMaxGeometry(geometry)) return { rule: 'current-size', reason: 'the geometry is the maximal 65535/16/255, which always means the current size' };
  if (mode === 'chs') return { rule: 'chs', reason: 'forced by force_size_calc=chs' };
  if (mode === 'current-size') return { rule: 'current-size', reason: 'forced by force_size_calc=current_size' };
  if (CHS_CREATORS.includes(creatorApp)) {
    return { rule: 'chs', reason: `creator ${quoted(creatorApp)} (${creatorApp === 'vpc ' ? 'Virtual PC' : 'qemu without force_size'}) sizes disks by their CHS geometry` };
  }
  return { rule: 'current-size', reason: `creator ${quoted(creatorApp)} is sized by the footer's current size (every creator but "vpc " and "qemu", as qemu >= 10.0)` };
}

/**
 * The virtual size in bytes: the CHS product when the rule says CHS,
 * otherwise the current size rounded down to a sector.
 */
export function vhdVirtualSize(creatorApp: string, geometry: VhdGeometry, currentSize: number, mode: VhdSizeMode = 'auto'): number {
  const { rule } = vhdSizeRule(creatorApp, geometry, mode);
  return rule === 'chs' ? chsProduct(geometry) * VHD_SECTOR : Math.floor(currentSize / VHD_SECTOR) * VHD_SECTOR;
}
