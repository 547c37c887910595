/**
 * The package's modules form no import cycle (type-only imports count
 * too): each file's relative imports are parsed and the graph is searched
 * depth-first for a back edge.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const dir = fileURLToPath(new URL('.', import.meta.url));

/** Relative imports and re-exports of a module, as file names (`./x.js` -> `x.ts`). */
export function relativeImports(source: string): string[] {
  const out = new Set<string>();
  for (const m of source.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'";]*?from\s*['"](\.\/[^'"]+)['"]/g)) out.add(m[1]!.slice(2).replace(/\.js$/, '.ts'));
  for (const m of source.matchAll(/\bimport\(\s*['"](\.\/[^'"]+)['"]\s*\)/g)) out.add(m[1]!.slice(2).replace(/\.js$/, '.ts'));
  return [...out];
}

/** Every cycle found by a depth-first search (each as the path that closes it). */
export function findCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  const visit = (node: string) => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (state.get(next) === 'open') cycles.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of [...graph.keys()].sort()) if (!state.has(node)) visit(node);
  return cycles;
}

describe('module graph', () => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'));
  const graph = new Map(files.map((f) => [f, relativeImports(readFileSync(`${dir}/${f}`, 'utf8'))]));

  it('the parser sees imports, type imports, re-exports and dynamic imports, and the search finds a cycle', () => {
    const sample = "import { a } from './a.js';\nimport type { B } from './b.js';\nexport { c } from './c.js';\nexport * from './d.js';\nconst e = await import('./e.js');\nimport x from 'node:fs';";
    expect(relativeImports(sample).sort()).toEqual(['a.ts', 'b.ts', 'c.ts', 'd.ts', 'e.ts']);
    expect(
      findCycles(
        new Map([
          ['a', ['b']],
          ['b', ['c']],
          ['c', ['a']],
          ['d', ['a']],
        ]),
      ),
    ).toEqual([['a', 'b', 'c', 'a']]);
    expect(
      findCycles(
        new Map([
          ['a', ['b', 'c']],
          ['b', ['c']],
          ['c', []],
        ]),
      ),
    ).toEqual([]);
  });

  it('src/*.ts has no import cycle, and every relative import names a file that exists', () => {
    expect(files.length).toBeGreaterThan(20);
    for (const [file, imports] of graph) for (const i of imports) expect(files, `${file} imports ${i}`).toContain(i);
    expect(findCycles(graph)).toEqual([]);
  });

  it('no test helper lives in src/ (they are in @img/testkit)', () => {
    expect(files.filter((f) => /^test-|fixture|mock/.test(f))).toEqual([]);
  });
});
