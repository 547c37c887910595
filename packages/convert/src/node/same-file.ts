/**
 * The same-file guard: a command never writes a file it also reads.
 *
 * Files are compared by identity (device and inode, after following
 * links), not by name, so a symlink, a hard link, `./x` against `x`, or a
 * backing file that names the output all count as the same file. The
 * files an open image reads are collected as they are opened: the image
 * itself and everything its format opens through the resolver (backing
 * files, parents, external data files).
 */
import { fstatSync, statSync } from 'node:fs';
import { ImageError, sameFileError, type Disk, type Resolver, type Storage } from '@img/block';
import { FileStorage } from '@img/block/node';

/** A file as the kernel knows it. */
export interface FileIdentity {
  /** The name it was reached by (for messages). */
  path: string;
  /** `dev:ino`, exact even where inode numbers pass 2^53. */
  key: string;
}

function keyOf(st: { dev: bigint; ino: bigint }): string {
  return `${st.dev}:${st.ino}`;
}

/**
 * The identity of the file `path` names (links followed), or undefined if there is none yet. A path that cannot be
 * looked up (EACCES on a directory, ENOTDIR, ELOOP) is undefined too: it names no file this process opens by that
 * name, and opening or creating it reports the failure as an ERR_IMG_IO naming the path (not a raw stat error).
 */
export function identityOfPath(path: string): FileIdentity | undefined {
  let st;
  try {
    st = statSync(path, { bigint: true, throwIfNoEntry: false });
  } catch {
    return undefined;
  }
  return st ? { path, key: keyOf(st) } : undefined;
}

/** The identity of an open file storage; undefined for storages that are not local files. */
export function identityOfStorage(storage: Storage): FileIdentity | undefined {
  if (!(storage instanceof FileStorage)) return undefined;
  try {
    return { path: storage.name, key: keyOf(fstatSync(storage.fd, { bigint: true })) };
  } catch {
    return undefined;
  }
}

/** The identity of an open file descriptor (stdin, stdout), if it is a regular file. */
export function identityOfFd(fd: number, path: string): FileIdentity | undefined {
  try {
    const st = fstatSync(fd, { bigint: true });
    return st.isFile() ? { path, key: keyOf(st) } : undefined;
  } catch {
    return undefined;
  }
}

const opened = new WeakMap<Disk, Storage[]>();

/**
 * Wraps a resolver so that every storage it opens is recorded in `into`:
 * the files a chain reads are known whatever the format calls them.
 */
export function recordingResolver(inner: Resolver, into: Storage[]): Resolver {
  return async (request) => {
    const storage = await inner(request);
    into.push(storage);
    return storage;
  };
}

/** Remembers which storages `disk` was opened over (its own first). */
export function rememberFiles(disk: Disk, storages: Storage[]): void {
  opened.set(disk, storages);
}

/** The files an image opened through openImageFile reads: itself first, then its chain. */
export function filesOf(disk: Disk): FileIdentity[] {
  const storages = opened.get(disk) ?? [disk.storage];
  return storages.map(identityOfStorage).filter((x): x is FileIdentity => x !== undefined);
}

/**
 * Throws ERR_IMG_SAME_FILE if `written` is one of `read`. `role` names
 * what the command would write ("output", "backing file", ...).
 */
export function assertNotRead(written: FileIdentity | undefined, read: readonly FileIdentity[], role: string): void {
  if (!written) return;
  const hit = read.find((r) => r.key === written.key);
  if (hit) throw sameFileError(written.path, hit.path, role);
}

/**
 * Throws ERR_IMG_SAME_FILE if any file of an image's chain appears twice
 * (a backing file that is a link to the image, or to another member):
 * writing one of them would change what the chain reads.
 */
export function assertChainDistinct(disk: Disk): void {
  const files = filesOf(disk);
  for (let i = 0; i < files.length; i++) {
    for (let j = i + 1; j < files.length; j++) {
      if (files[i]!.key === files[j]!.key) throw sameFileError(files[i]!.path, files[j]!.path, i === 0 ? 'image' : 'backing file');
    }
  }
}

/**
 * A command's view of two opens of one file in this process: FileStorage
 * refuses the second open in the SDK's words ("already open for writing in
 * this process"), but inside one command both opens are the command's own,
 * so the CLI says it as the guard above does ("refusing to write the image:
 * it is also read by this command"). Other errors are answered as they are.
 */
export function asCommandError(e: unknown): unknown {
  if (!ImageError.isInstance(e) || e.code !== 'ERR_IMG_SAME_FILE' || e.data.field !== 'open') return e;
  const { file, actual, expected } = e.data;
  if (typeof file !== 'string' || typeof actual !== 'string') return e;
  // The open that writes is the one named first.
  return expected === 'write' ? sameFileError(file, actual, 'image') : sameFileError(actual, file, 'image');
}
