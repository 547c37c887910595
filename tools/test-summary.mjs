#!/usr/bin/env node
// Adds up the vitest JSON reports of every package into one closing line:
// "Tests: N passed, N failed, N skipped". With --clean, removes old reports
// first so a package that did not run cannot contribute stale numbers.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const reports = [];
for (const group of ['packages', 'tools']) {
  for (const name of readdirSync(join(root, group))) {
    const file = join(root, group, name, 'test-results', 'vitest.json');
    if (existsSync(file)) reports.push(file);
  }
}
if (process.argv.includes('--clean')) {
  for (const f of reports) rmSync(f);
  process.exit(0);
}
let passed = 0;
let failed = 0;
let skipped = 0;
for (const f of reports) {
  const r = JSON.parse(readFileSync(f, 'utf8'));
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
}
console.log(`\n${reports.length} packages reported.`);
console.log(`Tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
if (failed > 0 || passed === 0) process.exitCode = 1;
