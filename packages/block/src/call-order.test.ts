import { describe, expect, it } from 'vitest';
import { CallOrder } from './call-order.js';

/** A promise with its resolve function outside. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

describe('CallOrder', () => {
  it('starts an operation at once when nothing registered overlaps it', () => {
    const order = new CallOrder();
    let started = false;
    void order.run(0, 10, () => ((started = true), Promise.resolve()));
    expect(started).toBe(true);
    expect(order.size).toBe(0);
  });

  it('holds an overlapping operation until a registered one has finished, and chains through it', async () => {
    const order = new CallOrder();
    const log: string[] = [];
    const slow = gate();
    const a = order.run(
      0,
      10,
      async () => {
        await slow.promise;
        log.push('a');
      },
      { register: true },
    );
    // Overlaps a: waits for it, and registers itself.
    const b = order.run(5, 10, async () => void log.push('b'));
    // Overlaps b only: waits for b (which waits for a).
    const c = order.run(12, 1, async () => void log.push('c'));
    // Overlaps nothing registered: runs now.
    const d = order.run(100, 1, async () => void log.push('d'));
    expect(order.size).toBe(3);
    await Promise.resolve();
    expect(log).toEqual(['d']);
    slow.open();
    await Promise.all([a, b, c, d]);
    expect(log).toEqual(['d', 'a', 'b', 'c']);
    expect(order.size).toBe(0);
  });

  it('counts a failed operation as finished, and an Infinity length covers every later offset', async () => {
    const order = new CallOrder();
    const failing = order.run(0, 1, () => Promise.reject(new Error('no')), { register: true });
    const all = order.run(0, Infinity, () => Promise.resolve('all'));
    await expect(failing).rejects.toThrow('no');
    await expect(all).resolves.toBe('all');
    let later = false;
    const held = gate();
    const whole = order.run(0, Infinity, () => held.promise, { register: true });
    const after = order.run(2 ** 50, 1, async () => void (later = true));
    await Promise.resolve();
    expect(later).toBe(false);
    held.open();
    await Promise.all([whole, after]);
    expect(later).toBe(true);
  });
});
