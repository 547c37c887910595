/**
 * The COWD header (ESX Server sparse extent, extent type VMFSSPARSE, the
 * vmfsSparse createType of ESX delta disks; VMware "Virtual Disk Format
 * 1.1", "ESX Server Sparse Extent Header"; libvmdk's format notes): 2048
 * bytes at sector 0, little-endian u32 fields, sizes and offsets in
 * sectors. Grain tables hold a fixed 4096 u32 entries.
 */
import { readU32Be, readU32Le } from '@img/block';

/** Bytes of the header (4 sectors). */
export const COWD_HEADER_SIZE = 2048;
/** "COWD" as the bytes appear on disk, read big-endian. */
export const COWD_MAGIC = 0x434f5744;
/** Grain table entries per table, fixed by the format. */
export const COWD_GTES_PER_GT = 4096;

/** The fields a reader needs (the rest: geometry or parent name, generation, name, description). */
export interface CowdHeader {
  version: number;
  flags: number;
  /** Virtual size of the extent, in sectors. */
  capacity: number;
  /** Sectors per grain. */
  grainSize: number;
  /** Sector of the grain directory (the "root" of the two levels). */
  gdOffset: number;
  /** Entries of the grain directory. */
  numGDEntries: number;
  /** The next free sector (where the next grain would be appended). */
  freeSector: number;
  /** Set when the extent was not closed cleanly (byte 1648). */
  dirty: boolean;
}

/** Does `bytes` start with "COWD"? */
export function hasCowdMagic(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && readU32Be(bytes, 0) === COWD_MAGIC;
}

/** Parses the header (magic checked by the caller with hasCowdMagic). `b` holds at least COWD_HEADER_SIZE bytes. */
export function parseCowdHeader(b: Uint8Array): CowdHeader {
  return {
    version: readU32Le(b, 4), // 4: version
    flags: readU32Le(b, 8), // 8: flags
    capacity: readU32Le(b, 12), // 12: capacity (sectors)
    grainSize: readU32Le(b, 16), // 16: grain size (sectors)
    gdOffset: readU32Le(b, 20), // 20: grain directory sector
    numGDEntries: readU32Le(b, 24), // 24: grain directory entries
    freeSector: readU32Le(b, 28), // 28: next free sector
    dirty: readU32Le(b, 1648) !== 0, // 1648: unclean shutdown
  };
}
