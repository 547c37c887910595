// esbuild as a browser bundler sees the SDK: the platform "browser", so
// package.json "browser" fields and conditions apply, and Node's built-in
// modules do not resolve. Shared by the node-free and Chromium tests.
import { isBuiltin } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, type Metafile, type Plugin } from 'esbuild';

export const toolDir = join(dirname(fileURLToPath(import.meta.url)), '..');

export interface BrowserBundle {
  /** The bundle's JavaScript (ESM). */
  js: string;
  /** Every module that went in, as esbuild names them. */
  inputs: string[];
  /** Imports of Node built-ins, as "importer -> specifier" (left out of the bundle). */
  nodeImports: string[];
}

/** Records (and leaves out) every import of a Node built-in, so that one bundle lists them all. */
function nodeImportRecorder(found: string[]): Plugin {
  return {
    name: 'img-node-imports',
    setup(b) {
      b.onResolve({ filter: /.*/ }, (args) => {
        if (!args.path.startsWith('node:') && !isBuiltin(args.path)) return undefined;
        found.push(`${args.importer.replace(/^.*node_modules\//, '')} -> ${args.path}`);
        return { path: args.path, external: true };
      });
    },
  };
}

/** Bundles `contents` (an ES module's source, resolved from this package) for a browser. */
export async function bundleForBrowser(contents: string, options: { minify?: boolean } = {}): Promise<BrowserBundle> {
  const nodeImports: string[] = [];
  const result = await build({
    stdin: { contents, resolveDir: toolDir, loader: 'ts', sourcefile: 'entry.ts' },
    bundle: true,
    write: false,
    outfile: join(toolDir, 'page-bundle.js'),
    format: 'esm',
    platform: 'browser',
    target: 'chrome120',
    minify: options.minify ?? false,
    metafile: true,
    logLevel: 'silent',
    plugins: [nodeImportRecorder(nodeImports)],
  });
  const js = result.outputFiles.find((f) => f.path.endsWith('.js'))!.text;
  return { js, inputs: Object.keys((result.metafile as Metafile).inputs), nodeImports };
}
