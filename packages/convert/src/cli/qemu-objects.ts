/**
 * qemu-img's `--object secret,...` and `--image-opts`, as far as img has a
 * use for them: a secret is the passphrase of an encrypted image, and an
 * image option string (`driver=qcow2,file.filename=vm.qcow2,
 * encrypt.key-secret=sec0`, `driver=luks,file.filename=vm.luks,key-secret=sec0`)
 * names a file, its format and the secret that unlocks it. They are taken
 * out of a command's arguments before the command parses them: each option
 * string becomes its file name, and what it said is looked up by that name
 * when the command opens the file.
 */
import { ImageError, invalidArg, type BackingOpenOptions } from '@img/block';
import { isJsonName, jsonNameOptions, qemuImageSpec, type QemuImageSpec } from '../node/qemu-names.js';
import { ExitCode } from './common.js';

/** What an option string said about one image file. */
export interface ImageOpts {
  format?: string;
  passphrase?: Uint8Array;
  /** backing.encrypt.key-secret (backing.backing.... for deeper files): a backing file's own passphrase. */
  backing?: BackingOpenOptions;
  /** driver=file or driver=nbd: a protocol at the top, read as raw (`format`), which qemu-img info names after the protocol. */
  protocol?: string;
  /** backing= (json: "backing": null): the image without its backing file. */
  noBacking?: boolean;
  /** An NBD export named by an `export` option (even empty): qemu-img info writes a slash before its name. */
  exportNamed?: boolean;
}

let images = new Map<string, ImageOpts>();
let secrets = new Map<string, Uint8Array>();
let target: string | undefined;

/** The value of the --object secret `id` of the running command. */
export function secretValue(id: string): Uint8Array {
  const value = secrets.get(id);
  if (!value) throw new ExitCode(1, `No secret with id '${id}'`);
  return value;
}

/** The options given for `path` with --image-opts in the running command. */
export function imageOptsFor(path: string): ImageOpts | undefined {
  return images.get(path);
}

/** The output file convert's --target-image-opts named (its options are {@link imageOptsFor} that name). */
export function targetImageOptsPath(): string | undefined {
  return target;
}

/**
 * qemu-img's refusal of an encrypted image given without its secret (luks names it key-secret, qcow2 encrypt.key-secret).
 * With `backing`, the encrypted file is that backing file of `path`, `depth` levels down (qemu-img: "Could not open
 * backing file: Parameter ..."), whose secret --image-opts names backing.encrypt.key-secret (once per level).
 */
export function missingSecretError(format: string, path: string, backing?: { name: string; depth: number }): ImageError {
  const key = format === 'luks' ? 'key-secret' : 'encrypt.key-secret';
  if (backing === undefined) return invalidArg(format, `${path}: Parameter '${key}' is required for cipher (give its passphrase: --object secret,id=ID,data=... with --image-opts)`, { file: path, field: 'passphrase' });
  return invalidArg(format, `${path}: Could not open backing file ${backing.name}: Parameter '${key}' is required for cipher (give its passphrase: --object secret,id=ID,data=... with --image-opts ${'backing.'.repeat(backing.depth)}${key}=ID)`, {
    file: backing.name,
    field: 'passphrase',
  });
}

/** The open options --image-opts gave `path`: its passphrase, and its format where -f gave none. */
export function imageOpenOptions(path: string, format: string | undefined): ImageOpts {
  const o = images.get(path);
  if (!o) return format !== undefined ? { format } : {};
  if (format !== undefined && o.format !== undefined && format !== o.format && !(format === 'vhd' && o.format === 'vpc') && !(format === 'vpc' && o.format === 'vhd')) {
    const [flag, opts] = path === target ? ['-O', '--target-image-opts'] : ['-f', '--image-opts'];
    throw new ExitCode(1, `${flag} ${format} and ${opts} driver=${o.format} disagree about ${path}`);
  }
  const chosen = format ?? o.format;
  return { ...(chosen !== undefined ? { format: chosen } : {}), ...(o.passphrase ? { passphrase: o.passphrase } : {}), ...(o.backing ? { backing: o.backing } : {}), ...(o.noBacking ? { noBacking: true } : {}) };
}

/** Splits qemu's `key=value,...` (",," is a comma inside a value); a first item without "=" is `implied`'s value. */
function splitOptions(text: string, implied: string | undefined, what: string): Map<string, string> {
  const items: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',' && text[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (text[i] === ',') {
      items.push(cur);
      cur = '';
    } else cur += text[i];
  }
  items.push(cur);
  const out = new Map<string, string>();
  items.forEach((item, i) => {
    const eq = item.indexOf('=');
    const [key, value] = eq < 0 && i === 0 && implied !== undefined ? [implied, item] : [item.slice(0, eq), item.slice(eq + 1)];
    if (eq < 0 && !(i === 0 && implied !== undefined)) throw new ExitCode(1, `${what}: "${item}" is not key=value`);
    if (out.has(key)) throw new ExitCode(1, `${what}: ${key} is given twice`);
    out.set(key, value);
  });
  return out;
}

async function secretOf(spec: Map<string, string>, text: string): Promise<{ id: string; bytes: Uint8Array }> {
  for (const key of spec.keys()) {
    if (key === 'keyid' || key === 'iv') throw new ExitCode(1, `--object ${text}: secrets encrypted with another secret (keyid, iv) are not supported`);
    if (!['qom-type', 'id', 'data', 'file', 'format'].includes(key)) throw new ExitCode(1, `--object ${text}: a secret takes id, data or file, and format, not "${key}"`);
  }
  const id = spec.get('id');
  if (!id) throw new ExitCode(1, `--object ${text}: Parameter 'id' is missing`);
  const data = spec.get('data');
  const file = spec.get('file');
  if ((data === undefined) === (file === undefined)) throw new ExitCode(1, `--object ${text}: give the secret's value as data= or file=, one of them`);
  const format = spec.get('format') ?? 'raw';
  if (format !== 'raw' && format !== 'base64') throw new ExitCode(1, `--object ${text}: format is raw or base64, not "${format}"`);
  let bytes: Uint8Array;
  if (file !== undefined) {
    const { readFile } = await import('node:fs/promises');
    try {
      bytes = new Uint8Array(await readFile(file));
    } catch (e) {
      throw new ExitCode(1, `--object secret,id=${id}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  } else bytes = new TextEncoder().encode(data);
  if (format === 'base64') {
    const encoded = new TextDecoder().decode(bytes).trim();
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(encoded) || encoded.length % 4 !== 0) throw new ExitCode(1, `--object secret,id=${id}: the value is not base64`);
    bytes = new Uint8Array(Buffer.from(encoded, 'base64'));
  }
  return { id, bytes };
}

/** The options whose value is a backing file name (create, rebase, convert -B, commit -b, bitmap -b). */
const BACKING_FLAGS = new Set(['-b', '-B']);

/** Is `arg` (without dd's `if=`) an option string rather than a file name? */
function isOptionString(arg: string): boolean {
  return /^(driver|file\.[a-z.-]+|server\.[a-z]+|export)=/.test(arg) || /(^|,)file\.filename=/.test(arg);
}

/**
 * Turns one option string (`--image-opts` keys, or a `json:` name) into the
 * image's location (a file name or an NBD URI), recording what it said.
 */
function takeImageOpts(arg: string): string {
  // qemu-img dd names its input if=OPTIONS.
  const prefix = arg.startsWith('if=') ? 'if=' : '';
  const text = arg.slice(prefix.length);
  const json = isJsonName(text);
  const what = json ? text : `--image-opts ${arg}`;
  let spec: QemuImageSpec;
  try {
    spec = qemuImageSpec(json ? jsonNameOptions(text) : splitOptions(text, undefined, what), what);
  } catch (e) {
    // One line, as the other refusals of a command's arguments: the sentence without the error code.
    if (ImageError.isInstance(e)) throw new ExitCode(1, e.message.replace(/^(json|nbd): /, ''));
    throw e;
  }
  const secretOfKey = (key: string) => {
    const id = spec.secrets.get(key);
    const value = id !== undefined ? secrets.get(id) : undefined;
    if (id !== undefined && !value) throw new ExitCode(1, `No secret with id '${id}'`);
    return value;
  };
  // qcow2 names its secret encrypt.key-secret, luks (the whole file a LUKS volume) key-secret.
  const driver = spec.format;
  if (spec.secrets.has('key-secret') && (spec.secrets.has('encrypt.key-secret') || (driver !== undefined && driver !== 'luks'))) {
    throw new ExitCode(1, `${what}: key-secret is the secret of driver=luks${driver !== undefined && driver !== 'luks' ? ` (driver=${driver} takes encrypt.key-secret)` : ', and encrypt.key-secret is given too'}`);
  }
  const passphrase = secretOfKey('encrypt.key-secret') ?? secretOfKey('key-secret');
  // backing.encrypt.key-secret, backing.backing.encrypt.key-secret, ...: nested, one level per "backing."; a luks
  // backing file's is backing.key-secret, as qemu names it.
  let backing: BackingOpenOptions | undefined;
  const depths = [...spec.secrets.keys()].map((k) => /^(?:backing\.)*/.exec(k)![0].length / 'backing.'.length);
  for (let depth = Math.max(0, ...depths); depth >= 1; depth--) {
    const at = 'backing.'.repeat(depth);
    const value = secretOfKey(`${at}encrypt.key-secret`) ?? secretOfKey(`${at}key-secret`);
    if (value || backing) backing = { ...(value ? { passphrase: value } : {}), ...(backing ? { backing } : {}) };
  }
  // A protocol at the top (driver=file, driver=nbd) is the bytes as they are: raw.
  const { protocol } = spec;
  const format = protocol !== undefined ? 'raw' : driver;
  images.set(spec.location, {
    ...(format !== undefined ? { format } : {}),
    ...(passphrase ? { passphrase } : {}),
    ...(backing ? { backing } : {}),
    ...(protocol !== undefined ? { protocol } : {}),
    ...(spec.noBacking ? { noBacking: true } : {}),
    ...(spec.exportNamed ? { exportNamed: true } : {}),
  });
  return prefix + spec.location;
}

/**
 * Takes --object and --image-opts out of `argv` (up to "--"), reads the
 * secrets, turns each option string into its file name and records what it
 * said (see {@link imageOptsFor}). With `targetImageOpts` (convert), also
 * --target-image-opts: the last argument is then the output's option string
 * ({@link targetImageOptsPath}).
 */
export async function takeQemuObjects(argv: readonly string[], options: { targetImageOpts?: boolean } = {}): Promise<string[]> {
  images = new Map();
  secrets = new Map();
  target = undefined;
  const rest: string[] = [];
  const objects: string[] = [];
  let imageOpts = false;
  let targetOpts = false;
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') break;
    if (arg === '--object') {
      if (i + 1 >= argv.length) throw new ExitCode(1, '--object needs a value (secret,id=ID,data=...)');
      objects.push(argv[++i]!);
    } else if (arg.startsWith('--object=')) objects.push(arg.slice('--object='.length));
    else if (arg === '--image-opts') imageOpts = true;
    else if (arg === '--target-image-opts' && options.targetImageOpts) targetOpts = true;
    else if (arg === '--target-image-opts') throw new ExitCode(1, '--target-image-opts is an option of convert only');
    else rest.push(arg);
  }
  rest.push(...argv.slice(i));
  for (const text of objects) {
    const spec = splitOptions(text, 'qom-type', `--object ${text}`);
    const type = spec.get('qom-type');
    if (type !== 'secret') throw new ExitCode(1, `--object ${type ?? text}: img takes secret objects only (the passphrase of an encrypted image)`);
    const { id, bytes } = await secretOf(spec, text);
    if (secrets.has(id)) throw new ExitCode(1, `--object: two secrets have the id "${id}"`);
    secrets.set(id, bytes);
  }
  // The output is the last positional argument; an option string is told apart from a file name by its file.filename.
  let targetAt = -1;
  if (targetOpts) {
    for (let k = rest.length - 1; k >= 0 && targetAt < 0; k--) if (!rest[k]!.startsWith('-') && (isOptionString(rest[k]!) || isJsonName(rest[k]!))) targetAt = k;
    if (targetAt < 0) throw new ExitCode(1, '--target-image-opts: give the output as driver=FORMAT,file.filename=PATH[,encrypt.key-secret=ID]');
  }
  let named = 0;
  const out = rest.map((arg, k) => {
    if (k === targetAt) {
      target = takeImageOpts(arg);
      return target;
    }
    // A json: name is an option string with or without --image-opts, as qemu-img takes it; not as the value of
    // -b or -B, a backing file name, which is stored as given.
    const bare = arg.startsWith('if=') ? arg.slice(3) : arg;
    if (isJsonName(bare) && !BACKING_FLAGS.has(rest[k - 1] ?? '')) return takeImageOpts(arg);
    if (!imageOpts || arg.startsWith('-') || !isOptionString(bare)) return arg;
    named++;
    return takeImageOpts(arg);
  });
  if (imageOpts && named === 0) throw new ExitCode(1, '--image-opts names no image: give it as driver=FORMAT,file.filename=PATH[,encrypt.key-secret=ID]');
  // The options are the file's (the commands look them up by name): a file named again, with or without its
  // backing file, would be read as the other naming says.
  for (const [location, o] of images) {
    if (o.noBacking && out.filter((a) => a === location || a === `if=${location}`).length > 1) {
      throw new ExitCode(1, `${location} is named twice, once without its backing file (backing=, "backing": null): give it once`);
    }
  }
  return out;
}
