#!/usr/bin/env node
// Generates the API reference (docs/api, Markdown) from the packages' TSDoc with TypeDoc.
//   node src/generate.mjs           write docs/api
//   node src/generate.mjs --check   generate into a scratch directory and fail if docs/api differs
//                                   or TypeDoc warns (an export without a comment, a broken link)
// TypeDoc needs TypeScript's JavaScript API, which TypeScript 7 (the native compiler the packages
// build with) does not ship: this package alone depends on TypeScript 6, the last JavaScript release.
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Application, LogLevel } from 'typedoc';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const check = process.argv.includes('--check');
const target = join(root, 'docs', 'api');
const out = check ? mkdtempSync(join(tmpdir(), 'img-api-')) : target;

/** The public entry points: each package's root and its node entry. */
export const ENTRY_POINTS = [
  'packages/block/src/index.ts',
  'packages/block/src/node/index.ts',
  'packages/qcow2/src/index.ts',
  'packages/qcow2/src/layout.ts',
  'packages/vhd/src/index.ts',
  'packages/vhd/src/node.ts',
  'packages/convert/src/index.ts',
  'packages/nbd/src/index.ts',
  'packages/vmdk/src/index.ts',
  'packages/vmdk/src/node.ts',
  'packages/luks/src/index.ts',
  'packages/luks/src/node.ts',
].filter((p) => {
  try {
    return statSync(join(root, p)).isFile();
  } catch {
    return false;
  }
});

const app = await Application.bootstrapWithPlugins({
  entryPoints: ENTRY_POINTS.map((p) => join(root, p)),
  tsconfig: join(root, 'tools/api-docs/tsconfig.json'),
  plugin: ['typedoc-plugin-markdown'],
  out,
  readme: 'none',
  name: 'img API reference',
  excludePrivate: true,
  excludeInternal: true,
  excludeExternals: true,
  disableSources: true,
  hidePageHeader: true,
  outputFileStrategy: 'modules',
  hideBreadcrumbs: true,
  validation: { notExported: false, invalidLink: true, notDocumented: false },
  logLevel: LogLevel.Warn,
  skipErrorChecking: true,
});
const project = await app.convert();
if (!project) {
  console.error('api-docs: TypeDoc could not convert the project');
  process.exit(1);
}
// Modules are named by the package entry a user imports, not by their source folders.
for (const module of project.children ?? []) {
  const [pkg, , ...rest] = module.name.split('/');
  module.name = `@img/${pkg}${rest.length ? '/' + rest.join('/') : ''}`;
}
await app.generateOutputs(project);
const warnings = app.logger.warningCount + app.logger.errorCount;

function files(dir) {
  const list = [];
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else list.push(relative(dir, p));
    }
  };
  walk(dir);
  return list.sort();
}

if (check) {
  let stale = [];
  let have = [];
  try {
    have = files(target);
  } catch {
    have = [];
  }
  const made = files(out);
  const all = new Set([...have, ...made]);
  for (const f of all) {
    const a = have.includes(f) ? readFileSync(join(target, f), 'utf8') : undefined;
    const b = made.includes(f) ? readFileSync(join(out, f), 'utf8') : undefined;
    if (a !== b) stale.push(f);
  }
  rmSync(out, { recursive: true, force: true });
  if (stale.length) {
    console.error(`api-docs: docs/api is out of date in ${stale.length} file(s) (${stale.slice(0, 5).join(', ')}${stale.length > 5 ? ', ...' : ''}); run: pnpm api-docs`);
    process.exit(1);
  }
}
if (warnings) {
  console.error(`api-docs: TypeDoc reported ${warnings} warning(s) or error(s)`);
  process.exit(1);
}
console.log(check ? 'api-docs: docs/api is up to date' : `api-docs: wrote ${files(target).length} files to docs/api`);
