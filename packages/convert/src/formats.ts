import { FormatRegistry, rawDriver, type FormatDriver } from '@img/block';
import { luksDriver } from '@img/luks';
import { qcow2Driver } from '@img/qcow2';
import { vhdDriver } from '@img/vhd';
import { vmdkDriver } from '@img/vmdk';
import { ovaDriver } from './ova-driver.js';

/** Every format this package knows: raw, qcow2, vhd (alias vpc), vmdk, luks (a LUKS1 encrypted volume, qemu's luks) and ova (its first disk when read; written as a stream, its disk spooled in memory here, in a temporary file by the CLI). */
export const builtinDrivers: FormatDriver[] = [rawDriver, qcow2Driver, vhdDriver, vmdkDriver, luksDriver, ovaDriver()];

/** A registry with every built-in format. */
export function defaultRegistry(): FormatRegistry {
  return new FormatRegistry(builtinDrivers);
}
