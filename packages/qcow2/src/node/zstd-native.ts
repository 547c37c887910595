/**
 * Where Node finds its zstd encoders: the optional native addon
 * `@toondepauw/node-zstd` (its per-platform binaries first) and libzstd in
 * WebAssembly, for this thread and the worker pool's. Node-only.
 */
import { createRequire } from 'node:module';
import { ZSTD_LEVEL } from '../codecs.js';
import { copyZstdFrame } from '../compression.js';

/** The native addon's package; its prebuilt binaries come as one optional package per platform. */
const NATIVE_ZSTD = '@toondepauw/node-zstd';

/**
 * The addon's platform packages that may hold a binary for this process,
 * most likely first (napi-rs names). Loading one directly skips the
 * addon's own loader, which asks process.report whether libc is musl
 * (tens of milliseconds in every thread that loads it).
 */
function nativeZstdPlatforms(): string[] {
  const { platform, arch } = process;
  if (platform === 'linux') return [`${NATIVE_ZSTD}-linux-${arch}-gnu`, `${NATIVE_ZSTD}-linux-${arch}-musl`];
  if (platform === 'win32') return [`${NATIVE_ZSTD}-win32-${arch}-msvc`];
  return [`${NATIVE_ZSTD}-${platform}-${arch}`];
}

/**
 * Where the zstd encoders live, for this thread and the worker pool's:
 * `native`, the native addon's modules to try in order (its platform
 * binaries, then its own loader), and `wasm`, libzstd in WebAssembly ('' if
 * absent). Resolved from this module or, where a bundler moved it, from
 * wherever `@img/qcow2` itself resolves. `IMG_ZSTD=wasm` skips the native
 * addon (tests, comparisons).
 */
export function zstdModulePaths(): { native: string[]; wasm: string } {
  const bases = [import.meta.url];
  try {
    bases.push(createRequire(import.meta.url).resolve('@img/qcow2/package.json'));
  } catch {
    // Not installed as a package (tests run from src): the first base is enough.
  }
  const find = (name: string, from = bases): string => {
    for (const base of from) {
      try {
        return createRequire(base).resolve(name);
      } catch {
        // Try the next base.
      }
    }
    return '';
  };
  const wasm = find('@bokuweb/zstd-wasm');
  const main = process.env.IMG_ZSTD === 'wasm' ? '' : find(NATIVE_ZSTD);
  // pnpm links the platform packages next to the addon, not next to us: resolve them from there.
  const native = main
    ? [
        ...nativeZstdPlatforms()
          .map((name) => find(name, [main]))
          .filter(Boolean),
        main,
      ]
    : [];
  return { native, wasm };
}

interface NativeZstd {
  Encoder: new (level: number) => { encodeSync(data: Uint8Array): Uint8Array };
}

/** The native addon's encoder, or undefined where it is not installed or does not load on this platform. */
export function loadNativeZstd(paths: readonly string[]): ((input: Uint8Array) => Uint8Array) | undefined {
  for (const path of paths) {
    try {
      // Two statements: `new (require(path)).Encoder()` loses its parentheses in tsc 7's output.
      const addon = createRequire(import.meta.url)(path) as NativeZstd;
      const encoder = new addon.Encoder(ZSTD_LEVEL);
      return (input) => {
        const frame = encoder.encodeSync(input);
        const out = new Uint8Array(frame.length + 4);
        return out.subarray(0, copyZstdFrame(frame, input.length, out, 0));
      };
    } catch {
      // A binary for another libc, or none: the next candidate.
    }
  }
  return undefined;
}
