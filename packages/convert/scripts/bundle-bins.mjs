#!/usr/bin/env node
// Bundles the two commands into one CommonJS file each and puts a small
// launcher in place of each command's executable (dist/bin/img-convert.js,
// dist/bin/img.js), so that start-up reads one file instead of ~80 modules
// and, on Node versions without a compile cache of their own, compiles it
// from V8's code cache instead of from source:
// - dist/bin/<cmd>.bundle.cjs: every module of src/bin/<cmd>-main.ts (as tsc
//   wrote it), which exports main(). Node 20's ESM loader pays per module
//   (resolve, read, compile, link), which made start-up most of a small
//   conversion; one file per command beats chunks split at each import()
//   (more files cost more than the code they leave out), and minified
//   whitespace saves ~2 ms of parsing.
// - dist/bin/<cmd>.bundle.cjs.cache: V8's code cache of that bundle, made
//   here by running the command once on a small conversion (so it holds the
//   functions a conversion compiles, not only the top level), behind a
//   header with the bundle's length and CRC-32: V8 itself only checks the
//   length of the source, and a bundle edited in place must not run code
//   compiled from the old one.
// - dist/bin/<cmd>.js: the launcher, a CommonJS file (dist/bin/package.json
//   says so) so that Node starts it without initialising its ES module
//   loader. On Node >= 22.1 it turns on Node's own compile cache and
//   requires the bundle; otherwise, where zlib has crc32 (Node >= 20.15), it
//   compiles the bundle with vm.Script and the cache and hands it the
//   launcher's import() (see __imgImport); anywhere else (or with
//   IMG_CODE_CACHE=0) it requires the bundle.
//   Measured on Node 20 (`perf stat -r 20 node dist/bin/img.js --version`):
//   50 ms with one ESM bundle, 35-38 ms with an ES module launcher and the
//   cache, 30 ms with this one; bare `node -e 0` takes 20-22 ms.
//
// Bundled code keeps the meaning of its own location:
// - `import.meta.url` in a module of any package becomes that module's URL
//   in its installed package (found at run time through the package's
//   `package.json` export), so `createRequire(import.meta.url)` still finds
//   a native addon or a dependency next to the package that asked for it;
// - a dynamic `import('pkg')` of a third-party package from a bundled module
//   is resolved at run time from the importing package's location and
//   imported from there, unbundled: such imports are the optional or
//   late-loaded ones (zstd in WebAssembly, native codecs) and may carry
//   files of their own; another form (require(), a computed name) and any
//   other `import.meta` property fail the build (nothing uses them yet).
// Static imports of third-party packages (fzstd, uuid) are bundled.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire, isBuiltin } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const binDir = join(pkgDir, 'dist', 'bin');
// Everything is built beside dist/bin, at the same depth (the bundle finds its package from its own directory, and the
// source map's paths are relative to it), then renamed into place file by file: a command started while the bins are
// rebuilt (a campaign, a test run) reads whole files, the old ones or the new, never a half-written one. A bundle and a
// code cache from different builds do not meet: the launcher checks the cache's CRC of the bundle and compiles from
// source where they differ.
const stageDir = join(pkgDir, 'dist', '.bin-next');
const MARK = '/* img-bundle */';
const OWN_NAME = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')).name;
const ENTRIES = ['img-convert', 'img'];

// tsc does not emit the commands' own files (src/bin/<cmd>.ts, excluded in tsconfig.build.json): their launchers
// below stay in place while tsc rewrites the rest of dist, so a command run during a rebuild still starts.
for (const name of ENTRIES) {
  const file = join(binDir, `${name}-main.js`);
  if (!existsSync(file)) throw new Error(`bundle-bins: ${file} is missing: run tsc first`);
  if (readFileSync(file, 'utf8').includes(MARK)) throw new Error(`bundle-bins: ${file} is already a bundle: run tsc first`);
}

/** The package a file belongs to: the nearest package.json above it that has a name. */
function ownerOf(file) {
  for (let dir = dirname(file); ; dir = dirname(dir)) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      const { name, type } = JSON.parse(readFileSync(pj, 'utf8'));
      if (name) return { dir, name, type };
    }
    if (dirname(dir) === dir) throw new Error(`bundle-bins: no package.json above ${file}`);
  }
}

const posix = (p) => p.split(sep).join('/');

// Run-time helpers, at the top of every bundle (a CommonJS module: `require`
// is the bundle's own). A package's root comes from resolving its own
// "./package.json" export from here: @img/convert by self-reference, the
// others as its dependencies (the resolver follows symbolic links, so a pnpm
// workspace gives the real folder). ES modules are strict: so is the bundle.
const BANNER = `'use strict';
${MARK}
const __imgRoots = new Map();
function __imgModuleUrl(pkg, rel) {
  let root = __imgRoots.get(pkg);
  if (root === undefined) {
    // This package from where its bundle lies (dist/bin has a package.json of its own, which hides the self-reference).
    const pj = pkg === ${JSON.stringify(OWN_NAME)} ? require('node:path').join(__dirname, ${JSON.stringify(posix(relative(binDir, pkgDir)))}, 'package.json') : __imgPackageJson(pkg);
    root = new URL('.', require('node:url').pathToFileURL(pj)).href;
    __imgRoots.set(pkg, root);
  }
  return new URL(rel, root).href;
}
// A dependency's package.json where the resolver finds it: the first folder of its lookup path that holds the
// package, followed through symbolic links. Walked here: the resolver's own route through the package's "exports"
// cost 3-4 ms of every command's start, as much as the rest of the lookup many times over.
function __imgPackageJson(pkg) {
  const { join } = require('node:path');
  const { realpathSync } = require('node:fs');
  for (const dir of require.resolve.paths(pkg) ?? []) {
    try {
      return realpathSync.native(join(dir, pkg, 'package.json'));
    } catch {
      // Not in this folder: the next one.
    }
  }
  return require.resolve(pkg + '/package.json');
}
// Every dynamic import of the bundle goes through this one: the launcher's (written in a file Node loaded
// itself), because Node 20 loses the dynamic import loader of a script compiled from a code cache that another
// process made (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING); a bundle that Node required itself imports on its own.
const __imgImport = typeof __imgDynamicImport === 'function' ? __imgDynamicImport : (specifier) => import(specifier);
function __imgImportFrom(pkg, rel, spec) {
  return __imgImport(require('node:url').pathToFileURL(require('node:module').createRequire(__imgModuleUrl(pkg, rel)).resolve(spec)).href);
}`;

/** The cache file's first bytes: what it is, then the bundle's byte length and CRC-32 (little-endian 32-bit each). */
const CACHE_MAGIC = 'img-v8-code-cache-1\n';

/** The executable of command `name`: loads `<name>.bundle.cjs`, from V8's code cache where it can (see the top of this file). */
const launcher = (name) => `#!/usr/bin/env node
${MARK}
// The ${name} command: starts ${name}.bundle.cjs, every module of the command in one
// file, compiled from V8's code cache (${name}.bundle.cjs.cache) where this Node can.
// A CommonJS file (package.json here): Node starts one without its ES module loader.
// Written by @img/convert's scripts/bundle-bins.mjs.
'use strict';
const { readFileSync, writeFileSync } = require('node:fs');
const nodeModule = require('node:module');
const { join } = require('node:path');
const vm = require('node:vm');

const file = join(__dirname, '${name}.bundle.cjs');
const requireBundle = nodeModule.createRequire(file);
// The bundle's import(), passed in: on Node 20 a script compiled from a code cache made by another process has no
// loader of its own for it (vm.Script's importModuleDynamically does not survive the cache).
const dynamicImport = (specifier) => import(specifier);
const MAGIC = ${JSON.stringify(CACHE_MAGIC)};

/** The cache, if it was made from exactly these bytes of the bundle. */
function cachedData(source, crc32) {
  let cache;
  try {
    cache = readFileSync(file + '.cache');
  } catch {
    return undefined;
  }
  const at = MAGIC.length;
  if (cache.length <= at + 8 || cache.toString('latin1', 0, at) !== MAGIC) return undefined;
  if (cache.readUInt32LE(at) !== source.length || cache.readUInt32LE(at + 4) !== crc32(source)) return undefined;
  return cache.subarray(at + 8);
}

/** Loads the bundle: its exports. */
function load() {
  if (nodeModule.enableCompileCache || process.env.IMG_CODE_CACHE === '0') {
    nodeModule.enableCompileCache?.();
    return requireBundle(file);
  }
  // Only here: node:zlib loads Node's streams, which a command that prints nothing does not otherwise use.
  const { crc32 } = require('node:zlib');
  if (typeof crc32 !== 'function') return requireBundle(file);
  const source = readFileSync(file);
  const data = cachedData(source, crc32);
  // The build checked that the bundle is ASCII: latin1 is its text, and decodes faster than UTF-8.
  const script = new vm.Script('(function (exports, require, module, __filename, __dirname, __imgDynamicImport) {' + source.toString('latin1') + '\\n})', {
    filename: file,
    ...(data ? { cachedData: data } : {}),
  });
  const mod = { exports: {} };
  script.runInThisContext().call(mod.exports, mod.exports, requireBundle, mod, file, __dirname, dynamicImport);
  // Only the build sets this: the cache is written once the command has run, so it holds the functions it compiled.
  const out = process.env.IMG_CODE_CACHE_WRITE;
  if (out) {
    process.once('exit', () => {
      const head = Buffer.alloc(MAGIC.length + 8);
      head.write(MAGIC, 'latin1');
      head.writeUInt32LE(source.length, MAGIC.length);
      head.writeUInt32LE(crc32(source), MAGIC.length + 4);
      writeFileSync(out, Buffer.concat([head, script.createCachedData()]));
    });
  }
  return mod.exports;
}

void load().main();
`;

/** A third-party package named in a dynamic import(): `import('name')` or `import('@scope/name/sub')`. */
const LATE_IMPORT = /\bimport\(\s*(['"])((?:@[\w.-]+\/)?\w[^'"]*)\1\s*\)/g;

const keepLocation = {
  name: 'img-keep-location',
  setup(b) {
    // What the rewrite below did not catch (a require(), a template literal) fails the build: it would resolve from the bundle.
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.kind !== 'dynamic-import' && args.kind !== 'require-call' && args.kind !== 'require-resolve') return undefined;
      if (isBuiltin(args.path) || args.path.startsWith('@img/')) return undefined;
      return { errors: [{ text: `${args.importer}: ${args.kind} of "${args.path}" is not supported in the bundled commands; use import('${args.path}') with a string literal, or extend scripts/bundle-bins.mjs` }] };
    });
    b.onLoad({ filter: /\.m?js$/ }, (args) => {
      const text = readFileSync(args.path, 'utf8');
      if (!text.includes('import.meta') && !text.includes('import(')) return undefined;
      const other = /import\.meta(?!\.url\b)(\.\w+|\[|\b)/.exec(text.replace(/import\.meta\.url\b/g, ''));
      if (other) return { errors: [{ text: `${args.path}: import.meta${other[1]} is not supported in the bundled commands (only import.meta.url); see scripts/bundle-bins.mjs` }] };
      const owner = ownerOf(args.path);
      const where = `${JSON.stringify(owner.name)}, ${JSON.stringify(posix(relative(owner.dir, args.path)))}`;
      const contents = text
        // import.meta.url: the module's own URL in its installed package.
        .replace(/import\.meta\.url\b/g, `__imgModuleUrl(${where})`)
        // A late-loaded third-party package: imported from where the importer is installed.
        .replace(LATE_IMPORT, (all, _q, spec) => {
          // A built-in module: through the launcher's import() (see __imgImport); @img/ modules are bundled.
          if (isBuiltin(spec)) return `__imgImport(${JSON.stringify(spec)})`;
          if (spec.startsWith('@img/')) return all;
          try {
            createRequire(args.path).resolve(spec);
          } catch (e) {
            // Missing here (an optional dependency): looked up at run time, where the importer handles its absence.
            if (e.code !== 'MODULE_NOT_FOUND') throw new Error(`bundle-bins: ${args.path}: import('${spec}') cannot be resolved with require conditions (${e.code}); extend scripts/bundle-bins.mjs`);
          }
          return `__imgImportFrom(${where}, ${JSON.stringify(spec)})`;
        });
      return { contents, loader: 'js', resolveDir: dirname(args.path) };
    });
  },
};

rmSync(stageDir, { recursive: true, force: true });
const result = await build({
  entryPoints: ENTRIES.map((name) => ({ in: join(binDir, `${name}-main.js`), out: `${name}.bundle` })),
  outdir: stageDir,
  outExtension: { '.js': '.cjs' },
  allowOverwrite: true,
  bundle: true,
  // One file per command: chunks split at each import() cost more to find and load than the code they leave out.
  splitting: false,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  // Less text to parse at start-up; names are kept for the stacks --debug prints.
  minifyWhitespace: process.env.IMG_BUNDLE_MINIFY !== '0',
  minifySyntax: process.env.IMG_BUNDLE_MINIFY !== '0',
  banner: { js: BANNER },
  // The launcher reads the bundle as latin1 (checked below).
  charset: 'ascii',
  sourcemap: 'linked',
  legalComments: 'eof',
  logLevel: 'warning',
  metafile: true,
  plugins: [keepLocation],
});
const outputs = Object.keys(result.metafile.outputs).filter((f) => f.endsWith('.cjs'));
for (const name of ENTRIES) {
  const bytes = readFileSync(join(stageDir, `${name}.bundle.cjs`));
  const at = bytes.findIndex((b) => b > 0x7f);
  if (at >= 0) throw new Error(`bundle-bins: ${name}.bundle.cjs has a byte over 0x7f at ${at}: the launcher reads it as latin1`);
  // One dynamic import only, __imgImport's own fallback: any other would fail when the bundle runs from the code cache on Node 20.
  const imports = bytes.toString('latin1').match(/(?<![\w$.])import\(/g) ?? [];
  if (imports.length !== 1) throw new Error(`bundle-bins: ${name}.bundle.cjs has ${imports.length} import() calls, not just __imgImport's: write import('literal') in the source (rewritten to __imgImport) or extend scripts/bundle-bins.mjs`);
}
// The launchers are CommonJS: Node starts them without initialising its ES module loader (5-8 ms).
writeFileSync(join(stageDir, 'package.json'), `${JSON.stringify({ type: 'commonjs' }, null, 2)}\n`);
for (const name of ENTRIES) writeFileSync(join(stageDir, `${name}.js`), launcher(name), { mode: 0o755 });

// The code caches: each command converts a small raw image to qcow2 once, with the cache written at its exit.
const work = mkdtempSync(join(tmpdir(), 'img-bundle-'));
let cached = 0;
try {
  const input = join(work, 'in.raw');
  const data = Buffer.alloc(2 << 20);
  data.fill(0x5a, 65536, 3 * 65536);
  writeFileSync(input, data);
  for (const name of ENTRIES) {
    const cache = join(stageDir, `${name}.bundle.cjs.cache`);
    rmSync(cache, { force: true });
    const args = name === 'img' ? ['convert', '-f', 'raw', '-O', 'qcow2', input, join(work, `${name}.qcow2`)] : ['raw', 'qcow2', input, join(work, `${name}.qcow2`)];
    const env = { ...process.env, IMG_CODE_CACHE_WRITE: cache };
    delete env.IMG_CODE_CACHE;
    const r = spawnSync(process.execPath, [join(stageDir, `${name}.js`), ...args], { env, encoding: 'utf8' });
    if (r.status === 0 && existsSync(cache)) cached++;
    // Without a cache the command still works, compiled from source: say so, do not fail the build.
    else console.warn(`bundle-bins: no code cache for ${name} (exit ${r.status}${r.error ? `, ${r.error.message}` : ''}): ${(r.stderr || '').trim().split('\n')[0] ?? ''}`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
// Into place: each command's map, bundle and cache, then the launchers (the one file of the old build that the new
// one does not replace is an old cache, where this build made none: removed).
for (const name of ENTRIES) {
  for (const file of [`${name}.bundle.cjs.map`, `${name}.bundle.cjs`, `${name}.bundle.cjs.cache`]) {
    if (existsSync(join(stageDir, file))) renameSync(join(stageDir, file), join(binDir, file));
    else rmSync(join(binDir, file), { force: true });
  }
}
renameSync(join(stageDir, 'package.json'), join(binDir, 'package.json'));
for (const name of ENTRIES) {
  renameSync(join(stageDir, `${name}.js`), join(binDir, `${name}.js`));
  // tsc's map of the file the launcher replaced.
  rmSync(join(binDir, `${name}.js.map`), { force: true });
}
rmSync(stageDir, { recursive: true, force: true });
console.log(`bundle-bins: ${ENTRIES.join(', ')}: ${Object.keys(result.metafile.inputs).length} modules into ${outputs.length} files, ${cached} code caches`);
