/**
 * The qcow2 FormatDriver: what @img/convert's registry and the CLI use.
 */
import type { FormatDriver } from '@img/block';
import { driverOptions, FormatRegistry, optionHelp, rawDriver, type DriverCreateOptions } from '@img/block';
import { probeQcow2 } from './header.js';
import { openQcow2 } from './open.js';
import { createQcow2, QCOW2_CREATE_OPTIONS, QCOW2_TYPED_CREATE_KEYS, type Qcow2CreateOptions } from './create.js';
import { checkQcow2 } from './check-qcow2.js';
import { measureQcow2 } from './measure.js';
import { createQcow2Stream, qcow2DriverStreamOptions } from './stream.js';
import { readQcow2Stream } from './read-stream.js';
import { createQcow2Fresh } from './bulk-writer.js';

/** Create options from a record: typed keys or `-o` names (driverOptions). */
function typedCreateOptions(options: DriverCreateOptions | Record<string, unknown>): Qcow2CreateOptions {
  return driverOptions('qcow2', QCOW2_CREATE_OPTIONS, options, { extra: QCOW2_TYPED_CREATE_KEYS }) as unknown as Qcow2CreateOptions;
}

/**
 * The qcow2 format driver (name "qcow2"; probe: the "QFI\xfb" magic with
 * version 2 or later). Its create, createFresh, measure and stream take
 * options under typed keys (`clusterSize`) or `-o` names (`cluster_size`).
 */
export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  probe: (head) => probeQcow2(head),
  open: (storage, options) => openQcow2(storage, options),
  create: async (storage, options) => createQcow2(storage, typedCreateOptions(options)),
  createOptions: optionHelp(QCOW2_CREATE_OPTIONS),
  createOptionTable: QCOW2_CREATE_OPTIONS,
  check: (storage, options) => checkQcow2(storage, options),
  measure: async (input) => measureQcow2(input.options ? { ...input, options: driverOptions('qcow2', QCOW2_CREATE_OPTIONS, input.options, { extra: QCOW2_TYPED_CREATE_KEYS }) } : input),
  stream: async (source, options) => createQcow2Stream(source, qcow2DriverStreamOptions(options)),
  readStream: (input, options) => readQcow2Stream(input, options),
  createFresh: async (storage, options) => createQcow2Fresh(storage, typedCreateOptions(options)),
};

let formats: FormatRegistry | undefined;
/** The registry backing files are opened with when the caller gives none: raw and qcow2. */
export function defaultBackingFormats(): FormatRegistry {
  formats ??= new FormatRegistry([rawDriver, qcow2Driver]);
  return formats;
}
