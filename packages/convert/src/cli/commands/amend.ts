/**
 * img amend: change format options of a qcow2 image in place.
 */
import { parseArgs } from '../parse-args.js';
import { parseSize, unsupported } from '@img/block';
import { FileStorage } from '@img/block/node';
import { amendQcow2, amendQcow2KeySlots, QCOW2_AMEND_KEYSLOT_OPTIONS, QCOW2_AMEND_OPTIONS, QCOW2_CREATE_OPTIONS } from '@img/qcow2';
import { imageOpenOptions, imageOptsFor, secretValue } from '../qemu-objects.js';
import { checkCacheModes, UsageError } from '../common.js';
import { amendOptionsFromCli, printOptionHelp, readOptionText } from '../options.js';
import { defaultRegistry } from '../../formats.js';
import { openImageFile } from '../../node.js';
import { qemuFormatName } from '../info-human.js';
import { type Handler, commonNoOutput, onePath, openForCommand, quietOption, quietIo } from './shared.js';

/** img amend. */
export const amend: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'amend', args: argv, options: { ...commonNoOutput, ...quietOption, o: { type: 'string', multiple: true }, p: { type: 'boolean' }, t: { type: 'string' }, force: { type: 'boolean' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      'Usage: img amend [-q] [-p] [-t cache] [-f fmt] -o key=value[,...] <file>\n\n' +
        'Changes format options in place (qcow2: compat=0.10|1.1, lazy_refcounts=on|off, refcount_bits=<a power of two up to 64>,\n' +
        'data_file=<name>: the name an image with an external data file keeps, size=<size>: a resize, smaller too;\n' +
        'LUKS key slots: encrypt.state=active with encrypt.new-secret=ID adds a passphrase (the image given with --image-opts\n' +
        '...,encrypt.key-secret=ID), encrypt.state=inactive with encrypt.keyslot=N or encrypt.old-secret=ID erases slots;\n' +
        '--force erases the last one).\n' +
        "-p and -t are qemu-img's: accepted (a bad cache mode fails as with qemu-img); img's amend shows no progress\n" +
        'and picks its own caching.\n\nExample:\n  img amend -o compat=0.10 disk.qcow2\n',
    );
    return 0;
  }
  checkCacheModes(values.t);
  const optionText = readOptionText(values.o);
  // The format comes first, as qemu-img: only qcow2 images can be amended, and for any other format
  // (named by -f or probed) that is the answer to -o help and to every option.
  const path = positionals.length === 1 ? positionals[0]! : undefined;
  let format = values.f;
  if (format === undefined && path !== undefined) {
    const probe = await openForCommand(path, values);
    format = probe.format;
    await probe.close();
  }
  const driver = format === undefined ? undefined : defaultRegistry().require(format);
  if (driver !== undefined && driver.name !== 'qcow2') {
    throw unsupported(driver.name, path, `Format driver '${qemuFormatName(driver.name)}' does not support option amendment`);
  }
  // -o help without a file or -f shows qcow2's, the one format img amends.
  if (optionText.help) {
    printOptionHelp(io, "Amend options for 'qcow2':", [...QCOW2_AMEND_OPTIONS, ...QCOW2_AMEND_KEYSLOT_OPTIONS, ...QCOW2_CREATE_OPTIONS.filter((o) => o.name === 'size')]);
    return 0;
  }
  const file = onePath(positionals);
  if (Object.keys(optionText.text).length === 0) throw new UsageError('expected -o key=value[,...]');
  const { size, encryptState, encryptNewSecret, encryptOldSecret, encryptKeyslot, encryptIterTime, ...options } = amendOptionsFromCli(io, 'img amend', optionText.text);
  const keyslots = [encryptState, encryptNewSecret, encryptOldSecret, encryptKeyslot, encryptIterTime].some((v) => v !== undefined);
  if (keyslots) {
    // LUKS key slots, as qemu-img amend changes them: the secrets are --object secrets, the current passphrase
    // the image's encrypt.key-secret in --image-opts.
    if (size !== undefined || Object.values(options).some((v) => v !== undefined)) throw new UsageError('encrypt.* options change key slots: give them without other options');
    if (encryptState === undefined) throw new UsageError('encrypt.state=active|inactive says what to do with the key slots');
    const passphrase = imageOptsFor(file)?.passphrase;
    const storage = await FileStorage.open(file, { readOnly: false });
    try {
      await amendQcow2KeySlots(storage, {
        state: String(encryptState) as 'active' | 'inactive',
        ...(passphrase ? { passphrase } : {}),
        ...(encryptNewSecret !== undefined ? { newPassphrase: secretValue(String(encryptNewSecret)) } : {}),
        ...(encryptOldSecret !== undefined ? { oldPassphrase: secretValue(String(encryptOldSecret)) } : {}),
        ...(encryptKeyslot !== undefined ? { keyslot: Number(encryptKeyslot) } : {}),
        ...(encryptIterTime !== undefined ? { iterTimeMs: Number(encryptIterTime) } : {}),
        force: values.force ?? false,
      });
    } finally {
      await storage.close();
    }
    return 0;
  }
  // size= is a resize (to any size, smaller too, as qemu-img amend): after an upgrade to version 3, before a
  // downgrade to version 2 (a version 2 image with snapshots cannot be resized), as qemu orders them.
  const newSize = size === undefined ? undefined : parseSize(String(size));
  const downgrade = options.compat !== undefined && ['0.10', 'v2', '2'].includes(String(options.compat));
  const rest = Object.values(options).some((v) => v !== undefined);
  if (newSize !== undefined && downgrade) await resizeTo(file, newSize);
  if (rest) {
    const storage = await FileStorage.open(file, { readOnly: false });
    try {
      await amendQcow2(storage, options);
    } finally {
      await storage.close();
    }
  }
  if (newSize !== undefined && !downgrade) await resizeTo(file, newSize);
  return 0;
};

/** amend's size=: the image resized as `img resize --shrink` would, opened with its chain (what shows through past the old end). */
async function resizeTo(file: string, size: number): Promise<void> {
  const disk = await openImageFile(file, { ...imageOpenOptions(file, 'qcow2'), readOnly: false });
  try {
    if (size !== disk.size) await disk.resize!(size, { shrink: true });
    await disk.flush();
  } finally {
    await disk.close();
  }
}
