#!/usr/bin/env node
// Long fuzzing runs: node tools/fuzz/cli.mjs [--seconds 300] [--seed N]
import { fuzz, loadSeeds } from './fuzz.mjs';

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const seconds = arg('--seconds', 60);
let seed = arg('--seed', Date.now() % 1_000_000);
const seeds = loadSeeds();
const deadline = Date.now() + seconds * 1000;
let total = 0;
let failed = 0;
let peakRss = 0;
while (Date.now() < deadline) {
  const failures = await fuzz({ seed, cases: 50, seeds });
  total += 50;
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  for (const f of failures) {
    failed++;
    console.log(`FAIL seed=${f.seed} case=${f.case} ${f.file}: ${f.failure}`);
  }
  seed++;
}
console.log(`${total} cases, ${failed} failures, peak RSS ${(peakRss / 2 ** 20).toFixed(0)} MiB (seeds up to ${seed - 1})`);
process.exitCode = failed ? 1 : 0;
