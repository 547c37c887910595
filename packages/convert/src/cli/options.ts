/**
 * `-o key=value,...` as the commands read it: qemu-img's snake_case names,
 * mapped through the format's option table to the typed (camelCase) keys
 * the API takes. A name the table does not declare ends the command the
 * way qemu-img does ("Invalid parameter 'clustr_size'", status 1) before
 * any file is created, followed by the names that are valid.
 */
import { secretValue } from './qemu-objects.js';
import { optionHelpLines, optionsFromText, unknownOptionName, type FormatDriver, type OptionTable } from '@img/block';
import { QCOW2_AMEND_KEYSLOT_OPTIONS, QCOW2_AMEND_OPTIONS, QCOW2_AMEND_UNSUPPORTED, QCOW2_CREATE_OPTIONS } from '@img/qcow2';
import { parseCreateOptions } from '../convert.js';
import { ExitCode, type Io } from './common.js';
import { qemuFormatName } from './info-human.js';

/** The `-o` values of a command: raw text, and whether `help` was asked for. */
export function readOptionText(values: string | readonly string[] | undefined): { text: Record<string, string>; help: boolean } {
  // As qemu-img: an empty item (`-o ''`, a comma at the end, two options with nothing between) is no option list,
  // refused in its words, not skipped (",," is a comma inside a value).
  for (const list of values === undefined ? [] : typeof values === 'string' ? [values] : values) {
    if (list.split(/(?<!,),(?!,)/).some((item) => item === '')) throw new ExitCode(1, `Invalid option list: ${list}`);
  }
  const text = parseCreateOptions(values);
  // qemu-img takes "?" for "help" (its is_help_option).
  const help = 'help' in text || '?' in text;
  delete text.help;
  delete text['?'];
  return { text, help };
}

/** The title of `-o help` for a format's create options, with qemu-img's name for the format ("vpc"). */
export function createOptionsTitle(driver: FormatDriver): string {
  return `Supported ${qemuFormatName(driver.name)} options:`;
}

/** Prints `-o help` for a table: a title line and one line per option. */
export function printOptionHelp(io: Io, title: string, table: OptionTable): void {
  io.stdout(`${title}\n${optionHelpLines(table).join('\n')}\n`);
}

function refuse(io: Io, prog: string, name: string, lines: string[]): never {
  io.stderr(`${prog}: Invalid parameter '${name}'\n${lines.join('\n')}\n`);
  throw new ExitCode(1);
}

/**
 * Maps `-o` text to `driver`'s typed create options. An unknown name
 * prints qemu-img's "Invalid parameter" line and the supported options
 * on stderr, and the command exits 1.
 */
export function createOptionsFromCli(io: Io, prog: string, driver: FormatDriver, text: Readonly<Record<string, string>>): Record<string, unknown> {
  const table = driver.createOptionTable ?? [];
  const bad = unknownOptionName(table, Object.keys(text));
  if (bad !== undefined) refuse(io, prog, bad, [createOptionsTitle(driver), ...optionHelpLines(table)]);
  return withSecretPassphrase(optionsFromText(driver.name, table, text));
}

/**
 * `encrypt.key-secret=ID` (qcow2) and `key-secret=ID` (luks), ids of --object
 * secrets, as the passphrase itself, which is what the formats take
 * (`encryptPassphrase`, `passphrase`).
 */
function withSecretPassphrase(options: Record<string, unknown>): Record<string, unknown> {
  let out = options;
  if (out.encryptKeySecret !== undefined) {
    const { encryptKeySecret: id, ...rest } = out;
    out = { ...rest, encryptPassphrase: secretValue(String(id)) };
  }
  if (out.keySecret !== undefined) {
    const { keySecret: id, ...rest } = out;
    out = { ...rest, passphrase: secretValue(String(id)) };
  }
  return out;
}

/**
 * Maps `img amend -o` text (qcow2) to amendQcow2's options. Options qemu
 * can only set at creation are refused in qemu-img amend's words; names
 * qemu amends but this library does not are passed on, and amendQcow2
 * refuses them (ERR_IMG_UNSUPPORTED).
 */
export function amendOptionsFromCli(io: Io, prog: string, text: Readonly<Record<string, string>>): Record<string, unknown> {
  const all = [...QCOW2_AMEND_OPTIONS, ...QCOW2_AMEND_KEYSLOT_OPTIONS, ...QCOW2_CREATE_OPTIONS.filter((o) => QCOW2_AMEND_UNSUPPORTED.includes(o.name))];
  const bad = unknownOptionName(all, Object.keys(text));
  if (bad !== undefined) {
    const creationOnly = QCOW2_CREATE_OPTIONS.some((o) => o.name === bad);
    refuse(io, prog, bad, creationOnly ? ['This option is only supported for image creation'] : ["Amend options for 'qcow2':", ...optionHelpLines([...QCOW2_AMEND_OPTIONS, ...QCOW2_AMEND_KEYSLOT_OPTIONS])]);
  }
  return optionsFromText('qcow2', all, text);
}
