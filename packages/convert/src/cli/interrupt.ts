/**
 * Ctrl-C (SIGINT), SIGTERM and SIGHUP during a long command. The command
 * stops through an AbortSignal, cleans up, and exits as a shell expects of
 * a process that a signal ended: 128 + the signal's number, 130 for SIGINT,
 * 143 for SIGTERM (`timeout`, `kill`, systemd and container runtimes send
 * SIGTERM, and scripts tell the two apart by the status) and 129 for SIGHUP
 * (the terminal or ssh session the command ran in went away: its partial
 * output is removed as after Ctrl-C, not left behind).
 *
 * Signals come in bursts: two Ctrl-C, or `timeout -s INT`, which signals
 * the process and its group. A signal that ended the process the default
 * way while a command cleans up would leave a half-written output behind,
 * without a word. So once a command has been interrupted, every later
 * SIGINT, SIGTERM and SIGHUP is absorbed until the process exits: the cleanup
 * (removing a partial output, closing an image consistently) always runs
 * to its end, and the status is the first signal's.
 *
 * A signal that comes once the command's long work is done (its output
 * complete, as it ends: closing, printing a summary) is held until the
 * command returns, which then says that its work was complete and exits
 * with that signal's status; a second such signal ends the process at
 * once. Before, it ended the process the default way, with nothing said,
 * and a script saw 130 beside a complete output.
 */
import { constants } from 'node:os';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** The first signal that stopped a command in this process. */
let received: (typeof SIGNALS)[number] | undefined;

/** Later signals, absorbed from the first one on (installed once, kept until the process exits). */
let absorbing = false;

/** A signal that came after a command's long work was done, held until it returns (see lateSignalStatus). */
let late: (typeof SIGNALS)[number] | undefined;
let holding = false;
/** The command running, as its messages name it ("img convert"), for what a late signal says. */
let commandName = 'img';

/** Names the command running, for the line a signal after its work says ({@link lateSignalLine}). */
export function setCommandName(name: string): void {
  commandName = name;
}

/** What a command says when a signal came after its work was done. */
export function lateSignalLine(): string {
  return `${commandName}: interrupted after its work was done: what it wrote is complete\n`;
}

function holdLateSignals(): void {
  if (holding || absorbing) return;
  holding = true;
  for (const signal of SIGNALS) {
    process.on(signal, () => {
      if (absorbing) return;
      // A second one: the user means it, whatever is left to do.
      if (late !== undefined) {
        process.stderr.write(lateSignalLine());
        process.exit(128 + constants.signals[late]);
      }
      late = signal;
    });
  }
}

function absorbLaterSignals(): void {
  if (absorbing) return;
  absorbing = true;
  // A listener of its own keeps Node from ending the process on these signals; it does not keep the process alive.
  for (const signal of SIGNALS) process.on(signal, () => undefined);
}

/**
 * Aborts `controller` at the first SIGINT, SIGTERM or SIGHUP, and remembers which
 * one came. From then on, further signals are absorbed until the process
 * exits, so the command's cleanup cannot be cut short. Returns the
 * function to call once the command's long work is done: a signal after
 * that is held for {@link lateSignalStatus}.
 */
export function abortOnSignals(controller: AbortController): () => void {
  const installed = SIGNALS.map((signal) => {
    const handler = () => {
      received ??= signal;
      absorbLaterSignals();
      controller.abort(new Error('interrupted'));
    };
    process.on(signal, handler);
    return [signal, handler] as const;
  });
  return () => {
    for (const [signal, handler] of installed) process.off(signal, handler);
    if (received === undefined) holdLateSignals();
  };
}

/**
 * The exit status of a command that finished its work before a signal
 * came (128 + the signal's number), or undefined when none came after it.
 */
export function lateSignalStatus(): number | undefined {
  return late === undefined ? undefined : 128 + constants.signals[late];
}

/** Whether a SIGINT, SIGTERM or SIGHUP has stopped a command in this process. */
export function wasInterrupted(): boolean {
  return received !== undefined;
}

/** The exit status of a command a signal stopped: 130 after SIGINT, 143 after SIGTERM, 129 after SIGHUP. */
export function interruptedStatus(): number {
  return 128 + constants.signals[received ?? 'SIGINT'];
}
