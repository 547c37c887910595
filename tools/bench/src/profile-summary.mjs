#!/usr/bin/env node
/**
 * Self time per function of a `node --cpu-prof` profile, largest first:
 * what BENCHMARKS.md quotes as profile evidence.
 *
 *   node --cpu-prof --cpu-prof-dir=/tmp/prof packages/convert/dist/bin/img-convert.js qcow2 qcow2 in.qcow2 out.qcow2
 *   node tools/bench/src/profile-summary.mjs /tmp/prof [rows]
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';

export function summarise(profile, rows = 20) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  profile.samples.forEach((id, i) => {
    const cf = byId.get(id).callFrame;
    const where = cf.url ? ` ${cf.url.split('/').slice(-2).join('/')}:${cf.lineNumber + 1}` : '';
    const key = `${cf.functionName || '(anonymous)'}${where}`;
    self.set(key, (self.get(key) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  });
  const total = (profile.endTime - profile.startTime) / 1000;
  return { total, top: [...self].sort((a, b) => b[1] - a[1]).slice(0, rows) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const target = process.argv[2] ?? '.';
  const file = statSync(target).isDirectory()
    ? join(
        target,
        readdirSync(target)
          .filter((f) => f.endsWith('.cpuprofile'))
          .sort()
          .pop(),
      )
    : target;
  const { total, top } = summarise(JSON.parse(readFileSync(file, 'utf8')), Number(process.argv[3] ?? 20));
  console.log(`| self ms | function | (profile ${total.toFixed(0)} ms) |`);
  console.log('| ---: | --- | --- |');
  for (const [k, v] of top) console.log(`| ${v.toFixed(0)} | \`${k}\` | ${((100 * v) / total).toFixed(1)}% |`);
}
