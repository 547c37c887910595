/**
 * The line `img create` prints, as qemu-img create prints it: "Formatting
 * 'x.qcow2', fmt=qcow2 cluster_size=65536 ... size=N ...". qemu-img lists the
 * format's creation options in its own order, each one that has a value: the
 * ones with a default always, the others when they were given.
 */
import { parseSize } from '@img/block';
import { qemuFormatName } from './info-human.js';

interface Printed {
  key: string;
  /** The value printed when the option was not given (undefined: not printed then). */
  default?: string;
  /** A size option: printed in bytes whatever suffix it was given with. */
  size?: boolean;
}

/** qemu-img's order of each format's options (7.2 and later), with the defaults it prints. */
const ORDER: Record<string, Printed[]> = {
  qcow2: [
    { key: 'encrypt.format' },
    { key: 'encrypt.key-secret' },
    { key: 'encrypt.cipher-alg' },
    { key: 'encrypt.cipher-mode' },
    { key: 'encrypt.ivgen-alg' },
    { key: 'encrypt.ivgen-hash-alg' },
    { key: 'encrypt.hash-alg' },
    { key: 'encrypt.iter-time' },
    { key: 'cluster_size', default: '65536', size: true },
    { key: 'extended_l2', default: 'off' },
    { key: 'preallocation' },
    { key: 'compression_type', default: 'zlib' },
    { key: 'size' },
    { key: 'compat' },
    { key: 'backing_file' },
    { key: 'backing_fmt' },
    { key: 'data_file' },
    { key: 'data_file_raw' },
    { key: 'lazy_refcounts', default: 'off' },
    { key: 'refcount_bits', default: '16' },
  ],
  vpc: [{ key: 'size' }, { key: 'subformat' }, { key: 'force_size' }],
  vmdk: [{ key: 'size' }, { key: 'adapter_type' }, { key: 'backing_file' }, { key: 'backing_fmt' }, { key: 'compat6', default: 'off' }, { key: 'hwversion', default: 'undefined' }, { key: 'toolsversion' }, { key: 'subformat' }, { key: 'zeroed_grain' }],
  raw: [{ key: 'size' }, { key: 'preallocation' }],
  luks: [{ key: 'size' }, { key: 'key-secret' }, { key: 'cipher-alg' }, { key: 'cipher-mode' }, { key: 'ivgen-alg' }, { key: 'ivgen-hash-alg' }, { key: 'hash-alg' }, { key: 'iter-time' }, { key: 'preallocation' }],
};

/**
 * The "Formatting ..." line for a new image of `format` and `size` created
 * with the `-o` options `given` (qemu spellings) and an optional backing file.
 */
export function formattingLine(path: string, format: string, size: number, given: Readonly<Record<string, string>>, backing?: { file: string; format?: string }): string {
  const fmt = qemuFormatName(format);
  const values: Record<string, string> = { ...given, size: String(size) };
  if (backing) {
    values.backing_file = backing.file;
    if (backing.format !== undefined) values.backing_fmt = backing.format;
  }
  const order = ORDER[fmt];
  const parts = order
    ? order.flatMap((o) => {
        const v = values[o.key] ?? o.default;
        if (v === undefined) return [];
        // A comma inside a value is doubled, as qemu prints its option strings (backing_file=json:{"driver":"qcow2",,...}).
        return [`${o.key}=${o.size ? safeSize(v) : v.replaceAll(',', ',,')}`];
      })
    : [`size=${size}`];
  return `Formatting '${path}', fmt=${fmt} ${parts.join(' ')}\n`;
}

function safeSize(text: string): string {
  try {
    return String(parseSize(text));
  } catch {
    return text;
  }
}
