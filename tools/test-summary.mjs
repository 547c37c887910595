#!/usr/bin/env node
// Adds up the vitest JSON reports of every package into one closing line:
// "Tests: N passed, N failed, N skipped". With --clean, removes old reports
// first so a package that did not run cannot contribute stale numbers.
// With --status N (the exit status of the run before it), it fails when N
// does, and names every failed test and file with the first lines of its
// message: a long log cut to its tail still says what failed. Errors the
// JSON report leaves out (a failed hook, an import that throws, an unhandled
// rejection) come from test-results/errors.json, which
// tools/vitest-errors.mjs writes beside it.
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { stripVTControlCharacters } from 'node:util';

const root = new URL('..', import.meta.url).pathname;
const reports = [];
const errorFiles = [];
for (const group of ['packages', 'tools']) {
  for (const name of readdirSync(join(root, group))) {
    const file = join(root, group, name, 'test-results', 'vitest.json');
    if (existsSync(file)) reports.push(file);
    const errors = join(root, group, name, 'test-results', 'errors.json');
    if (existsSync(errors)) errorFiles.push(errors);
  }
}
if (process.argv.includes('--clean')) {
  for (const f of [...reports, ...errorFiles]) rmSync(f);
  process.exit(0);
}
const at = process.argv.indexOf('--status');
const status = at > 0 ? Number(process.argv[at + 1]) : 0;

/** The first `n` lines of a message, without terminal colours, each indented. */
function head(text, n = 6) {
  const lines = stripVTControlCharacters(String(text ?? ''))
    .split('\n')
    .filter((l) => l.trim() !== '');
  return lines
    .slice(0, n)
    .map((l) => `      ${l}`)
    .join('\n');
}

let passed = 0;
let failed = 0;
let skipped = 0;
const problems = [];
/** What errors.json says went wrong in a package's test files, by file. */
const recorded = new Map();
for (const f of errorFiles) {
  const pkg = join(f, '..', '..');
  for (const e of JSON.parse(readFileSync(f, 'utf8'))) {
    const name = e.file ? relative(root, join(pkg, e.file)) : relative(root, pkg);
    const list = recorded.get(name) ?? [];
    list.push(`${e.where}: ${e.message}`);
    recorded.set(name, list);
  }
}
for (const f of reports) {
  const r = JSON.parse(readFileSync(f, 'utf8'));
  passed += r.numPassedTests ?? 0;
  failed += r.numFailedTests ?? 0;
  skipped += (r.numPendingTests ?? 0) + (r.numTodoTests ?? 0);
  const before = problems.length;
  for (const file of r.testResults ?? []) {
    const name = relative(root, file.name ?? '');
    const bad = (file.assertionResults ?? []).filter((a) => a.status === 'failed');
    for (const a of bad) problems.push(`  FAIL ${name} > ${a.fullName ?? a.title}\n${head((a.failureMessages ?? []).join('\n'))}`);
    if (file.status === 'failed' && bad.length === 0) problems.push(`  FAIL ${name} (the file itself)\n${head([file.message, ...(recorded.get(name) ?? [])].join('\n'))}`);
  }
  const pkg = relative(root, join(f, '..', '..'));
  if (r.success === false && problems.length === before) problems.push(`  FAIL ${pkg}: vitest reported failure (an error outside the tests)\n${head((recorded.get(pkg) ?? []).join('\n'))}`);
}
console.log(`\n${reports.length} packages reported.`);
if (problems.length) console.log(`Failed:\n${problems.join('\n')}`);
console.log(`Tests: ${passed} passed, ${failed} failed, ${skipped} skipped`);
if (failed > 0 || passed === 0 || status !== 0) process.exitCode = 1;
