/**
 * img amend: change format options of a qcow2 image in place, or the key
 * slots of a luks image.
 */
import { parseArgs } from '../parse-args.js';
import { optionsFromText, parseSize, unknownOptionName, unsupported, type OptionTable } from '@img/block';
import { amendLuksKeySlots, LUKS_AMEND_OPTIONS, LUKS_CREATE_OPTIONS } from '@img/luks';
import { FileStorage } from '@img/block/node';
import { amendQcow2, amendQcow2KeySlots, QCOW2_AMEND_KEYSLOT_OPTIONS, QCOW2_AMEND_OPTIONS, QCOW2_CREATE_OPTIONS } from '@img/qcow2';
import { imageOpenOptions, imageOptsFor, secretValue } from '../qemu-objects.js';
import { checkCacheModes, ExitCode, UsageError, type Io } from '../common.js';
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
        '--force erases the last one; a luks image takes the same options without "encrypt.": state=, new-secret=, ...,\n' +
        'given with --image-opts driver=luks,file.filename=F,key-secret=ID).\n' +
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
  // An option string's driver names the format, as -f would (a luks image is then not unlocked twice).
  let format = values.f ?? (path !== undefined ? imageOptsFor(path)?.format : undefined);
  if (format === undefined && path !== undefined) {
    // The format alone, without openForCommand's refusal of an encrypted image given without its passphrase: img
    // erases a key slot named by encrypt.old-secret without it (qemu-img amend does not open such an image).
    const probe = await openImageFile(path, { ...imageOpenOptions(path, values.f), untrusted: values.untrusted ?? false, forceFormat: values['force-format'] ?? false });
    format = probe.format;
    await probe.close();
  }
  const driver = format === undefined ? undefined : defaultRegistry().require(format);
  if (driver !== undefined && driver.name !== 'qcow2' && driver.name !== 'luks') {
    throw unsupported(driver.name, path, `Format driver '${qemuFormatName(driver.name)}' does not support option amendment`);
  }
  if (driver?.name === 'luks') {
    if (optionText.help) {
      io.stdout(`Amend options for 'luks':\n${qemuHelpLines(LUKS_AMEND_OPTIONS).join('\n')}\n`);
      return 0;
    }
    await amendLuks(io, onePath(positionals), optionText.text, values.force ?? false);
    return 0;
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
  // As qemu-img amend, which opens the image with its chain before it changes anything: an encrypted image (or
  // backing file) given no passphrase is refused, status 1, with nothing changed.
  await (await openForCommand(file, { f: 'qcow2', untrusted: values.untrusted ?? false, 'force-format': values['force-format'] ?? false })).close();
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

/**
 * qemu-img's `-o help` lines for a short table: names padded to 22 columns,
 * as qemu prints them (optionHelpLines pads to the longest name only).
 */
function qemuHelpLines(table: OptionTable): string[] {
  return table.map((o) => `  ${`${o.name}=<${o.kind}>`.padEnd(22)} - ${o.help}`);
}

/**
 * amend of a luks image: its key slots (qemu-img amend's `state`, `new-secret`, `old-secret`, `keyslot`,
 * `iter-time`; the secrets are --object ids, the current passphrase the image's key-secret in --image-opts).
 * A name qemu-img amend refuses is refused in its words ("Invalid parameter 'size'", and for a create
 * option "This option is only supported for image creation"), status 1.
 */
async function amendLuks(io: Io, file: string, text: Readonly<Record<string, string>>, force: boolean): Promise<void> {
  if (Object.keys(text).length === 0) throw new UsageError('expected -o key=value[,...]');
  const bad = unknownOptionName(LUKS_AMEND_OPTIONS, Object.keys(text));
  if (bad !== undefined) {
    io.stderr(`img amend: Invalid parameter '${bad}'\n${LUKS_CREATE_OPTIONS.some((o) => o.name === bad) ? 'This option is only supported for image creation\n' : ''}`);
    throw new ExitCode(1);
  }
  const { state, newSecret, oldSecret, keyslot, iterTime } = optionsFromText('luks', LUKS_AMEND_OPTIONS, text);
  if (state === undefined) throw new ExitCode(1, "Parameter 'state' is missing");
  const passphrase = imageOptsFor(file)?.passphrase;
  const storage = await FileStorage.open(file, { readOnly: false });
  try {
    await amendLuksKeySlots(storage, {
      state: String(state) as 'active' | 'inactive',
      ...(passphrase ? { passphrase } : {}),
      ...(newSecret !== undefined ? { newPassphrase: secretValue(String(newSecret)) } : {}),
      ...(oldSecret !== undefined ? { oldPassphrase: secretValue(String(oldSecret)) } : {}),
      ...(keyslot !== undefined ? { keyslot: Number(keyslot) } : {}),
      ...(iterTime !== undefined ? { iterTimeMs: Number(iterTime) } : {}),
      force,
    });
  } finally {
    await storage.close();
  }
}

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
