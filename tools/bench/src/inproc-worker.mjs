/**
 * The long-running process of the in-process rows (inproc-bench.mjs): it
 * imports `convertFile()` from `@img/convert/node` once, then runs one
 * conversion per line of JSON on stdin and answers one line of JSON on
 * stdout: wall and CPU seconds of that `convertFile()` call alone (no
 * process start, modules loaded and compiled by the earlier calls) and the
 * process's peak RSS so far.
 */
import { rm } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { convertFile } from '@img/convert/node';

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const job = JSON.parse(line);
  let answer;
  try {
    await rm(job.output, { force: true });
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    await convertFile({ srcFormat: job.srcFormat, dstFormat: job.dstFormat, input: job.input, output: job.output, ...(job.createOptions ? { createOptions: job.createOptions } : {}) });
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    answer = { wall, cpu: (cpu.user + cpu.system) / 1e6, rssMiB: process.resourceUsage().maxRSS / 1024 };
  } catch (e) {
    answer = { error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
