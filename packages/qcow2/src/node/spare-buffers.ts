/**
 * Buffers that compressed clusters are written into, kept for reuse from
 * one call to the next (the worker pool's jobs, compress-pool.ts; the
 * native helper's calls, native-zstd.ts): at most `max` of them, each at
 * least `minBytes`, and none once the compressor has been idle for
 * `idleMs`, so a long-lived process does not keep them. The buffers behind
 * an answer are recorded with it (`lend`) and come back when the caller
 * is done with the answer (`release`).
 */
export class SpareBuffers {
  readonly #free: ArrayBuffer[] = [];
  readonly #lent = new WeakMap<object, readonly ArrayBuffer[]>();
  #trim: ReturnType<typeof setTimeout> | undefined;
  #idle = false;

  constructor(
    readonly max: number,
    readonly minBytes: number,
    readonly idleMs = 2000,
  ) {}

  /** A buffer of at least `room` bytes: a spare one that is large enough, else a new one (at least `minBytes`). */
  take(room: number): ArrayBuffer {
    for (let i = this.#free.length - 1; i >= 0; i--) if (this.#free[i]!.byteLength >= room) return this.#free.splice(i, 1)[0]!;
    return new ArrayBuffer(Math.max(this.minBytes, room));
  }

  /** Keeps `buffers` for reuse (past `max`, or smaller than `minBytes`, they go to the garbage collector). */
  give(buffers: readonly ArrayBuffer[]): void {
    for (const b of buffers) if (this.#free.length < this.max && b.byteLength >= this.minBytes) this.#free.push(b);
    if (this.#idle) this.#schedule();
  }

  /** Records the buffers behind `answer`, for {@link release}. */
  lend(answer: object, buffers: readonly ArrayBuffer[]): void {
    this.#lent.set(answer, buffers);
  }

  /** Takes back the buffers lent with `answer` once its bytes are written; twice, or anything else, is ignored. */
  release(answer: object | undefined): void {
    const buffers = answer && this.#lent.get(answer);
    if (!buffers) return;
    this.#lent.delete(answer!);
    this.give(buffers);
  }

  /** Work is under way: the spares stay. */
  busy(): void {
    this.#idle = false;
    if (this.#trim !== undefined) clearTimeout(this.#trim);
    this.#trim = undefined;
  }

  /** Nothing to do: the spares go after `idleMs`, unless {@link busy} comes first. */
  idle(): void {
    this.#idle = true;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#trim !== undefined) return;
    this.#trim = setTimeout(() => {
      this.#trim = undefined;
      if (this.#idle) this.#free.length = 0;
    }, this.idleMs);
    this.#trim.unref();
  }
}
