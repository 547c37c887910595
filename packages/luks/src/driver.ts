/** luksDriver: the FormatDriver @img/convert registers for "luks". */
import { optionHelp, type DriverCreateOptions, type FormatDriver } from '@img/block';
import { createLuks, LUKS_CREATE_OPTIONS, type LuksCreateOptions } from './create.js';
import { createLuksFresh } from './fresh.js';
import { probeLuks } from './header.js';
import { measureLuks } from './measure.js';
import { openLuks } from './open.js';

/**
 * The luks format driver (qemu's `luks`: a LUKS1 header, then the
 * encrypted guest disk). `open` takes the passphrase open option; `create`,
 * `createFresh` and `measure` take the typed keys of LuksCreateOptions or
 * qemu-img's `-o` names (`key-secret`, `cipher-alg`, ...). No check, no
 * snapshots, no streams: qemu-img has none for luks either.
 *
 * @example
 * ```ts
 * const registry = new FormatRegistry([rawDriver, luksDriver]);
 * ```
 */
export const luksDriver: FormatDriver = {
  name: 'luks',
  probe: (head) => probeLuks(head),
  open: (storage, options) => openLuks(storage, { ...(options?.readOnly !== undefined ? { readOnly: options.readOnly } : {}), ...(options?.passphrase !== undefined ? { passphrase: options.passphrase } : {}) }),
  create: (storage, options: DriverCreateOptions) => createLuks(storage, options as LuksCreateOptions),
  createFresh: (storage, options) => createLuksFresh(storage, options),
  measure: (input) => measureLuks(input),
  createOptions: optionHelp(LUKS_CREATE_OPTIONS),
  createOptionTable: LUKS_CREATE_OPTIONS,
};
