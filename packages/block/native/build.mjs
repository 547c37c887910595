#!/usr/bin/env node
// Builds the optional SEEK_DATA/SEEK_HOLE helper (build/Release/img_seek.node)
// with node-gyp. Optional: on a machine without a compiler, without
// node-gyp or without Node's headers, it prints one notice and exits 0, and
// @img/block reads raw files whole (zero-scanning them) instead.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
if (process.platform === 'win32' || process.env.IMG_NO_NATIVE) {
  process.exit(0);
}
const args = ['rebuild'];
// Distribution-packaged Node (Debian) ships its headers in <prefix>/include/node;
// point node-gyp there instead of letting it try to download them.
const prefixes = [process.config?.variables?.node_prefix, dirname(dirname(process.execPath))];
const prefix = prefixes.find((p) => p && existsSync(join(p, 'include', 'node', 'node_api.h')));
if (!process.env.npm_config_nodedir && prefix) args.push(`--nodedir=${prefix}`);
const result = spawnSync('node-gyp', args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', shell: false });
if (result.status !== 0) {
  const why = result.error ? result.error.message : (result.stderr ?? '').split('\n').filter((l) => /error|ERR!/.test(l)).slice(0, 3).join('; ');
  console.warn(`@img/block: optional native helper (SEEK_DATA/SEEK_HOLE) not built; raw holes will be found by reading. ${why}`);
}
