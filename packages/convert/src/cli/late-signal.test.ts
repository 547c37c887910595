// A signal that comes once a command's long work is done (output complete, as it closes or prints its summary) is held
// until the command returns: it then says its work was complete and exits with the signal's status. (In-process: the
// signals are emitted, not sent, so the test runner is never at risk.)
import { afterAll, expect, it } from 'vitest';
import { runCommand, type Io } from './common.js';
import { abortOnSignals } from './interrupt.js';

// The handlers the command installs stay for the life of a CLI process; this worker is not one, so they go after.
const before = { SIGINT: process.listeners('SIGINT'), SIGTERM: process.listeners('SIGTERM') };
afterAll(() => {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) for (const l of process.listeners(signal)) if (!before[signal].includes(l)) process.off(signal, l);
});

it('a SIGTERM after the work is done: the command finishes, says its output is complete, and exits 143', async () => {
  let stderr = '';
  const io = { stdout: () => undefined, stderr: (t: string) => (stderr += t), isTTY: false } as unknown as Io;
  let closed = false;
  const status = await runCommand('img convert', [], io, async () => {
    const done = abortOnSignals(new AbortController());
    // ... the long work, uninterrupted ...
    done();
    process.emit('SIGTERM');
    // What is left (closing, the summary) still runs to its end.
    await new Promise((r) => setTimeout(r, 10));
    closed = true;
    return 0;
  });
  expect(closed).toBe(true);
  expect(status).toBe(143);
  expect(stderr).toBe('img convert: interrupted after its work was done: what it wrote is complete\n');
});
