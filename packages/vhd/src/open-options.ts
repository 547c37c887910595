/**
 * The options of openVhd, and the CLI's spelling of them (qemu's vpc
 * option force_size_calc).
 */
import { invalidArg, type OpenOptions } from '@img/block';
import type { VhdSizeMode } from './geometry.js';
import { FORMAT } from './state.js';

/** Options of openVhd: the generic OpenOptions plus VHD's own. */
export interface VhdOpenOptions extends OpenOptions {
  /**
   * How to derive the virtual size: `auto` (default) from the creator
   * application (CHS for "vpc " and "qemu", the current size for every
   * other creator, as qemu >= 10.0); `chs` or `current-size` to force one
   * (qemu's vpc option force_size_calc, which the driver also takes as
   * `force_size_calc: 'chs' | 'current_size'`). The maximal CHS geometry
   * always means current size.
   */
  sizeMode?: VhdSizeMode;
  /** Open a parent whose unique id differs from the child's parent id (recorded as a problem). */
  allowUuidMismatch?: boolean;
  /** Directories to look for a parent in, by its base name, when its locators fail. */
  searchPath?: readonly string[];
  /**
   * Open an image whose coalesce was interrupted (it is then only
   * meaningful under its child). Set internally when opening a parent.
   */
  allowCoalescing?: boolean;
  /** Open the parent writable (coalesce does; `backingWritable` is the generic name). */
  writableParent?: boolean;
}

/** The values `sizeMode` takes. */
export const SIZE_MODES: readonly VhdSizeMode[] = ['auto', 'chs', 'current-size'];

/**
 * Open options as the CLI gives them: qemu's vpc option
 * `force_size_calc=chs|current_size` becomes `sizeMode`; typed keys pass
 * through. An unknown force_size_calc value is ERR_IMG_INVALID_ARG.
 *
 * @example
 * ```ts
 * await openVhd(storage, vhdOpenOptionsFrom({ force_size_calc: 'current_size' }));
 * ```
 */
export function vhdOpenOptionsFrom(options: VhdOpenOptions | (OpenOptions & { force_size_calc?: unknown })): VhdOpenOptions {
  const { force_size_calc: force, ...rest } = options as OpenOptions & { force_size_calc?: unknown };
  if (force === undefined) return rest as VhdOpenOptions;
  if (force !== 'chs' && force !== 'current_size') {
    throw invalidArg(FORMAT, `force_size_calc must be chs or current_size, not ${JSON.stringify(force)}`, { field: 'force_size_calc', actual: force });
  }
  return { ...(rest as VhdOpenOptions), sizeMode: force === 'chs' ? 'chs' : 'current-size' };
}
