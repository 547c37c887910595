/**
 * FaultStorage: a Storage that records every write, truncate and flush so
 * a test can ask "what would the disk hold if the machine had crashed right
 * after operation N?" under several crash models:
 *
 * - `drop`: everything not yet flushed is lost;
 * - `subset`: an arbitrary subset of the unflushed writes reached the disk
 *   (disks reorder writes between barriers);
 * - `torn`: the unflushed writes reached the disk, but the last one only
 *   partly: a prefix of it, cut at a sector boundary.
 *
 * It is the crash-consistency harness's storage: run a workload on it,
 * then open `crashImage(n, mode)` for every n and check the image. It has
 * the shape of @img/block's Storage (the testkit does not depend on block).
 */
import { ByteStorage } from './byte-storage.js';

/** One recorded operation. */
export type FaultOp = { kind: 'write'; position: number; data: Uint8Array } | { kind: 'truncate'; size: number } | { kind: 'flush' };

/** Which unflushed writes a crash keeps. */
export type CrashMode = 'drop' | 'subset' | 'torn';

/** A small deterministic PRNG (mulberry32) so crash images are reproducible from a seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A recording storage that can replay any prefix of its operations under a crash model. */
export class FaultStorage {
  readonly name: string;
  readonly readOnly = false;
  /** Every mutating operation and flush, in order. */
  readonly ops: FaultOp[] = [];
  readonly #live: ByteStorage;
  readonly #initial: Uint8Array;
  /** When set, the storage fails every operation after this many ops (simulated power loss mid-run). */
  failAfter: number | undefined;

  /** Starts from `initial` (copied), which counts as durable. */
  constructor(initial: Uint8Array = new Uint8Array(0), name = 'fault') {
    this.name = name;
    this.#initial = initial.slice();
    this.#live = new ByteStorage(initial, name);
  }

  #record(op: FaultOp): void {
    if (this.failAfter !== undefined && this.ops.length >= this.failAfter) {
      throw new Error(`${this.name}: simulated crash after ${this.failAfter} operations`);
    }
    this.ops.push(op);
  }

  size(): Promise<number> {
    return this.#live.size();
  }

  read(position: number, length: number): Promise<Uint8Array> {
    return this.#live.read(position, length);
  }

  readInto(position: number, target: Uint8Array): Promise<number> {
    return this.#live.readInto(position, target);
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.#record({ kind: 'write', position, data: data.slice() });
    await this.#live.write(position, data);
  }

  async truncate(size: number): Promise<void> {
    this.#record({ kind: 'truncate', size });
    await this.#live.truncate(size);
  }

  async flush(): Promise<void> {
    this.#record({ kind: 'flush' });
  }

  async close(): Promise<void> {}

  /** The bytes as they are now (as if nothing crashed). */
  current(): Uint8Array {
    return this.#live.toBytes();
  }

  /** Indices after which a crash is interesting: after each write or truncate. */
  crashPoints(): number[] {
    const out: number[] = [];
    this.ops.forEach((op, i) => {
      if (op.kind !== 'flush') out.push(i + 1);
    });
    return out;
  }

  /** Index of the last flush among the first `count` ops, or -1. */
  #lastFlush(count: number): number {
    for (let i = count - 1; i >= 0; i--) if (this.ops[i]!.kind === 'flush') return i;
    return -1;
  }

  /**
   * The storage contents after a crash that happened once the first
   * `count` operations had been issued. `random` drives `subset` and `torn`.
   */
  async crashImage(count: number, mode: CrashMode, random: () => number = Math.random): Promise<ByteStorage> {
    const image = new ByteStorage(this.#initial, `${this.name}@${count}:${mode}`);
    const barrier = this.#lastFlush(count);
    const apply = async (op: FaultOp, data?: Uint8Array) => {
      if (op.kind === 'write') await image.write(op.position, data ?? op.data);
      else if (op.kind === 'truncate') await image.truncate(op.size);
    };
    for (let i = 0; i <= barrier; i++) await apply(this.ops[i]!);
    const pending = this.ops.slice(barrier + 1, count).filter((op) => op.kind !== 'flush');
    if (mode === 'subset') {
      for (const op of pending) if (random() < 0.5) await apply(op);
    } else if (mode === 'torn') {
      for (const [i, op] of pending.entries()) {
        if (i < pending.length - 1 || op.kind !== 'write') {
          await apply(op);
          continue;
        }
        const sectors = Math.ceil(op.data.length / 512);
        const keep = Math.floor(random() * sectors);
        await apply(op, op.data.subarray(0, keep * 512));
      }
    }
    return image;
  }

  /** The durable contents: what survives any crash right now (all flushed operations). */
  async durableImage(): Promise<ByteStorage> {
    return this.crashImage(this.#lastFlush(this.ops.length) + 1, 'drop');
  }
}
