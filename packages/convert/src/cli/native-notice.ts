/**
 * What the commands say about @img/block's native helper: one warning line
 * when a sparse raw input is read in full for want of it, and the report of
 * `img --version --verbose` and `img doctor`. The library only exposes the
 * state (`nativeStatus()`); printing is the command's business.
 */
import { nativeStatus, type NativeStatus } from '@img/block/node';
import type { Io } from './common.js';

/** The outputs that have had the warning: once per process (per Io in tests that run commands in-process). */
const warned = new WeakSet<Io>();

/**
 * Warns, once, that a raw input file will be read in full: without the
 * helper, SEEK_DATA/SEEK_HOLE are out of reach, so every byte of a sparse
 * raw file is read and zero-scanned, and qemu's image locks are not taken.
 * Nothing is said where the helper is loaded, for other formats (their
 * metadata maps the holes) or for standard input (read in full anyway).
 */
export function warnIfRawReadInFull(io: Io, prog: string, format: string, path: string): void {
  if (format !== 'raw' || path === '-' || warned.has(io)) return;
  const status = nativeStatus();
  if (status.features.seekData) return;
  warned.add(io);
  io.stderr(`${prog}: native helper not loaded (${status.reason ?? 'it has no SEEK_DATA support'}); sparse raw files are read in full and qemu image locks are not taken\n`);
}

function sourceLine(s: NativeStatus): string {
  if (!s.loaded) return `native helper: not loaded (${s.reason ?? 'unknown'})`;
  const from = s.source === 'prebuild' ? 'prebuilt binary shipped in @img/block' : 'built from source at install';
  return `native helper: loaded, ${from}: ${s.path}`;
}

/** The lines `img --version --verbose` and `img doctor` print about the helper and its features. */
export function nativeReport(): string {
  const s = nativeStatus();
  const f = s.features;
  const on = (active: boolean, yes: string, no: string) => (active ? `active (${yes})` : `inactive: ${no}`);
  const lines = [
    `node: ${process.version} ${s.target}`,
    sourceLine(s),
    `  seek data/holes (SEEK_DATA/SEEK_HOLE): ${on(f.seekData, 'raw holes are skipped, not read', 'sparse raw files are read in full and zero-scanned')}`,
    `  image locks: ${f.locks === 'none' ? 'inactive: qemu image locks are not taken (only checked through /proc/locks on Linux)' : `active (${f.locks === 'ofd' ? 'OFD locks, F_OFD_SETLK' : 'classic POSIX locks, F_SETLK'})`}`,
    `  page-cache reads (RWF_NOWAIT): ${on(f.nowait, 'cached reads skip the thread pool', 'every read goes through the thread pool')}`,
    `  copy_file_range: ${on(f.copyFileRange, 'the kernel copies raw runs', s.loaded ? 'not in this build of the helper' : 'copies go through user space')}`,
    `  hole punching (fallocate): ${on(f.punchHole, "zeros and discards deallocate a raw file's blocks", s.loaded ? 'not in this build of the helper' : 'zeros are written as zeros')}`,
    `  batch inflate: ${on(f.inflate, 'compressed grains and clusters are inflated on every core', s.loaded ? (process.env.IMG_NATIVE_INFLATE === '0' ? 'IMG_NATIVE_INFLATE=0 is set' : 'no zlib found in this process, or not in this build of the helper') : 'node:zlib inflates one block at a time')}`,
    `  LUKS key derivation (PBKDF2 on OpenSSL's SHA functions): ${on(f.pbkdf2.length > 0, `${f.pbkdf2.join(', ')}, output blocks side by side`, s.loaded ? (process.env.IMG_NATIVE_PBKDF2 === '0' ? 'IMG_NATIVE_PBKDF2=0 is set' : 'no OpenSSL SHA functions found in this process or on this system') : "node:crypto's PBKDF2")}`,
    `  zstd clusters (system libzstd): ${on(f.zstd !== undefined, `libzstd ${f.zstd}, on every core without a copy`, s.loaded ? (process.env.IMG_NATIVE_ZSTD === '0' ? 'IMG_NATIVE_ZSTD=0 is set' : 'no libzstd.so.1 (1.4 or newer) found on this system') : 'zstd clusters are compressed in worker threads')}`,
  ];
  if (s.tried.length > 0) lines.push(`  looked at: ${s.tried.join('; ')}`);
  return lines.join('\n') + '\n';
}
