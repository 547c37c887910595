#!/usr/bin/env node
// The install-time fallback for the native helper: builds
// build/Release/img_seek.node with node-gyp where no prebuilt binary in
// prebuilds/ fits this machine (a platform we do not prebuild for, or a
// checkout without prebuilds). A prebuild that loads here makes it a no-op:
// no compiler is needed, and pnpm's blocked scripts or
// `npm --ignore-scripts` lose nothing. `npm install --build-from-source`
// (npm_config_build_from_source=true) compiles anyway.
//
// Optional: on a machine without a compiler, node-gyp or Node's headers it
// prints one notice and exits 0, and @img/block runs its pure JavaScript
// paths (nativeStatus() in @img/block/node says so).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { packageRoot, prebuildPath, readBindingGyp, runtimeLibc } from './targets.mjs';

if (process.platform === 'win32' || process.env.IMG_NO_NATIVE) {
  process.exit(0);
}

const { name } = readBindingGyp();
const fromSource = /^(1|true)$/i.test(process.env.npm_config_build_from_source ?? '') || process.env.IMG_BUILD_FROM_SOURCE === '1';
if (!fromSource) {
  const libc = runtimeLibc();
  for (const rel of [prebuildPath(name, process.platform, process.arch, libc), prebuildPath(name, process.platform, process.arch, undefined)]) {
    const file = join(packageRoot, rel);
    if (!existsSync(file)) continue;
    try {
      const m = { exports: {} };
      process.dlopen(m, file);
      if (typeof m.exports.seekRanges === 'function') process.exit(0);
    } catch {
      // Present but not loadable here (an older kernel's C library?): build from source.
    }
  }
}

const args = ['rebuild'];
// Distribution-packaged Node (Debian) ships its headers in <prefix>/include/node;
// point node-gyp there instead of letting it try to download them.
const prefixes = [process.config?.variables?.node_prefix, dirname(dirname(process.execPath))];
const prefix = prefixes.find((p) => p && existsSync(join(p, 'include', 'node', 'node_api.h')));
if (!process.env.npm_config_nodedir && prefix) args.push(`--nodedir=${prefix}`);
const result = spawnSync('node-gyp', args, { cwd: packageRoot, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', shell: false });
if (result.status !== 0) {
  const why = result.error
    ? result.error.message
    : (result.stderr ?? '')
        .split('\n')
        .filter((l) => /error|ERR!/.test(l))
        .slice(0, 3)
        .join('; ');
  console.warn(`@img/block: optional native helper (SEEK_DATA/SEEK_HOLE, image locks) not built; raw holes will be found by reading. ${why}`);
}
