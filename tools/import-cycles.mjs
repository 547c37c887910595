// Import cycles between the modules of one package (STYLE.md: "No import cycles"; DESIGN.md: nothing
// lower imports anything higher). Used by tools/lint.mjs; tested by tools/import-cycles.test.mjs.
//
// A cycle of imports that load modules at run time is an error: module evaluation order then depends on
// which module a program happens to import first. `import type` / `export type` are erased, so a cycle that
// needs one of them is only reported (a core object and the services it holds refer to each other's
// types). `import { type A } from` is NOT erased under verbatimModuleSyntax (it compiles to
// `import {} from`), so it loads the module and counts as a run-time import.

const SPECIFIER = String.raw`['"](\.{1,2}\/[^'"]+)['"]`;
// `import ... from './x.js'` / `export ... from './x.js'` (the clause may span lines; group 1 is `type`
// when the whole statement is type-only), `import './x.js'`, and `import('./x.js')`.
const IMPORT_PATTERNS = [new RegExp(String.raw`(?:^|[\n;])\s*(?:import|export)\s+(type\s)?[^'";]*?\bfrom\s*` + SPECIFIER, 'g'), new RegExp(String.raw`(?:^|[\n;])\s*import\s*()` + SPECIFIER, 'g'), new RegExp(String.raw`\bimport\(\s*()` + SPECIFIER + String.raw`\s*\)`, 'g')];

/**
 * Blanks the comments that open a line (TSDoc, `//` notes), so an example in them is not
 * taken for an import. Only those: a `/*` inside a string (a glob) must not swallow code.
 */
function stripComments(text) {
  return text.replace(/^[ \t]*\/\*[\s\S]*?\*\//gm, (c) => c.replace(/[^\n]/g, ' ')).replace(/^[ \t]*\/\/[^\n]*/gm, '');
}

/**
 * The relative specifiers `text` imports, in source order, each once, as `{ spec, typeOnly }`:
 * `typeOnly` when every import of that specifier is an `import type` / `export type`.
 */
export function relativeImports(text) {
  const code = stripComments(text);
  const found = [];
  for (const re of IMPORT_PATTERNS) {
    for (const m of code.matchAll(re)) found.push({ at: m.index, spec: m[2], typeOnly: Boolean(m[1]) });
  }
  found.sort((a, b) => a.at - b.at);
  const bySpec = new Map();
  for (const f of found) bySpec.set(f.spec, (bySpec.get(f.spec) ?? true) && f.typeOnly);
  return [...bySpec].map(([spec, typeOnly]) => ({ spec, typeOnly }));
}

/** Module names in code-unit order (stable output whatever order the files were listed in). */
const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Cycles in `graph` (a Map from node to the nodes it imports), as arrays of nodes
 * `[a, b, ..., a]`. Each strongly connected component gets the shortest cycles that
 * together use every edge inside it, so two loops through one module are both shown.
 */
export function findCycles(graph) {
  const nodes = [...graph.keys()].sort(byName);
  const index = new Map();
  const low = new Map();
  const onStack = new Set();
  const stack = [];
  const components = [];
  let next = 0;
  // Tarjan's algorithm, iterative (no recursion limit on deep import chains).
  for (const root of nodes) {
    if (index.has(root)) continue;
    const work = [{ node: root, edges: [...(graph.get(root) ?? [])].sort(byName), i: 0 }];
    index.set(root, next);
    low.set(root, next++);
    stack.push(root);
    onStack.add(root);
    while (work.length) {
      const top = work[work.length - 1];
      if (top.i < top.edges.length) {
        const to = top.edges[top.i++];
        if (!graph.has(to)) continue;
        if (!index.has(to)) {
          index.set(to, next);
          low.set(to, next++);
          stack.push(to);
          onStack.add(to);
          work.push({ node: to, edges: [...(graph.get(to) ?? [])].sort(byName), i: 0 });
        } else if (onStack.has(to)) {
          low.set(top.node, Math.min(low.get(top.node), index.get(to)));
        }
        continue;
      }
      work.pop();
      if (work.length) {
        const parent = work[work.length - 1].node;
        low.set(parent, Math.min(low.get(parent), low.get(top.node)));
      }
      if (low.get(top.node) === index.get(top.node)) {
        const component = [];
        let n;
        do {
          n = stack.pop();
          onStack.delete(n);
          component.push(n);
        } while (n !== top.node);
        components.push(component);
      }
    }
  }
  const cycles = [];
  for (const component of components) {
    const members = new Set(component);
    const edges = [];
    for (const from of [...component].sort(byName)) {
      for (const to of [...(graph.get(from) ?? [])].sort(byName)) if (members.has(to)) edges.push([from, to]);
    }
    const covered = new Set();
    for (const [from, to] of edges) {
      if (covered.has(`${from}\0${to}`)) continue;
      // The shortest way back from `to` to `from` inside the component closes the cycle through this edge.
      const back = shortestPath(graph, members, to, from);
      const cycle = [from, ...back];
      for (let i = 0; i + 1 < cycle.length; i++) covered.add(`${cycle[i]}\0${cycle[i + 1]}`);
      cycles.push(cycle);
    }
  }
  return cycles;
}

function shortestPath(graph, members, start, goal) {
  const previous = new Map([[start, undefined]]);
  const queue = [start];
  for (let q = 0; q < queue.length; q++) {
    const node = queue[q];
    if (node === goal) break;
    for (const to of [...(graph.get(node) ?? [])].sort(byName)) {
      if (!members.has(to) || previous.has(to)) continue;
      previous.set(to, node);
      queue.push(to);
    }
  }
  const path = [];
  for (let n = goal; n !== undefined; n = previous.get(n)) path.unshift(n);
  return path;
}
