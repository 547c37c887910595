import { FormatRegistry, rawDriver, type FormatDriver } from '@img/block';
import { qcow2Driver } from '@img/qcow2';
import { vhdDriver } from '@img/vhd';

/** Every format this package knows: raw, qcow2 and vhd (alias vpc). */
export const builtinDrivers: FormatDriver[] = [rawDriver, qcow2Driver, vhdDriver];

/** A registry with every built-in format. */
export function defaultRegistry(): FormatRegistry {
  return new FormatRegistry(builtinDrivers);
}
