/** vmdkDriver: the FormatDriver @img/convert registers for "vmdk". */
import { driverOptions, findSignatures, invalidArg, optionHelp, type DriverCreateOptions, type FormatDriver, type Storage } from '@img/block';
import { checkVmdk } from './check.js';
import { createVmdk, vmdkCreateOptionsFrom, VMDK_CREATE_OPTIONS } from './create.js';
import { createVmdkFresh } from './bulk-writer.js';
import type { VmdkDisk } from './disk.js';
import { openVmdk } from './open.js';
import { readVmdkStream } from './read-stream.js';
import { streamVmdk, vmdkStreamOptionsFrom } from './stream.js';
import { FORMAT } from './image.js';
import { unsupported } from '@img/block';

/** 100 for a sparse extent ('KDMV', 'COWD') or a descriptor file, as qemu-img probes them; 0 otherwise. */
export function probeVmdk(head: Uint8Array, size: number): number {
  return findSignatures(head, size).some((m) => m.format === FORMAT) ? 100 : 0;
}

/** Create options from a record: typed keys or `-o` names (`adapter_type`), and the backing file the plumbing passes. */
function typedCreateOptions(options: DriverCreateOptions): DriverCreateOptions {
  return driverOptions(FORMAT, VMDK_CREATE_OPTIONS, options, { extra: ['backingFile', 'backingFormat'] }) as DriverCreateOptions;
}

/** create(): with a backing file, a monolithicSparse child of that VMDK (opened through the resolver, read-only). */
async function create(storage: Storage, given: DriverCreateOptions): Promise<VmdkDisk> {
  const options = typedCreateOptions(given);
  const { backingFile, backingFormat, formats: _f, noBacking: _nb, ...rest } = options;
  const typed = vmdkCreateOptionsFrom(rest);
  if (backingFile === undefined) return createVmdk(storage, typed);
  if (backingFormat !== undefined && backingFormat !== FORMAT) throw invalidArg(FORMAT, `the parent of a VMDK must be a VMDK, not ${backingFormat}`, { field: 'backing_fmt' });
  const resolver = options.resolver;
  if (!resolver) throw invalidArg(FORMAT, 'a child image needs a resolver to open its parent (pass resolver: fileResolver)', { field: 'backing_file' });
  const parentStorage = await resolver({ name: backingFile, kind: 'parent', from: storage, writable: false });
  let parent: VmdkDisk;
  try {
    parent = await openVmdk(parentStorage, { resolver });
  } catch (e) {
    await parentStorage.close().catch(() => undefined);
    throw e;
  }
  try {
    return await createVmdk(storage, { ...typed, size: typed.size || parent.size, parent: { disk: parent, fileName: backingFile } });
  } catch (e) {
    await parent.close().catch(() => undefined);
    throw e;
  }
}

/**
 * The VMDK format driver: name "vmdk". Its create, createFresh and stream
 * take options under typed keys (`adapterType`) or `-o` names
 * (`adapter_type`).
 *
 * @example
 * ```ts
 * const registry = new FormatRegistry([rawDriver, vmdkDriver]);
 * ```
 */
export const vmdkDriver: FormatDriver = {
  name: FORMAT,
  probe: probeVmdk,
  open: async (storage, options) => openVmdk(storage, options ?? {}),
  create,
  createFresh: async (storage, options) => createVmdkFresh(storage, typedCreateOptions(options)),
  check: async (storage, options) => {
    if (options?.repair) throw unsupported(FORMAT, storage.name, 'repairing a VMDK is not supported', { field: 'repair' });
    return checkVmdk(storage, { ...(options?.resolver ? { resolver: options.resolver } : {}) });
  },
  stream: async (source, options) => streamVmdk(source, vmdkStreamOptionsFrom(options ?? {})),
  readStream: async (input, options) => readVmdkStream(input, options),
  streamOnly: (options) => options.subformat === 'streamOptimized',
  createOptions: optionHelp(VMDK_CREATE_OPTIONS),
  createOptionTable: VMDK_CREATE_OPTIONS,
};
