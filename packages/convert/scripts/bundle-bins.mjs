#!/usr/bin/env node
// Bundles the two commands (dist/bin/img-convert.js, dist/bin/img.js, as tsc
// wrote them) into one ESM file each, so that start-up reads one file
// instead of ~80 modules: Node 20's ESM loader pays per module (resolve,
// read, compile, link), which made start-up most of a small conversion. The
// library entry points (dist/index.js, dist/node.js) stay plain tsc output;
// only the bins change. Measured on Node 20: one file per command beats
// chunks split at each import() (more files cost more than the code they
// leave out), and minified whitespace saves ~2 ms of parsing.
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
import { existsSync, readFileSync } from 'node:fs';
import { createRequire, isBuiltin } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const binDir = join(pkgDir, 'dist', 'bin');
const MARK = '/* img-bundle */';
const ENTRIES = ['img-convert', 'img'];

for (const name of ENTRIES) {
  const file = join(binDir, `${name}.js`);
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

// Run-time helpers, at the top of every output file (entries and chunks).
// A package's root comes from resolving its own "./package.json" export from
// here: @img/convert by self-reference, the others as its dependencies (the
// resolvers follow symbolic links, so a pnpm workspace gives the real folder).
const BANNER = `${MARK}
import { createRequire as __imgCreateRequire } from 'node:module';
import { pathToFileURL as __imgPathToFileURL } from 'node:url';
const __imgRoots = new Map();
function __imgModuleUrl(pkg, rel) {
  let root = __imgRoots.get(pkg);
  if (root === undefined) {
    const pj = pkg + '/package.json';
    // import.meta.resolve (Node >= 20.6) uses the ES module resolver already running; require's costs a few ms to start.
    root = new URL('.', import.meta.resolve ? import.meta.resolve(pj) : __imgPathToFileURL(__imgCreateRequire(import.meta.url).resolve(pj))).href;
    __imgRoots.set(pkg, root);
  }
  return new URL(rel, root).href;
}
function __imgImportFrom(pkg, rel, spec) {
  return import(__imgPathToFileURL(__imgCreateRequire(__imgModuleUrl(pkg, rel)).resolve(spec)).href);
}`;

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
          if (isBuiltin(spec) || spec.startsWith('@img/')) return all;
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

const result = await build({
  entryPoints: ENTRIES.map((name) => ({ in: join(binDir, `${name}.js`), out: name })),
  outdir: binDir,
  allowOverwrite: true,
  bundle: true,
  // One file per command: chunks split at each import() cost more to find and load than the code they leave out.
  splitting: false,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // Less text to parse at start-up; names are kept for the stacks --debug prints.
  minifyWhitespace: process.env.IMG_BUNDLE_MINIFY !== '0',
  minifySyntax: process.env.IMG_BUNDLE_MINIFY !== '0',
  banner: { js: BANNER },
  sourcemap: 'linked',
  legalComments: 'eof',
  logLevel: 'warning',
  metafile: true,
  plugins: [keepLocation],
});
const outputs = Object.keys(result.metafile.outputs).filter((f) => f.endsWith('.js'));
console.log(`bundle-bins: ${ENTRIES.join(', ')}: ${Object.keys(result.metafile.inputs).length} modules into ${outputs.length} files`);
