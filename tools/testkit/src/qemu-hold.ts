/**
 * A running qemu-io that holds an image open, for lock tests: started,
 * awaited until its locks show in /proc/locks (no sleeps), stopped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';

/** qemu 7.2's bytes for a read-write open (perm 100, 101, 103; unshared 201, 203) and a read-only one. */
export const QEMU_RW_LOCK_BYTES = [100, 101, 103, 201, 203];
export const QEMU_RO_LOCK_BYTES = [100, 201, 203];

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

const LOCK_LINE = /\d+:\s+(?:POSIX|OFDLCK)\s+\S+\s+(?:READ|WRITE)\s+-?\d+\s+([0-9a-f]+):([0-9a-f]+):(\d+)\s+(\d+)\s+(\d+|EOF)/i;

function bytesOf(file: string, lines: string[]): number[] {
  const st = statSync(file, { bigint: true });
  const major = Number(((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & 0xfffff000n));
  const minor = Number((st.dev & 0xffn) | ((st.dev >> 12n) & 0xffffff00n));
  const held = new Set<number>();
  for (const line of lines) {
    if (line.includes('->')) continue;
    const m = LOCK_LINE.exec(line);
    if (!m || parseInt(m[1]!, 16) !== major || parseInt(m[2]!, 16) !== minor || BigInt(m[3]!) !== st.ino) continue;
    const start = Number(m[4]);
    const end = m[5] === 'EOF' ? 299 : Math.min(Number(m[5]), 299);
    for (let b = start; b <= end; b++) held.add(b);
  }
  return [...held].sort((a, b) => a - b);
}

/**
 * The bytes of `file` that anybody (this process included) holds a POSIX
 * or OFD lock on, from /proc/locks (Linux only), among 0..299 (qemu's bytes
 * are 100-104 and 200-204).
 */
export function lockedBytes(file: string): number[] {
  return bytesOf(file, readFileSync('/proc/locks', 'utf8').split('\n'));
}

/** The bytes of `file` locked through the descriptors of process `pid` (its /proc/PID/fdinfo `lock:` lines). */
export function lockedBytesOf(pid: number, file: string): number[] {
  const lines: string[] = [];
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fdinfo`);
  } catch {
    return [];
  }
  for (const fd of fds) {
    try {
      lines.push(
        ...readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8')
          .split('\n')
          .filter((l) => l.startsWith('lock:')),
      );
    } catch {
      // closed meanwhile
    }
  }
  return bytesOf(file, lines);
}

/** A qemu-io holding an image; stop() ends it (its locks go with it). */
export interface QemuIoHolder {
  pid: number;
  stop(): Promise<void>;
}

/**
 * Starts `qemu-io [-r] -f format -c 'sleep ...' file` and resolves once
 * qemu-io's own descriptor holds all of qemu's lock bytes for that mode
 * (its /proc/PID/fdinfo, polled every few ms). Rejects with qemu-io's
 * stderr if it exits first, or after `timeoutMs`. For an image nobody else
 * holds: qemu sets its locks before it checks for others', so a qemu-io
 * about to be refused holds them for an instant too (two polls in a row
 * must see them).
 */
export async function holdWithQemuIo(file: string, options: { format: string; readOnly?: boolean; timeoutMs?: number }): Promise<QemuIoHolder> {
  const args = [...(options.readOnly ? ['-r'] : []), '-f', options.format, '-c', 'sleep 86400000', file];
  const child = spawn('qemu-io', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      running.delete(child);
      resolve();
    }),
  );
  const stop = async (): Promise<void> => {
    if (!exited) child.kill('SIGKILL');
    await gone;
  };
  const want = options.readOnly ? QEMU_RO_LOCK_BYTES : QEMU_RW_LOCK_BYTES;
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  // qemu tests for other holders right after it sets its bytes: the bytes
  // seen on two polls in a row are past that test (a refused qemu-io drops
  // them and exits).
  let seen = 0;
  for (;;) {
    if (exited) throw new Error(`qemu-io ${args.join(' ')} exited before it held the image: ${stderr.trim()}`);
    const held = lockedBytesOf(child.pid!, file);
    seen = want.every((b) => held.includes(b)) ? seen + 1 : 0;
    if (seen === 2) return { pid: child.pid!, stop };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`qemu-io did not lock ${file} within ${options.timeoutMs ?? 10_000} ms (held: ${held.join(',')}): ${stderr.trim()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
