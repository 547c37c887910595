/**
 * NBD URIs (the NBD project's URI format, as qemu-img and nbdinfo take
 * them): `nbd://host[:port]/[export]` and
 * `nbd+unix:///[export]?socket=PATH`.
 */
import { invalidArg } from '@img/block';

/** Where an NBD URI points. */
export type NbdAddress = { socket: string; exportName: string } | { host: string; port: number; exportName: string };

/** Is `text` an NBD URI (rather than a file name)? */
export function isNbdUri(text: string): boolean {
  return /^nbd(\+unix|\+tcp)?:\/\//i.test(text);
}

/** Parses an NBD URI; ERR_IMG_INVALID_ARG naming what is wrong. */
export function parseNbdUri(text: string): NbdAddress {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw invalidArg('nbd', `"${text}" is not an NBD URI (nbd://host[:port]/export or nbd+unix:///export?socket=path)`, { field: 'uri' });
  }
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  const scheme = url.protocol.toLowerCase();
  if (scheme === 'nbd+unix:') {
    const socket = url.searchParams.get('socket');
    if (!socket) throw invalidArg('nbd', `"${text}" names no socket (nbd+unix:///export?socket=path)`, { field: 'uri' });
    if (url.host) throw invalidArg('nbd', `"${text}": an nbd+unix URI has no host`, { field: 'uri' });
    return { socket, exportName };
  }
  if (scheme === 'nbd:' || scheme === 'nbd+tcp:') {
    if (!url.hostname) throw invalidArg('nbd', `"${text}" names no host`, { field: 'uri' });
    const port = url.port ? Number(url.port) : 10809;
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    return { host, port, exportName };
  }
  throw invalidArg('nbd', `"${text}": ${scheme}// is not an NBD scheme (TLS schemes nbds:// are not supported)`, { field: 'uri' });
}
