/**
 * Typed problems: what open finds and tolerates, and what check reports.
 * Repairs are chosen by `code`, never by matching message text.
 */

/** How check counts a problem. */
export type VhdProblemSeverity = 'corruption' | 'leak' | 'info';

/** Stable codes of the problems a VHD can have. */
export type VhdProblemCode =
  /** The image cannot be opened at all (the message says why). */
  | 'unreadable'
  /** The footer in use has a wrong checksum (qemu reads on). */
  | 'footer-checksum'
  /** The footer (or its copy) carries the MBR boot signature 0x55AA at bytes 510-511: maybe a raw disk whose last sector looks like a footer. */
  | 'footer-boot-signature'
  /** One footer copy of a dynamic disk is missing or invalid. */
  | 'footer-copy-invalid'
  /** The two footer copies describe different disks. */
  | 'footer-copies-differ'
  /** A footer copy differs only in size, timestamp or cookie (an interrupted footer update). */
  | 'footer-copy-stale'
  /** A fixed disk ends with a 511-byte footer (old Virtual PC). */
  | 'footer-short'
  /** No footer at the end behind a valid copy at offset 0 (an unfinished block allocation). */
  | 'unfinished-allocation'
  | 'header-checksum'
  /** A parent locator whose data lies outside the file (ignored). */
  | 'locator-outside'
  | 'parent-uuid-mismatch'
  | 'parent-timestamp-mismatch'
  /** The parent could not be opened or checked. */
  | 'parent-unusable'
  | 'coalescing'
  /** A BAT entry points past the end of the file. */
  | 'bat-entry-outside'
  /** A BAT entry points into metadata (footer copy, header, BAT, locator data). */
  | 'bat-entry-in-metadata'
  | 'bat-entries-overlap'
  /**
   * Two structures' regions overlap (a parent locator's data and the BAT, the
   * header or another locator; a block or the header or BAT and the footer at
   * the end): read-only opens read on, writable opens refuse the image.
   */
  | 'layout-overlap'
  /** The last block runs past the end of the file (a cut image): read-only opens read the missing bytes as zeros, writable opens refuse it. */
  | 'block-truncated'
  /** An allocated BAT entry beyond the disk size. */
  | 'bat-entry-past-disk'
  /** Space between structures that nothing refers to and no writer's layout rule explains. */
  | 'unreferenced-space'
  /** Bytes after the last structure that no layout rule explains. */
  | 'junk-after-end'
  /** Sector bitmap padding bits set (harmless: qemu sets them). */
  | 'bitmap-padding';

/** One problem, with the file offset it is about where there is one. */
export interface VhdProblem {
  code: VhdProblemCode;
  severity: VhdProblemSeverity;
  /** File offset of the structure or field at fault. */
  offset?: number;
  /** One sentence for people. */
  message: string;
}

/** Builds a problem record. */
export function vhdProblem(code: VhdProblemCode, severity: VhdProblemSeverity, message: string, offset?: number): VhdProblem {
  return offset === undefined ? { code, severity, message } : { code, severity, offset, message };
}
