/**
 * The operations a Disk has under way, so that its close() can wait for them.
 *
 * The Disk contract lets a caller start operations without awaiting them
 * (write, write, write, close). A format's close tears down what those
 * operations use (caches, tables, the storage), so it first waits for
 * every operation called before it to settle, and then flushes and closes;
 * an operation called once close() has started is refused with
 * ERR_IMG_CLOSED rather than run against an image being closed. Each
 * format's Disk facade owns one and runs every public method's body
 * through it.
 */
import { diskClosedError } from './errors.js';

/**
 * Operations under way on one Disk, and its close.
 *
 * @example
 * ```ts
 * readonly #ops = new DiskOperations('qcow2', () => this.storage.name);
 * write(offset: number, data: Uint8Array): Promise<void> {
 *   return this.#ops.run(() => writeQcow2(this.#core, offset, data));
 * }
 * close(): Promise<void> {
 *   return this.#ops.close(() => closeQcow2(this.#core));
 * }
 * ```
 */
export class DiskOperations {
  readonly #format: string;
  readonly #file: () => string | undefined;
  #active = 0;
  #idle: (() => void) | undefined;
  #closing: Promise<void> | undefined;

  /** `format` and `file` (the storage's name, asked when needed) name the disk in ERR_IMG_CLOSED. */
  constructor(format: string, file: () => string | undefined) {
    this.#format = format;
    this.#file = file;
  }

  /** True once close() has been called (the disk refuses new operations). */
  get closing(): boolean {
    return this.#closing !== undefined;
  }

  /** Operations under way (for tests). */
  get active(): number {
    return this.#active;
  }

  /** Throws ERR_IMG_CLOSED once close() has been called: for methods that answer at once (extents). */
  check(): void {
    if (this.#closing) throw diskClosedError(this.#format, this.#file());
  }

  /**
   * Runs `op` now (it starts before this returns, so operations keep
   * their call order) and counts it as under way until it settles. Once
   * close() has been called, answers ERR_IMG_CLOSED without running it.
   * The answer is `op`'s, failures included; a synchronous throw becomes
   * a rejection.
   */
  run<T>(op: () => Promise<T>): Promise<T> {
    if (this.#closing) return Promise.reject(diskClosedError(this.#format, this.#file()));
    let result: Promise<T>;
    try {
      result = op();
    } catch (e) {
      return Promise.reject(e);
    }
    this.#active++;
    return result.finally(() => {
      if (--this.#active === 0) this.#idle?.();
    });
  }

  /**
   * Closes the disk once: refuses new operations from now on, waits for
   * every operation under way to settle (failed ones too), then runs
   * `closeAll` (the format's flush and close). A later call waits for the
   * same close and resolves when it has ended, whether it failed or not
   * (the first call reports the failure).
   */
  close(closeAll: () => Promise<void>): Promise<void> {
    if (this.#closing) return this.#closing.then(ignore, ignore);
    this.#closing = this.#settled().then(closeAll);
    return this.#closing;
  }

  async #settled(): Promise<void> {
    while (this.#active > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
    this.#idle = undefined;
  }
}

function ignore(): void {}
