/**
 * Work started ahead of the point where it is awaited: read-ahead, blocks
 * compressed a few at a time, reads gathered and judged together.
 */

/**
 * Marks `work` as started now and awaited later, and answers it. A
 * promise that rejects before anything awaits it is reported by the
 * platform as an unhandled rejection (and Node ends the process), even
 * when the caller would have awaited it a moment later, or would have
 * stopped early on an earlier failure and never awaited it: this attaches
 * a handler at once, so neither happens. The failure itself is not
 * swallowed: awaiting the returned promise (the same one) throws it.
 *
 * ```ts
 * const next = startedAhead(readBlock(k + 1)); // read-ahead
 * const here = await readBlock(k);
 * ```
 */
export function startedAhead<T>(work: Promise<T>): Promise<T> {
  work.then(undefined, ignore);
  return work;
}

function ignore(): void {}
