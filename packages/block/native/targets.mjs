// What native/build.mjs and native/prebuild.mjs share: the addon's name and
// sources as binding.gyp lists them, where a prebuilt binary for a platform
// lives in the package, and which C library this Node runs on.
//
// Prebuilds follow the prebuildify / node-gyp-build layout:
//   prebuilds/<platform>-<arch>/<addon>.napi[.glibc|.musl].node
// N-API keeps one binary good for every Node >= 20 of that platform. The
// loader (src/node/native-loader.ts) computes the same names; a test pins
// the two against each other.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package's root folder (this file lives in <root>/native/). */
export const packageRoot = fileURLToPath(new URL('..', import.meta.url));

/**
 * The addon target of binding.gyp: `{ name, sources, defines, cflags }`.
 * One N-API module; every C file it lists is compiled into it.
 */
export function readBindingGyp(root = packageRoot) {
  // gyp files are Python literals; ours is plain JSON apart from # comments.
  const text = readFileSync(join(root, 'binding.gyp'), 'utf8')
    .split('\n')
    .filter((line) => !line.trimStart().startsWith('#'))
    .join('\n');
  const gyp = JSON.parse(text);
  const targets = gyp.targets ?? [];
  if (targets.length !== 1) throw new Error(`binding.gyp: expected one target (one N-API module), found ${targets.length}`);
  const [t] = targets;
  return { name: t.target_name, sources: t.sources ?? [], defines: t.defines ?? [], cflags: t.cflags ?? [] };
}

/** `prebuilds/linux-x64/img_seek.napi.glibc.node`; no libc tag off Linux. */
export function prebuildPath(name, platform, arch, libc) {
  return `prebuilds/${platform}-${arch}/${name}.napi${libc ? `.${libc}` : ''}.node`;
}

/**
 * The C library of this process on Linux: `glibc` or `musl` (undefined
 * elsewhere). What the process mapped says it exactly and costs well under a
 * millisecond; Node's diagnostic report (which names a glibc version only
 * when it runs on glibc) answers where /proc is not readable.
 */
export function runtimeLibc() {
  if (process.platform !== 'linux') return undefined;
  try {
    const maps = readFileSync('/proc/self/maps', 'latin1');
    if (/\/ld-musl-[^/\n]*\.so/.test(maps)) return 'musl';
    if (/\/libc\.so\.6\b/.test(maps)) return 'glibc';
  } catch {
    // No /proc: ask the report.
  }
  const header = process.report?.getReport?.()?.header;
  return header?.glibcVersionRuntime ? 'glibc' : 'musl';
}
