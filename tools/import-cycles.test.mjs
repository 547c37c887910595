// Tests of the import-cycle finder behind tools/lint.mjs (node --test; run by the root lint:root task).
// Each test() is awaited: they run one after another, and a failure to start one is not lost.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { findCycles, relativeImports } from './import-cycles.mjs';

const graphOf = (edges) => {
  const g = new Map();
  for (const [from, to] of edges) {
    if (!g.has(from)) g.set(from, new Set());
    if (!g.has(to)) g.set(to, new Set());
    g.get(from).add(to);
  }
  return g;
};

await test('a graph without cycles has none', () => {
  assert.deepEqual(
    findCycles(
      graphOf([
        ['a', 'b'],
        ['b', 'c'],
        ['a', 'c'],
      ]),
    ),
    [],
  );
});

await test('a two-module cycle and a self-import are found', () => {
  assert.deepEqual(
    findCycles(
      graphOf([
        ['check', 'open'],
        ['open', 'check'],
        ['open', 'state'],
      ]),
    ),
    [['check', 'open', 'check']],
  );
  assert.deepEqual(findCycles(graphOf([['a', 'a']])), [['a', 'a']]);
});

await test('two loops through one module are both reported, each shortest', () => {
  // vhd before its split: image -> backing -> open -> image, and open <-> chain.
  const g = graphOf([
    ['image', 'backing'],
    ['backing', 'open'],
    ['open', 'image'],
    ['open', 'chain'],
    ['chain', 'open'],
    ['image', 'bat'],
  ]);
  const cycles = findCycles(g).map((c) => c.join(' -> '));
  assert.equal(cycles.length, 2);
  assert.ok(cycles.includes('backing -> open -> image -> backing'), cycles.join('; '));
  assert.ok(cycles.includes('chain -> open -> chain'), cycles.join('; '));
});

await test('a long chain does not overflow the stack', () => {
  const edges = [];
  for (let i = 0; i < 20000; i++) edges.push([`m${i}`, `m${i + 1}`]);
  edges.push(['m20000', 'm0']);
  const cycles = findCycles(graphOf(edges));
  assert.equal(cycles.length, 1);
  assert.equal(cycles[0].length, 20002);
});

await test('relativeImports reads every import form and tells type-only ones apart', () => {
  const text = [
    '/**',
    " * Example: import { openQcow2 } from './not-an-import.js';",
    ' */',
    "import { a, type B } from './a.js';",
    "import type { C } from './c.js';",
    'import {',
    '  d,',
    '  e,',
    "} from './de.js';",
    "export { f } from './f.js';",
    "export type { G } from './g.js';",
    "import './side-effect.js';",
    "import { type H } from './h.js';",
    "import { x } from '@img/block';",
    "const later = await import('./lazy.js');",
    "const glob = 'src/**/*.ts';",
    "import { z } from './after-glob.js';",
  ].join('\n');
  assert.deepEqual(relativeImports(text), [
    { spec: './a.js', typeOnly: false },
    { spec: './c.js', typeOnly: true },
    { spec: './de.js', typeOnly: false },
    { spec: './f.js', typeOnly: false },
    { spec: './g.js', typeOnly: true },
    { spec: './side-effect.js', typeOnly: false },
    // Not erased under verbatimModuleSyntax: it compiles to `import {} from './h.js'`.
    { spec: './h.js', typeOnly: false },
    { spec: './lazy.js', typeOnly: false },
    { spec: './after-glob.js', typeOnly: false },
  ]);
});

await test('tools/lint.mjs fails a package with a run-time cycle and only warns about a type-only one', () => {
  const dir = mkdtempSync(join(tmpdir(), 'img-lint-cycles-'));
  try {
    mkdirSync(join(dir, 'src'));
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: '@img/cycle-fixture' }));
    const write = (name, body) => writeFileSync(join(dir, 'src', name), `${body}\n`);
    write('state.ts', "import type { Writer } from './writer.js';\n/** Core state. */\nexport interface State { writer?: Writer }");
    write('writer.ts', "import type { State } from './state.js';\n/** Writer. */\nexport class Writer { s?: State }");
    const lint = () => spawnSync(process.execPath, [new URL('./lint.mjs', import.meta.url).pathname, dir], { encoding: 'utf8' });
    let r = lint();
    assert.equal(r.status, 0, r.stdout);
    assert.match(r.stdout, /warning: src\/state\.ts: import cycle through a type-only import state\.ts -> writer\.ts -> state\.ts/);
    write('open.ts', "import { check } from './check.js';\n/** Opens. */\nexport function open(): number { return check(); }");
    write('check.ts', "import { open } from './open.js';\n/** Checks. */\nexport function check(): number { return open(); }");
    write('open.test.ts', "import { open } from './open.js';\nimport { check } from './check.js';\nopen(); check();");
    r = lint();
    assert.equal(r.status, 1, r.stdout);
    assert.match(r.stdout, /error: src\/check\.ts: import cycle check\.ts -> open\.ts -> check\.ts/);
    assert.match(r.stdout, /1 errors/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
