/**
 * Ctrl-C (SIGINT) and SIGTERM during a long command. The command stops
 * through an AbortSignal, cleans up, and exits as a shell expects of a
 * process that a signal ended: 128 + the signal's number, 130 for SIGINT
 * and 143 for SIGTERM (`timeout`, `kill`, systemd and container runtimes
 * send SIGTERM, and scripts tell the two apart by the status).
 */
import { constants } from 'node:os';

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

/** The first signal that stopped a command in this process. */
let received: (typeof SIGNALS)[number] | undefined;

/**
 * Aborts `controller` at the first SIGINT or SIGTERM, and remembers which
 * one came. Each handler fires once: a second Ctrl-C ends the process the
 * default way. Returns the function that removes the handlers.
 */
export function abortOnSignals(controller: AbortController): () => void {
  const installed = SIGNALS.map((signal) => {
    const handler = () => {
      received ??= signal;
      controller.abort(new Error('interrupted'));
    };
    process.once(signal, handler);
    return [signal, handler] as const;
  });
  return () => {
    for (const [signal, handler] of installed) process.off(signal, handler);
  };
}

/** The exit status of a command a signal stopped: 130 after SIGINT, 143 after SIGTERM. */
export function interruptedStatus(): number {
  return 128 + constants.signals[received ?? 'SIGINT'];
}
