/**
 * NBD URIs (the NBD project's URI format, as qemu-img and nbdinfo take
 * them): `nbd://host[:port]/[export]` and
 * `nbd+unix:///[export]?socket=PATH`; and qemu's legacy spellings
 * `nbd:HOST:PORT[:exportname=NAME]` and `nbd:unix:PATH[:exportname=NAME]`.
 */
import { invalidArg } from '@img/block';

/** Where an NBD URI points. */
export type NbdAddress = { socket: string; exportName: string } | { host: string; port: number; exportName: string };

/** The NBD port (IANA), where a URI names none. */
const NBD_PORT = 10809;

/** What qemu's legacy syntax puts before the export name. */
const EXPORT_NAME_OPTION = ':exportname=';

const FORMS = 'nbd://host[:port]/export, nbd+unix:///export?socket=path, nbd:host:port[:exportname=name] or nbd:unix:path[:exportname=name]';

/**
 * Is `text` an NBD URI (rather than a file name)? Any `nbd:` name is, as
 * for qemu-img, and so are the schemes img does not speak (`nbds://`,
 * `nbd+vsock://`), so that `parseNbdUri` says why instead of a file being
 * looked for.
 */
export function isNbdUri(text: string): boolean {
  return /^nbds?(\+unix|\+tcp|\+vsock)?:\/\//i.test(text) || text.startsWith('nbd:');
}

function bad(text: string, why: string) {
  return invalidArg('nbd', `"${text}" ${why}`, { field: 'uri' });
}

function decoded(text: string, part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw bad(text, `has a malformed %-escape in "${part}"`);
  }
}

/**
 * The query's parameters, %-decoded only: a `+` stays a `+`, as libnbd and
 * qemu read it (URLSearchParams would make it a space, the form encoding).
 */
function queryOf(text: string, search: string): Map<string, string> {
  const params = new Map<string, string>();
  for (const pair of search.replace(/^\?/, '').split(/[&;]/)) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const key = decoded(text, eq < 0 ? pair : pair.slice(0, eq));
    if (params.has(key)) throw bad(text, `names the query parameter "${key}" twice`);
    params.set(key, decoded(text, eq < 0 ? '' : pair.slice(eq + 1)));
  }
  return params;
}

/** qemu's legacy `nbd:` syntax: the export name is everything after the first ":exportname=". */
function parseLegacy(text: string): NbdAddress {
  const rest = text.slice('nbd:'.length);
  const at = rest.indexOf(EXPORT_NAME_OPTION);
  const spec = at < 0 ? rest : rest.slice(0, at);
  const exportName = at < 0 ? '' : rest.slice(at + EXPORT_NAME_OPTION.length);
  if (spec.startsWith('unix:')) {
    const socket = spec.slice('unix:'.length);
    if (!socket) throw bad(text, 'names no socket (nbd:unix:path[:exportname=name])');
    return { socket, exportName };
  }
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(spec);
  if (!m) throw bad(text, `is not an NBD address (${FORMS})`);
  const port = Number(m[3]);
  if (port > 65535) throw bad(text, `names port ${m[3]}, past 65535`);
  return { host: (m[1] ?? m[2])!, port, exportName };
}

/** Parses an NBD URI; ERR_IMG_INVALID_ARG naming what is wrong. */
export function parseNbdUri(text: string): NbdAddress {
  if (text.startsWith('nbd:') && !text.startsWith('nbd://')) return parseLegacy(text);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw bad(text, `is not an NBD URI (${FORMS})`);
  }
  const scheme = url.protocol.toLowerCase();
  if (scheme.startsWith('nbds')) throw bad(text, `uses TLS (${scheme}//), which is not supported: use nbd:// through a tunnel (ssh, stunnel), or nbd+unix://`);
  if (scheme.endsWith('+vsock:')) throw bad(text, `uses vsock (${scheme}//), which is not supported: use nbd:// or nbd+unix://`);
  const exportName = decoded(text, url.pathname.replace(/^\//, ''));
  const query = queryOf(text, url.search);
  if (scheme === 'nbd+unix:') {
    if (url.host) throw bad(text, 'names a host, which an nbd+unix URI has none of (nbd+unix:///export?socket=path)');
    const socket = query.get('socket');
    if (!socket) throw bad(text, 'names no socket (nbd+unix:///export?socket=path)');
    const other = [...query.keys()].find((k) => k !== 'socket');
    if (other !== undefined) throw bad(text, `has the query parameter "${other}", which img does not know (an nbd+unix URI takes socket= only)`);
    return { socket, exportName };
  }
  if (scheme === 'nbd:' || scheme === 'nbd+tcp:') {
    if (!url.hostname) throw bad(text, 'names no host');
    // As qemu-img ("No valid URL specified"): a socket= here would be silently ignored, and the connection go elsewhere.
    if (query.size > 0) throw bad(text, `has a query (${url.search}), which an ${scheme}// URI takes none of; a Unix socket is nbd+unix:///export?socket=path`);
    const port = url.port ? Number(url.port) : NBD_PORT;
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    return { host, port, exportName };
  }
  throw bad(text, `uses ${scheme}//, which is not an NBD scheme (${FORMS})`);
}

/**
 * The name qemu gives an NBD export it opened, whichever spelling named it
 * (its refresh_filename, what `qemu-img info` prints as the image):
 * `nbd://HOST:PORT[/EXPORT]`, the port always written (10809 where the URI
 * named none), or `nbd+unix://[/EXPORT]?socket=PATH`. With `exportNamed`
 * (an `export` option given, as in a `json:` name, even an empty one) the
 * slash is written before an empty name too, as qemu writes it; a URI's
 * empty path names none.
 *
 * @example
 * ```ts
 * qemuNbdFilename(parseNbdUri('nbd:unix:/tmp/s:exportname=vm')); // 'nbd+unix:///vm?socket=/tmp/s'
 * qemuNbdFilename(parseNbdUri('nbd://localhost/'));              // 'nbd://localhost:10809'
 * ```
 */
export function qemuNbdFilename(address: NbdAddress, exportNamed = false): string {
  const name = address.exportName;
  const path = name || exportNamed ? `/${name}` : '';
  if ('socket' in address) return `nbd+unix://${path}?socket=${address.socket}`;
  return `nbd://${address.host}:${address.port}${path}`;
}
