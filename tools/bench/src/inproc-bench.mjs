/**
 * In-process rows (issue 14): on a small input, a whole img-convert
 * process is mostly Node's start, so these rows time `convertFile()` of
 * `@img/convert/node` inside one long-running Node process instead
 * (inproc-worker.mjs, warm: its modules are loaded and compiled by the
 * earlier calls), alternating with whole qemu-img processes as every row
 * does. The ratio sets img's conversion alone against qemu-img's whole
 * process, start-up included (a few milliseconds for qemu-img): it says
 * what a program that links the SDK pays, not what the command costs.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { childEnv } from './proc.mjs';

const WORKER = fileURLToPath(new URL('./inproc-worker.mjs', import.meta.url));

/**
 * Starts the long-running process. `convert(job)` runs one conversion
 * there ({ srcFormat, dstFormat, input, output, createOptions? }) and
 * resolves with { wall, cpu, rssMiB } (rssMiB: the process's peak so far);
 * `close()` ends it.
 */
export function startInproc() {
  // As the img-convert bin sets it before its first I/O (see packages/convert/src/bin/img-convert.ts).
  const env = { ...childEnv.env, UV_THREADPOOL_SIZE: childEnv.env.UV_THREADPOOL_SIZE ?? '8' };
  const child = spawn(process.execPath, [WORKER], { stdio: ['pipe', 'pipe', 'inherit'], env });
  const answers = createInterface({ input: child.stdout });
  const waiting = [];
  let exited;
  answers.on('line', (line) => waiting.shift()?.resolve(JSON.parse(line)));
  child.on('exit', (code, signal) => {
    exited = new Error(`in-process bench worker exited (${signal ?? code})`);
    for (const w of waiting.splice(0)) w.reject(exited);
  });
  return {
    async convert(job) {
      if (exited) throw exited;
      const answer = await new Promise((resolve, reject) => {
        waiting.push({ resolve, reject });
        child.stdin.write(`${JSON.stringify(job)}\n`);
      });
      if (answer.error) throw new Error(`in-process ${job.srcFormat}->${job.dstFormat} ${job.input}: ${answer.error}`);
      return { wall: answer.wall, loop: NaN, cpu: answer.cpu, user: NaN, sys: NaN, rssMiB: answer.rssMiB };
    },
    async close() {
      if (exited) return;
      const done = new Promise((resolve) => child.once('exit', resolve));
      child.stdin.end();
      await done;
    },
  };
}
