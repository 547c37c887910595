/**
 * qemu's ways of naming an image other than a file name, wherever a file
 * name is taken:
 * - an NBD URI (`nbd://host/export`, `nbd+unix:///?socket=PATH`), opened
 *   as an export of a server;
 * - a `json:{...}` pseudo-filename: qemu's block options as a JSON object,
 *   which qemu flattens into the keys `--image-opts` takes
 *   (`{"driver":"qcow2","file":{"driver":"file","filename":"a.qcow2"}}` is
 *   `driver=qcow2,file.driver=file,file.filename=a.qcow2`).
 * qemu-img takes both on its command line, and both are stored as backing
 * file names: libvirt and other management tools write `json:` names for
 * backing files they opened with options, and `qemu-img create -b
 * nbd://...` makes an overlay of an export. A file name inside a `json:`
 * name is the process's, as qemu opens it (relative to the working
 * directory, not to the image that names it).
 *
 * Of qemu's options img reads those that say where the image is, its
 * format and its secrets; any other key is refused, naming it, rather than
 * ignored (an option such as raw's `offset` would change what the image
 * reads).
 */
import { invalidArg, unsupported, type Resolver, type Storage } from '@img/block';
import { FileStorage, fileResolverWith, resolveRelative, type FileResolverOptions } from '@img/block/node';
import { isNbdUri, NbdStorage } from '@img/nbd';
import { nbdAwareResolver } from './nbd-backing.js';

/** Where an option set puts an image, and what else img reads from it. */
export interface QemuImageSpec {
  /** A file name (as given: relative to the working directory) or an NBD URI. */
  location: string;
  /** `driver` where it is a format; undefined for a protocol at the top (driver=file, driver=nbd: the bytes as they are). */
  format?: string;
  /** The protocol driver named at the top (file or nbd), where no format driver is: the bytes as they are, read as raw. */
  protocol?: string;
  /** The keys that name secrets (encrypt.key-secret, key-secret, backing.encrypt.key-secret, ...), with their ids. */
  secrets: Map<string, string>;
  /** `backing=` (`"backing": null`): the image without its backing file, unallocated ranges reading as zeros. */
  noBacking?: boolean;
  /** An NBD export named by its `export` option, even an empty one (qemu then names the image with a slash before it). */
  exportNamed?: boolean;
}

/** Is `name` a `json:` pseudo-filename? */
export function isJsonName(name: string): boolean {
  return name.startsWith('json:');
}

/** How deep a json: name's objects may nest (qemu's options go three or four levels deep). */
const MAX_DEPTH = 16;

/** qemu's flattening of a JSON object into dotted keys (nested objects and arrays alike; values as strings). */
function flatten(value: unknown, prefix: string, out: Map<string, string>, name: string, depth = 0): void {
  if (value !== null && typeof value === 'object') {
    if (depth >= MAX_DEPTH) throw invalidArg('json', `${name}: the options nest deeper than ${MAX_DEPTH} levels`, { field: prefix });
    const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v] as const) : Object.entries(value);
    for (const [k, v] of entries) flatten(v, prefix ? `${prefix}.${k}` : k, out, name, depth + 1);
    return;
  }
  // "backing": null opens the image without its backing file, as qemu does (which also takes "", deprecated).
  if (value === null && prefix === 'backing') value = '';
  if (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean') {
    throw invalidArg('json', `${name}: the option ${prefix} is ${value === null ? 'null' : typeof value}: img reads strings, numbers and booleans`, { field: prefix });
  }
  if (out.has(prefix)) throw invalidArg('json', `${name}: the option ${prefix} is given twice`, { field: prefix });
  out.set(prefix, String(value));
}

/** The options of a `json:` name as `--image-opts` keys. Throws ERR_IMG_INVALID_ARG where it is not a JSON object. */
export function jsonNameOptions(name: string): Map<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(name.slice('json:'.length));
  } catch (e) {
    throw invalidArg('json', `${name}: Could not parse the JSON options: ${(e as Error).message}`, { field: 'json' });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw invalidArg('json', `${name}: Invalid JSON object given`, { field: 'json' });
  const out = new Map<string, string>();
  flatten(parsed, '', out, name);
  return out;
}

/** Protocol drivers: where the bytes are. */
const PROTOCOLS = new Set(['file', 'nbd']);
/** The NBD port, where none is given. */
const NBD_PORT = '10809';

/** An NBD URI for qemu's nbd options under `prefix` (server.type, server.host/port or server.path, export). */
function nbdUri(keys: Map<string, string>, prefix: string, what: string): string {
  const get = (k: string) => keys.get(prefix + k);
  const type = get('server.type');
  const exportName = encodeURIComponent(get('export') ?? '');
  if (type === 'unix') {
    const path = get('server.path');
    if (!path) throw invalidArg('nbd', `${what}: ${prefix}server.path is missing (server.type=unix)`, { field: `${prefix}server.path` });
    return `nbd+unix:///${exportName}?socket=${encodeURIComponent(path)}`;
  }
  if (type === 'inet') {
    const host = get('server.host');
    if (!host) throw invalidArg('nbd', `${what}: ${prefix}server.host is missing (server.type=inet)`, { field: `${prefix}server.host` });
    const port = get('server.port') ?? NBD_PORT;
    return `nbd://${host.includes(':') ? `[${host}]` : host}:${port}/${exportName}`;
  }
  throw invalidArg('nbd', `${what}: ${prefix}server.type is ${type === undefined ? 'missing' : `"${type}"`}: img connects to inet and unix servers`, { field: `${prefix}server.type` });
}

/** The keys of a protocol driver's options img reads (besides `driver`). */
function protocolKeys(driver: string): string[] {
  return driver === 'nbd' ? ['server.type', 'server.host', 'server.port', 'server.path', 'export'] : ['filename'];
}

/** What a secret key is named: encrypt.key-secret (qcow2), key-secret (luks), and a backing file's at any depth. */
const SECRET_KEY = /^(backing\.)*(encrypt\.)?key-secret$/;

/**
 * Reads an option set (`--image-opts` keys or a flattened `json:` name):
 * where the image is and its format, refusing any key img does not read.
 * `what` names the option set in messages.
 */
export function qemuImageSpec(keys: Map<string, string>, what: string): QemuImageSpec {
  const driver = keys.get('driver');
  const secrets = new Map([...keys].filter(([k]) => SECRET_KEY.test(k)));
  // A protocol at the top: its own options are top-level keys, and there is no format layer.
  const top = driver !== undefined && PROTOCOLS.has(driver);
  const fileDriver = top ? driver : (keys.get('file.driver') ?? 'file');
  if (!PROTOCOLS.has(fileDriver)) throw unsupported('json', what, `file.driver=${fileDriver}: img reads files (file) and NBD exports (nbd)`, { field: 'file.driver', actual: fileDriver });
  const prefix = top ? '' : 'file.';
  // encrypt.format (luks, aes) is read from the image's header anyway: accepted, as qemu-img accepts it.
  const known = new Set(['driver', ...(top ? [] : ['file.driver', 'encrypt.format', 'backing']), ...protocolKeys(fileDriver).map((k) => prefix + k)]);
  for (const key of keys.keys()) {
    if (key === 'file' && !top) throw invalidArg('json', `${what}: file="${keys.get(key)}" names a block node, which img has not: give file.filename (or file.driver=nbd and file.server.*)`, { field: 'file' });
    if (key === 'backing' && keys.get(key) !== '' && !top) {
      throw invalidArg('json', `${what}: backing="${keys.get(key)}" names a block node, which img has not: give backing= (json: "backing": null) to open the image without its backing file`, { field: 'backing' });
    }
    if (!known.has(key) && !secrets.has(key)) {
      throw invalidArg('json', `${what}: img reads driver, file.driver (file or nbd), file.filename, file.server.*, file.export and the key-secret options, not "${key}"`, { field: key });
    }
  }
  let location: string;
  if (fileDriver === 'nbd') location = nbdUri(keys, prefix, what);
  else {
    const filename = keys.get(`${prefix}filename`);
    if (filename === undefined) throw invalidArg('json', `${what}: ${prefix}filename is missing`, { field: `${prefix}filename` });
    if (filename === '') throw invalidArg('json', `${what}: ${prefix}filename is empty`, { field: `${prefix}filename` });
    location = filename;
  }
  return {
    location,
    ...(driver !== undefined && !top ? { format: driver } : {}),
    ...(top ? { protocol: driver } : {}),
    secrets,
    ...(keys.get('backing') === '' && !top ? { noBacking: true } : {}),
    ...(fileDriver === 'nbd' && keys.has(`${prefix}export`) ? { exportNamed: true } : {}),
  };
}

/**
 * `inner`, with NBD URIs and `json:` names inside images opened as qemu
 * opens them: an export of a server, or the file or export the options
 * name (a file name relative to the working directory). Everything else
 * goes to `inner`. Files are opened with `options`' locks, as
 * fileResolverWith opens them. A `json:` name's secrets are not looked up
 * here: a backing file's passphrase comes from the open options (`backing`).
 */
export function qemuNameResolver(inner: Resolver, options: FileResolverOptions = {}): Resolver {
  return async (request): Promise<Storage> => {
    const { name } = request;
    if (request.create || (!isNbdUri(name) && !isJsonName(name))) return inner(request);
    const spec = isJsonName(name) ? qemuImageSpec(jsonNameOptions(name), `${request.kind === 'data-file' ? 'external data file' : request.kind === 'parent' ? 'parent' : 'backing file'} ${name}`) : undefined;
    // The resolver hands over a file; the layer below it is opened from that file's own header.
    if (spec?.noBacking) throw unsupported('json', name, 'a name stored in an image says "backing": null: img opens the file it names with its own backing file', { field: 'backing' });
    const location = spec ? spec.location : name;
    if (isNbdUri(location)) return NbdStorage.connect(location, { writable: request.writable });
    return FileStorage.open(location, { readOnly: !request.writable, lock: options.lock ?? true, forceShare: !request.writable && options.forceShare === true });
  };
}

/**
 * The resolver of img's commands: fileResolverWith(options) for names of
 * files (relative to the image that names them; a relative name inside an
 * image read over NBD refused, see nbd-backing.ts), with NBD URIs and
 * `json:` names opened as qemu opens them ({@link qemuNameResolver}).
 */
export function qemuResolverWith(options: FileResolverOptions = {}): Resolver {
  return qemuNameResolver(nbdAwareResolver(fileResolverWith(options)), options);
}

/**
 * Where a name stored in the image `from` (a path) points: a file path
 * (relative to `from`'s directory, or as a `json:` name gives it: relative
 * to the working directory) or an NBD URI.
 */
export function qemuLocation(name: string, from: string): string {
  if (isNbdUri(name)) return name;
  if (isJsonName(name)) return qemuImageSpec(jsonNameOptions(name), name).location;
  return resolveRelative({ name, from: { name: from } as Storage });
}
