#!/usr/bin/env node
// Interoperability campaign against qemu-img, both directions (not a CI test).
//
//   nice -n 10 node tools/interop/campaign.mjs [--seed 1] [--random 40] [--part read,write]
//        [--formats qcow2,vpc,vmdk,raw] [--work /tmp/interop] [--timeout 20000] [--heap-mib 512]
//        [--only r17] [--match text] [--keep] [--luks-ciphers aes|all]
//
// Direction 1 (read cases, ids r*): qemu-img / qemu-io write an image over the
// option matrix; img's convert -O raw, compare, info, map and check must
// agree with qemu-img's (tools/interop/oracle.mjs). Direction 2 (write cases,
// ids w*): img creates, converts, resizes, snapshots, amends, commits,
// rebases; qemu-img check / info / compare and qemu-io must accept the
// result, and img must read what qemu-io then writes. Every case is bounded by
// --timeout (all its processes together) and img runs under
// --max-old-space-size; cases run one after another, so the campaign uses one
// core. The summary goes to <work>/summary.json and stdout; every case's
// result to <work>/cases.jsonl. `luks` (qemu's luks format) draws its
// ciphers from luks.mjs's table: AES in xts and cbc, what img decrypts, or
// with `--luks-ciphers all` every cipher and mode qemu-img 7.2 writes.
import { appendFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Budget, CaseTimeout, PrepError, img } from './lib.mjs';
import { campaignArgs } from '../hostile/lib.mjs';
import { compareRead } from './oracle.mjs';
import { knownReason } from './known.mjs';
import { luksCipherSet } from './luks.mjs';
import { readCases } from './read-cases.mjs';
import { writeCases } from './write-cases.mjs';

const USAGE = 'usage: nice node tools/interop/campaign.mjs [--seed 1] [--random 40] [--part read,write] [--formats qcow2,vpc,vmdk,raw] [--work /tmp/interop] [--timeout 20000] [--heap-mib 512] [--only r17] [--match text] [--keep] [--luks-ciphers aes|all]\n';

function args() {
  const a = campaignArgs({ seed: 1, random: 40, part: 'read,write', formats: 'qcow2,vpc,vmdk,raw', work: '/tmp/interop', timeout: 20_000, 'heap-mib': 512, only: undefined, match: undefined, 'luks-ciphers': 'all' }, USAGE);
  return { ...a, luksCiphers: luksCipherSet(a['luks-ciphers']), seed: Number(a.seed), random: Number(a.random), timeout: Number(a.timeout), heap: Number(a['heap-mib']), part: a.part.split(','), formats: a.formats.split(',') };
}

const opt = args();
mkdirSync(opt.work, { recursive: true });
const log = join(opt.work, 'cases.jsonl');
if (!opt.only) writeFileSync(log, '');

/** The option names `img create -f X -o help` prints (encrypt.key-secret and the other encrypt.* names have hyphens). */
function imgOptionNames(fmt) {
  const r = img(new Budget(20_000), opt.heap, ['create', '-f', fmt, '-o', 'help']);
  return [...r.stdout.matchAll(/^\s+([a-z0-9_.-]+)=/gm)].map((m) => m[1]);
}

const cases = [];
if (opt.part.includes('read'))
  cases.push(
    ...readCases(
      opt.seed,
      opt.random,
      opt.formats.filter((f) => f !== 'raw'),
      opt.luksCiphers,
    ),
  );
let uncovered = [];
if (opt.part.includes('write')) {
  const w = writeCases(opt.seed, opt.formats, imgOptionNames, opt.luksCiphers);
  cases.push(...w.cases);
  uncovered = w.uncovered;
}

/** @type {{ seed: number, luksCiphers: string, cases: number, perFormat: Record<string, any>, options: Record<string, number>, passed: number, differences: string[], documented: string[], skipped: string[], timeouts: number, harnessErrors: string[], uncoveredOptions: string[], seconds?: number }} */
const summary = { seed: opt.seed, luksCiphers: opt['luks-ciphers'], cases: 0, perFormat: {}, options: {}, passed: 0, differences: [], documented: [], skipped: [], timeouts: 0, harnessErrors: [], uncoveredOptions: uncovered };
const started = Date.now();
for (const c of cases) {
  if (opt.only && c.id !== opt.only) continue;
  if (opt.match && !`${c.label} ${c.desc}`.includes(opt.match)) continue;
  const dir = join(opt.work, c.id);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  // A luks case opens its image two dozen times, each open a PBKDF2 (and qemu-img times PBKDF2 at create, retried on failure): twice the budget.
  const ctx = { dir, budget: new Budget(opt.timeout * (c.format === 'luks' ? 2 : 1)), heap: opt.heap, log: [] };
  const t0 = Date.now();
  let result;
  try {
    let diffs;
    if (c.build) {
      const { path, fmt, pass } = c.build(ctx);
      diffs = compareRead(ctx, path, fmt, pass);
    } else diffs = c.run(ctx);
    result = { status: diffs.length ? 'diff' : 'pass', diffs };
  } catch (e) {
    if (e instanceof CaseTimeout) result = { status: 'timeout', diffs: [{ check: 'time limit', detail: e.message }] };
    else if (e instanceof PrepError) result = { status: 'skipped', reason: e.message };
    else result = { status: 'harness-error', reason: String(e?.stack ?? e) };
  }
  const ms = Date.now() - t0;
  const rec = { id: c.id, format: c.format, label: c.label, desc: c.desc, ms, ...result, steps: ctx.log };
  appendFileSync(log, `${JSON.stringify(rec)}\n`);
  summary.cases++;
  const pf = (summary.perFormat[c.format] ??= { cases: 0, pass: 0, diff: 0, skipped: 0, timeout: 0, error: 0 });
  pf.cases++;
  if (result.status === 'pass') {
    summary.passed++;
    pf.pass++;
  } else if (result.status === 'skipped') {
    pf.skipped++;
    summary.skipped.push(`${c.id} ${c.label}: ${result.reason}`);
  } else if (result.status === 'harness-error') {
    pf.error++;
    summary.harnessErrors.push(`${c.id} ${c.label}: ${result.reason.split('\n')[0]}`);
  } else {
    if (result.status === 'timeout') {
      summary.timeouts++;
      pf.timeout++;
    } else pf.diff++;
    for (const d of result.diffs) {
      const line = `${c.id} [${c.format}] ${c.desc} :: ${d.check}: ${d.detail}`;
      const known = knownReason(line);
      if (known) summary.documented.push(`${line} (documented: ${known.id})`);
      else summary.differences.push(line);
    }
  }
  if (result.status !== 'skipped') for (const o of c.options) summary.options[`${c.format}:${o}`] = (summary.options[`${c.format}:${o}`] ?? 0) + 1;
  process.stdout.write(`${c.id} ${c.format} ${c.label} ${result.status} ${ms}ms${result.diffs?.length ? ` (${result.diffs.length} differences)` : ''}\n`);
  if (result.status === 'pass' && !opt.keep) rmSync(dir, { recursive: true, force: true });
}
summary.seconds = Math.round((Date.now() - started) / 1000);
if (!opt.only && !opt.match) writeFileSync(join(opt.work, 'summary.json'), JSON.stringify(summary, null, 2));
process.stdout.write(
  `\n${summary.cases} cases in ${summary.seconds} s: ${summary.passed} agree, ${summary.differences.length} new differences, ${summary.documented.length} documented ones, ${summary.skipped.length} skipped (qemu refused the options), ${summary.timeouts} timeouts, ${summary.harnessErrors.length} harness errors\n`,
);
for (const [f, s] of Object.entries(summary.perFormat)) process.stdout.write(`  ${f}: ${JSON.stringify(s)}\n`);
process.stdout.write(`options covered: ${Object.keys(summary.options).length}; not covered: ${uncovered.join(' ') || 'none'}\n`);
for (const d of summary.differences) process.stdout.write(`DIFF ${d}\n`);
for (const d of summary.documented) process.stdout.write(`KNOWN ${d}\n`);
for (const h of summary.harnessErrors) process.stdout.write(`ERROR ${h}\n`);
for (const s of summary.skipped) process.stdout.write(`SKIP ${s}\n`);
process.exitCode = summary.differences.length || summary.harnessErrors.length ? 1 : 0;
