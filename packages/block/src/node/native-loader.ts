/**
 * Finds and loads the native helper of @img/block, and says what it found.
 *
 * Where it looks, in order (the first that loads wins):
 * 1. `prebuilds/<platform>-<arch>/img_seek.napi.<glibc|musl>.node`, shipped
 *    in the package (built at pack time by native/prebuild.mjs), then the
 *    same name without a libc tag (the prebuildify / node-gyp-build layout);
 * 2. `build/Release/img_seek.node`, a from-source build (native/build.mjs at
 *    install, where install scripts run and a compiler exists). A build
 *    made after the prebuild goes first: it was asked for
 *    (`npm install --build-from-source`, a developer's `node-gyp rebuild`
 *    after changing the C), and a tarball's files all carry npm's 1985 date;
 * 3. nothing: the pure JavaScript paths (raw files read in full and
 *    zero-scanned, image locks only checked through /proc/locks).
 *
 * `IMG_NO_NATIVE=1` skips all three. The loader never throws: a binary that
 * does not load is a reason in the status, and the next place is tried.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The addon's target name in binding.gyp. */
export const NATIVE_ADDON_NAME = 'img_seek';

/** What the loaded module exports (see native/*.c); every member is optional in helpers built before it existed. */
export type NativeExports = Record<string, unknown>;

/** Which of the helper's abilities this process has. */
export interface NativeFeatures {
  /** SEEK_DATA/SEEK_HOLE: a raw file's holes are found without reading them. */
  seekData: boolean;
  /** preadv2/pwritev2 with RWF_NOWAIT: page-cache hits served on the calling thread. */
  nowait: boolean;
  /** qemu-compatible byte-range locks: `ofd` (per open file), `posix` (per process), or `none` (not taken). */
  locks: 'ofd' | 'posix' | 'none';
  /** The kernel-side copy loop (copy_file_range), where the helper has one. */
  copyFileRange: boolean;
  /** Hole punching (fallocate PUNCH_HOLE): zeros written with unmap allowed and discards deallocate a raw file's blocks, as qemu's do. */
  punchHole: boolean;
  /** Compressed blocks (VMDK grains, qcow2 clusters) inflated in batches on the thread pool, with the process's zlib (IMG_NATIVE_INFLATE=0 turns it off). */
  inflate: boolean;
  /**
   * libzstd's version ("1.5.4") where the helper found the system's libzstd
   * and compresses zstd clusters with it on the thread pool; undefined
   * where it did not (IMG_NATIVE_ZSTD=0 turns it off).
   */
  zstd?: string;
  /**
   * The hashes PBKDF2 runs with in the helper (OpenSSL's SHA block
   * functions found at run time; LUKS key slots open about four times
   * faster than through node:crypto): some of sha1, sha256, sha384, sha512,
   * or none (IMG_NATIVE_PBKDF2=0 turns it off).
   */
  pbkdf2: string[];
}

/** What {@link nativeStatus} reports. */
export interface NativeStatus {
  /** Whether a native helper is loaded. */
  loaded: boolean;
  /** Where it came from: the package's prebuilt binary, a from-source build, or none. */
  source: 'prebuild' | 'build' | 'none';
  /** The loaded binary's path. */
  path?: string;
  /** Why no helper is loaded, in a few words ("IMG_NO_NATIVE=1 is set", "no prebuilt binary for win32-x64 ..."). */
  reason?: string;
  /** The prebuild this process asks for: `linux-x64-glibc`, `darwin-arm64`. */
  target: string;
  /** Each place tried before the one that loaded (or all of them), with why it did not. */
  tried: string[];
  features: NativeFeatures;
}

/**
 * The prebuilt binary's path inside the package for a platform, as
 * native/prebuild.mjs writes it: `prebuilds/linux-x64/img_seek.napi.glibc.node`.
 */
export function prebuildPath(platform: string, arch: string, libc: 'glibc' | 'musl' | undefined): string {
  return `prebuilds/${platform}-${arch}/${NATIVE_ADDON_NAME}.napi${libc ? `.${libc}` : ''}.node`;
}

/**
 * The program interpreter (the dynamic loader, ELF's PT_INTERP) that the
 * 64-bit little-endian ELF file at `path` names, from its first 4 KiB;
 * undefined for anything else (another class or byte order, a static
 * binary, a header past 4 KiB, a file that cannot be read).
 */
export function elfInterpreter(path: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const head = Buffer.alloc(4096);
    const n = readSync(fd, head, 0, head.length, 0);
    // "\x7fELF", ELFCLASS64, ELFDATA2LSB.
    if (n < 64 || head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return undefined;
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    for (let i = 0; i < phnum; i++) {
      const at = phoff + i * phentsize;
      if (phentsize < 56 || at + 56 > n) return undefined;
      if (head.readUInt32LE(at) !== 3) continue; // PT_INTERP
      const offset = Number(head.readBigUInt64LE(at + 8)); // p_offset
      const size = Number(head.readBigUInt64LE(at + 32)); // p_filesz, with the closing NUL
      return size > 1 && offset + size <= n ? head.toString('latin1', offset, offset + size - 1) : undefined;
    }
    return undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * This process's C library on Linux (undefined elsewhere). The dynamic
 * loader Node's executable names says it from 4 KiB of the file (0.05 ms);
 * failing that, the libraries the process mapped do (reading
 * /proc/self/maps: 1.3-1.6 ms on a 2-vCPU VM); where /proc cannot be read,
 * Node's diagnostic report (its header names a glibc version only on
 * glibc), at ~4 ms.
 */
export function runtimeLibc(): 'glibc' | 'musl' | undefined {
  if (process.platform !== 'linux') return undefined;
  const loader = elfInterpreter(process.execPath);
  if (loader !== undefined && /\/ld-musl-[^/]*\.so/.test(loader)) return 'musl';
  if (loader !== undefined && /\/ld-linux[^/]*\.so/.test(loader)) return 'glibc';
  try {
    const maps = readFileSync('/proc/self/maps', 'latin1');
    if (/\/ld-musl-[^/\n]*\.so/.test(maps)) return 'musl';
    if (/\/libc\.so\.6\b/.test(maps)) return 'glibc';
  } catch {
    // No /proc: ask the report.
  }
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return header?.glibcVersionRuntime ? 'glibc' : 'musl';
}

/** Where to look, in order, relative to the package root. */
export function nativeCandidates(platform: string, arch: string, libc: 'glibc' | 'musl' | undefined): { source: 'prebuild' | 'build'; path: string }[] {
  const out: { source: 'prebuild' | 'build'; path: string }[] = [];
  if (libc) out.push({ source: 'prebuild', path: prebuildPath(platform, arch, libc) });
  out.push({ source: 'prebuild', path: prebuildPath(platform, arch, undefined) });
  out.push({ source: 'build', path: `build/Release/${NATIVE_ADDON_NAME}.node` });
  return out;
}

/** What {@link loadNativeFrom} found: the module's exports (if one loaded) and the status without features. */
export interface NativeLoad {
  exports: NativeExports | undefined;
  status: Omit<NativeStatus, 'features'>;
}

let loaded: NativeLoad | undefined;
let features: NativeFeatures | undefined;

/** The first line of a load error, without the absolute path node repeats in it. */
function shortError(e: unknown, file: string): string {
  const text = (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
  return text.replace(`${file}: `, '').trim() || 'unknown error';
}

/**
 * Looks for the helper in the package rooted at `root` (see the order at
 * the top of this file). Exported for tests, which point it at a package
 * folder of their own; everything else calls {@link nativeExports}.
 */
export function loadNativeFrom(root: URL, options: { platform?: string; arch?: string; libc?: 'glibc' | 'musl' | undefined; disabled?: boolean } = {}): NativeLoad {
  const platform = options.platform ?? process.platform;
  const arch = options.arch ?? process.arch;
  const libc = 'libc' in options ? options.libc : runtimeLibc();
  const target = `${platform}-${arch}${libc ? `-${libc}` : ''}`;
  if (options.disabled ?? Boolean(process.env.IMG_NO_NATIVE)) {
    return { exports: undefined, status: { loaded: false, source: 'none', reason: 'IMG_NO_NATIVE=1 is set', target, tried: [] } };
  }
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  let firstFailure: string | undefined;
  for (const c of newestBuildFirst(root, nativeCandidates(platform, arch, libc))) {
    const file = fileURLToPath(new URL(c.path, root));
    if (!existsSync(file)) {
      tried.push(`${c.path}: absent`);
      continue;
    }
    try {
      const exports = require(file) as NativeExports;
      if (typeof exports.seekRanges !== 'function') throw new Error('it does not export seekRanges');
      return { exports, status: { loaded: true, source: c.source, path: file, target, tried } };
    } catch (e) {
      const why = shortError(e, file);
      tried.push(`${c.path}: ${why}`);
      firstFailure ??= `${c.path} did not load: ${why}`;
    }
  }
  const reason = firstFailure ?? `no prebuilt binary for ${target} and no build from source`;
  return { exports: undefined, status: { loaded: false, source: 'none', reason, target, tried } };
}

/** The modification time of `path` under `root` in ms, or undefined where there is no such file. */
function mtimeOf(root: URL, path: string): number | undefined {
  try {
    return statSync(new URL(path, root)).mtimeMs;
  } catch {
    return undefined;
  }
}

/** The candidates, with a from-source build moved to the front when it is newer than every prebuild present. */
function newestBuildFirst(root: URL, candidates: { source: 'prebuild' | 'build'; path: string }[]): { source: 'prebuild' | 'build'; path: string }[] {
  const build = candidates.find((c) => c.source === 'build');
  const buildTime = build && mtimeOf(root, build.path);
  if (buildTime === undefined) return candidates;
  const prebuildTimes = candidates.filter((c) => c.source === 'prebuild').map((c) => mtimeOf(root, c.path) ?? -Infinity);
  if (!prebuildTimes.every((t) => buildTime > t)) return candidates;
  return [build!, ...candidates.filter((c) => c !== build)];
}

/** The loaded helper's exports, loading it on first use; undefined where none loads. */
export function nativeExports(): NativeExports | undefined {
  // src/node/ and dist/node/ both sit two folders below the package root.
  loaded ??= loadNativeFrom(new URL('../../', import.meta.url));
  return loaded.exports;
}

/** Asks the helper which lock calls the kernel takes: it needs a descriptor, any file's will do (its own binary's). */
function lockFeature(exports: NativeExports, path: string): NativeFeatures['locks'] {
  if (typeof exports.lockByte !== 'function' || typeof exports.lockStyle !== 'function') return 'none';
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    return (exports.lockStyle as (fd: number) => 'ofd' | 'posix')(fd) === 'ofd' ? 'ofd' : 'posix';
  } catch {
    return 'none';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Whether the native helper is loaded, where from, why not, and which of
 * its features this process has. Library code never prints; a command-line
 * tool shows this (`img --version --verbose`, `img doctor`) and warns when
 * it matters (a sparse raw input read in full).
 *
 * @example
 * ```ts
 * import { nativeStatus } from '@img/block/node';
 * const s = nativeStatus();
 * if (!s.features.seekData) console.warn(`raw holes are read: ${s.reason}`);
 * ```
 */
export function nativeStatus(): NativeStatus {
  const exports = nativeExports();
  const status = loaded!.status;
  if (features === undefined) {
    const fn = (name: string) => typeof exports?.[name] === 'function';
    features = {
      seekData: fn('seekRanges'),
      nowait: fn('nowait'),
      locks: exports && status.path ? lockFeature(exports, status.path) : 'none',
      // The copy loop's entry points are named copy* (native/copy.c).
      copyFileRange: exports !== undefined && Object.keys(exports).some((k) => /^copy/i.test(k) && fn(k)),
      punchHole: fn('punchHole'),
      inflate: process.env.IMG_NATIVE_INFLATE !== '0' && fn('inflateInto') && fn('inflateAvailable') && (exports!.inflateAvailable as () => boolean)() === true,
      pbkdf2: process.env.IMG_NATIVE_PBKDF2 !== '0' && fn('pbkdf2') && fn('pbkdf2Hashes') ? (exports!.pbkdf2Hashes as () => string[])() : [],
    };
    const zstd = process.env.IMG_NATIVE_ZSTD !== '0' && fn('zstdClusters') && fn('zstdVersion') ? (exports!.zstdVersion as () => number)() : 0;
    // 10504 is 1.5.4.
    if (zstd > 0) features.zstd = `${Math.floor(zstd / 10000)}.${Math.floor(zstd / 100) % 100}.${zstd % 100}`;
  }
  return { ...status, tried: [...status.tried], features: { ...features, pbkdf2: [...features.pbkdf2] } };
}
