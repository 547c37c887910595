/**
 * The progress bar of -p on stderr (qemu-img's percentage lines on stdout
 * for the commands spelled as qemu-img's), and the line it keeps open.
 *
 * The bar redraws one line (`\r...`) and ends it with a newline when the
 * work is done. A command that stops before that (an error, Ctrl-C, a
 * compare that finds a difference) would leave the line open, and the
 * next message would be written after the bar. So the open line is
 * remembered here, and whatever writes next to the terminal ends it first
 * (processIo does, see process-io.ts; runCommand does as a command ends).
 */
import { formatSize } from '@img/block';

/** What the progress printers write to. */
export interface ProgressIo {
  stderr: (text: string) => void;
}

/** The writer (stderr for the bar, stdout for qemu-img's -p) of a progress line that has not been ended, if one is open. */
let open: ((text: string) => void) | undefined;

/** Ends the open progress line, if there is one, so that what is written next starts on a line of its own. */
export function endProgressLine(): void {
  const write = open;
  open = undefined;
  write?.('\n');
}

/**
 * A progress printer on stderr: a bar with bytes done, percent, rate and
 * ETA, redrawn at most five times a second and ended with a newline when
 * done (`json`: one JSON object per line instead). With `delayMs`, nothing
 * is shown until the work has run that long.
 */
export function progressPrinter(io: ProgressIo, json: boolean, delayMs = 0): (p: { bytesDone: number; bytesTotal: number }) => void {
  const started = Date.now();
  let last = 0;
  let shown = false;
  let finished = false;
  return (p) => {
    const now = Date.now();
    const done = p.bytesDone >= p.bytesTotal;
    if (!shown && now - started < delayMs) return;
    // One line at 100 %: a second report of the end would start a new bar.
    if (finished && done) return;
    shown = true;
    if (!done && now - last < 200) return;
    last = now;
    finished = done;
    const secs = Math.max(0.001, (now - started) / 1000);
    const rate = p.bytesDone / secs;
    const pct = p.bytesTotal === 0 ? 100 : (100 * p.bytesDone) / p.bytesTotal;
    const eta = rate > 0 ? (p.bytesTotal - p.bytesDone) / rate : 0;
    if (json) {
      io.stderr(JSON.stringify({ 'bytes-done': p.bytesDone, 'bytes-total': p.bytesTotal, percent: Number(pct.toFixed(2)), rate: Math.round(rate), 'eta-seconds': Number(eta.toFixed(1)) }) + '\n');
      return;
    }
    const width = 30;
    const filled = Math.round((width * pct) / 100);
    const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
    // Redrawing the bar is not "something else written": the line is taken over, not ended.
    open = undefined;
    io.stderr(`\r[${bar}] ${pct.toFixed(1).padStart(5)}% ${formatSize(p.bytesDone)}/${formatSize(p.bytesTotal)} ${formatSize(rate)}/s ETA ${eta.toFixed(0)}s  ${done ? '\n' : ''}`);
    if (!done) open = io.stderr;
  };
}

/**
 * qemu-img's -p, for the commands spelled as qemu-img's (`img convert`,
 * `commit`, `rebase`, `compare`): `    (12.50/100%)\r` on stdout, a line at
 * the first report and then each time the work has gone `step` percent
 * further (qemu-img: 1 for convert and commit, 2 for rebase and compare),
 * `    (100.00/100%)\r` and a newline at the end. Scripts written for
 * qemu-img (oVirt's, virt-v2v's) read the percentage from there.
 */
export function qemuProgressPrinter(io: { stdout: (text: string) => void }, step = 1): (p: { bytesDone: number; bytesTotal: number }) => void {
  let last = -Infinity;
  let ended = false;
  const line = (pct: number) => {
    open = undefined;
    io.stdout(`    (${pct.toFixed(2)}/100%)\r`);
    open = io.stdout;
  };
  return (p) => {
    if (ended) return;
    const pct = p.bytesTotal <= 0 ? 100 : Math.min(100, (100 * p.bytesDone) / p.bytesTotal);
    if (last === -Infinity) {
      line(0);
      last = 0;
    }
    if (pct >= 100) {
      line(100);
      open = undefined;
      io.stdout('\n');
      ended = true;
    } else if (pct - last >= step) {
      line(pct);
      last = pct;
    }
  };
}

/** The progress bar of -p fed as (bytes done, bytes in all). */
export function bytesProgress(io: ProgressIo): (done: number, total: number) => void {
  const print = progressPrinter(io, false);
  return (bytesDone, bytesTotal) => print({ bytesDone, bytesTotal });
}
