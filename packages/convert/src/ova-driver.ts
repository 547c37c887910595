/**
 * The "ova" FormatDriver. Reading: a disk of an OVA is opened where it
 * lies in the tar (openOva from @img/vmdk); a member that is not a VMDK
 * opens through the registry by its probed format (raw, qcow2, vhd); an
 * OVA arriving on a pipe is read in order (readOvaStream). Writing: the
 * stream writer (streamOva) makes a new OVA from any disk, front to back,
 * for a pipe and a file alike (streamOnly), its disk compressed into the
 * spool `options.spool` gives (memory, bounded, by default).
 */
import { unsupported, type FormatDriver, type FormatRegistryLike, type Storage } from '@img/block';
import { detectFormat } from './probe.js';
import { OVA_CREATE_OPTIONS, openOva, ovaWriteOptionsFrom, probeOva, readOvaStream, streamOva } from '@img/vmdk';

/** Options of an ova driver: which disk of the OVF it opens, and where a new OVA's disk waits. */
export interface OvaDriverOptions {
  /** The disk of the OVF's DiskSection, counted from 0 (default 0). */
  disk?: number;
  /** A new, empty storage for the compressed disk while an OVA is written (the CLI gives a temporary file); default memory. */
  spool?: () => Promise<Storage>;
}

/** The OVA probe (tar headers, long names followed, an `.ovf` member anywhere in the head; any other tar less surely): see `probeOva` in @img/vmdk. */
export { probeOva };

/**
 * An "ova" driver opening disk `options.disk`; `registry` opens members
 * that are not VMDKs.
 *
 * @example
 * ```ts
 * const registry = defaultRegistry().register(ovaDriver({ disk: 1 }));
 * ```
 */
export function ovaDriver(options: OvaDriverOptions = {}, registry?: FormatRegistryLike): FormatDriver {
  return {
    name: 'ova',
    probe: (head) => probeOva(head),
    open: async (storage, open = {}) => {
      const formats = registry ?? open.formats;
      return openOva(storage, {
        ...open,
        readOnly: true,
        ...(options.disk !== undefined ? { disk: options.disk } : {}),
        ...(formats
          ? {
              openMember: async (member) => {
                const format = await detectFormat(formats, member);
                const driver = formats.get(format);
                if (!driver || format === 'ova') throw unsupported('ova', storage.name, `a disk member in ${format} format is not supported`, { field: 'format', actual: format });
                return driver.open(member, { readOnly: true, untrusted: true, noBacking: true, formats });
              },
            }
          : {}),
      });
    },
    create: async (storage) => {
      throw unsupported('ova', storage.name, 'an OVA is written front to back only (img-convert ... ova), not created empty', { field: 'format' });
    },
    stream: async (source, create = {}) => {
      // The output's file name (passed to every stream writer of a file) names nothing inside an OVA: its members are named after -o name.
      const { fileName: _fileName, ...rest } = create;
      const typed = ovaWriteOptionsFrom(rest);
      return streamOva(source, { ...typed, ...(options.spool && !typed.spool ? { spool: await options.spool() } : {}) });
    },
    streamOnly: () => true,
    readStream: async (input, open = {}) => readOvaStream(input, { ...open, ...(options.disk !== undefined ? { disk: options.disk } : {}) }),
    createOptionTable: OVA_CREATE_OPTIONS,
  };
}
