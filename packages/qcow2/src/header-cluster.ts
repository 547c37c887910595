/**
 * Cluster 0 as qemu lays it out (spec: "Header", "Header extensions"):
 * the header fields, the extensions (always on version 3; on version 2
 * only when there are any), then the backing file name. The one layout
 * every writer of cluster 0 uses: create, the streaming writer, amend and
 * a backing file change.
 */
import { utf8Encode } from '@img/block';
import { serializeHeader, type Qcow2Header } from './header.js';
import { serializeExtensions, type HeaderExtension } from './extensions.js';

/** Bytes cluster 0 needs for `h`, `extensions` and the backing file name. */
export function headerClusterBytes(h: Qcow2Header, extensions: readonly HeaderExtension[], backingName: string | undefined): number {
  return layout(h, extensions, backingName).end;
}

function layout(h: Qcow2Header, extensions: readonly HeaderExtension[], backingName: string | undefined): { exts: Uint8Array; name: Uint8Array; end: number } {
  const name = backingName === undefined ? new Uint8Array(0) : utf8Encode(backingName);
  const exts = h.version >= 3 || extensions.length ? serializeExtensions(extensions) : new Uint8Array(0);
  return { exts, name, end: h.headerLength + exts.length + name.length };
}

/**
 * Lays out cluster 0 and sets the header's backing_file_offset and
 * backing_file_size to match. Answers `size` bytes (at least the layout's
 * own length): the tail past the layout is zeros, so that no stale bytes
 * of a longer old layout look like extensions.
 */
export function layoutHeaderCluster(h: Qcow2Header, extensions: readonly HeaderExtension[], backingName: string | undefined, size = 0): Uint8Array {
  const { exts, name, end } = layout(h, extensions, backingName);
  h.backingFileOffset = name.length ? h.headerLength + exts.length : 0;
  h.backingFileSize = name.length;
  const out = new Uint8Array(Math.max(end, size));
  out.set(serializeHeader(h), 0);
  out.set(exts, h.headerLength);
  out.set(name, h.backingFileOffset);
  return out;
}
