/**
 * The qcow2 FormatDriver: what @img/convert's registry and the CLI use.
 */
import type { FormatDriver } from '@img/block';
import { FormatRegistry, optionHelp, rawDriver } from '@img/block';
import { probeQcow2 } from './header.js';
import { openQcow2 } from './open.js';
import { createQcow2, QCOW2_CREATE_OPTIONS, type Qcow2CreateOptions } from './create.js';
import { checkQcow2 } from './check-qcow2.js';
import { measureQcow2 } from './measure.js';
import { createQcow2Stream, qcow2StreamOptionsFrom } from './stream.js';
import { readQcow2Stream } from './read-stream.js';
import { createQcow2Fresh } from './bulk-writer.js';

/** The qcow2 format driver (name "qcow2"; probe: the "QFI\xfb" magic with version 2 or later). */
export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  probe: (head) => probeQcow2(head),
  open: (storage, options) => openQcow2(storage, options),
  create: (storage, options) => createQcow2(storage, options as Qcow2CreateOptions),
  createOptions: optionHelp(QCOW2_CREATE_OPTIONS),
  createOptionTable: QCOW2_CREATE_OPTIONS,
  check: (storage, options) => checkQcow2(storage, options),
  measure: (input) => measureQcow2(input),
  stream: async (source, options) => createQcow2Stream(source, qcow2StreamOptionsFrom(options)),
  readStream: (input, options) => readQcow2Stream(input, options),
  createFresh: (storage, options) => createQcow2Fresh(storage, options as Qcow2CreateOptions),
};

let formats: FormatRegistry | undefined;
/** The registry backing files are opened with when the caller gives none: raw and qcow2. */
export function defaultBackingFormats(): FormatRegistry {
  formats ??= new FormatRegistry([rawDriver, qcow2Driver]);
  return formats;
}
