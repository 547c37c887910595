#!/usr/bin/env node
// House-style lint for a package's src/ (STYLE.md): errors fail the run,
// warnings are printed. Usage: node tools/lint.mjs <package-dir>
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { findCycles, relativeImports } from './import-cycles.mjs';

const dir = process.argv[2] ?? '.';
const src = join(dir, 'src');
const errors = [];
const warnings = [];

function walk(d) {
  const out = [];
  for (const name of readdirSync(d)) {
    const p = join(d, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (p.endsWith('.ts')) out.push(p);
  }
  return out;
}

const isTestFile = (file) => /\.test\.ts$|\/test-[^/]*\.ts$|\/test\//.test(file);
/** Module graphs of the package's non-test sources, src-relative path -> the paths it imports: every import, and run-time imports only. */
const graph = new Map();
const runtimeGraph = new Map();

for (const file of walk(src)) {
  const rel = relative(dir, file);
  const text = readFileSync(file, 'utf8');
  const lines = text.split('\n');
  const isTest = isTestFile(file);
  if (!isTest) {
    const targets = new Set();
    const runtime = new Set();
    for (const { spec, typeOnly } of relativeImports(text)) {
      const target = join(dirname(file), spec.replace(/\.js$/, '.ts'));
      if (!target.endsWith('.ts') || !existsSync(target)) continue;
      targets.add(relative(src, target));
      if (!typeOnly) runtime.add(relative(src, target));
    }
    graph.set(relative(src, file), targets);
    runtimeGraph.set(relative(src, file), runtime);
  }
  const isCli = /\/(cli|bin)\//.test(file);
  if (!/^[a-z0-9]+(-[a-z0-9]+)*(\.test)?\.ts$/.test(basename(file))) errors.push(`${rel}: file names are kebab-case`);
  lines.forEach((line, i) => {
    const at = `${rel}:${i + 1}`;
    if (/^export default\b/.test(line)) errors.push(`${at}: no default exports`);
    const imp = /^\s*(?:import|export)\b[^'"]*from\s+['"](\.{1,2}\/[^'"]+)['"]/.exec(line);
    if (imp && !imp[1].endsWith('.js') && !imp[1].endsWith('.json')) errors.push(`${at}: relative imports end in .js (NodeNext)`);
    if (!isTest && !isCli && /\bconsole\.(log|error|warn)\(/.test(line) && !/^\s*(\*|\/\/)/.test(line)) errors.push(`${at}: no console output from library code`);
    if (!isTest && /^export (async )?(function|class|const) /.test(line)) {
      let j = i - 1;
      while (j >= 0 && /^\s*(@|$)/.test(lines[j])) j--;
      if (j < 0 || !/\*\/\s*$/.test(lines[j])) warnings.push(`${at}: exported ${line.split(/[ (<:=]/)[2] ?? ''} has no TSDoc`);
    }
  });
  if (!isTest && lines.length > 600) warnings.push(`${rel}: ${lines.length} lines (the guide is ~400)`);
}

// Imports of test files are not edges: a test may import anything.
for (const g of [graph, runtimeGraph]) for (const targets of g.values()) for (const to of targets) if (!g.has(to)) targets.delete(to);
const runtimeCycles = findCycles(runtimeGraph);
// No package has a run-time import cycle (STYLE.md): each one fails the lint.
for (const cycle of runtimeCycles) errors.push(`src/${cycle[0]}: import cycle ${cycle.join(' -> ')}`);
// Cycles that only close through an `import type`: reported, not failed (see tools/import-cycles.mjs).
for (const cycle of findCycles(graph)) {
  if (cycle.every((m, i) => i === 0 || runtimeGraph.get(cycle[i - 1]).has(m))) continue;
  warnings.push(`src/${cycle[0]}: import cycle through a type-only import ${cycle.join(' -> ')}`);
}

for (const w of warnings) console.log(`warning: ${w}`);
for (const e of errors) console.log(`error: ${e}`);
console.log(`lint ${dir}: ${errors.length} errors, ${warnings.length} warnings`);
process.exitCode = errors.length ? 1 : 0;
