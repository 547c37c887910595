import { describe, expect, it } from 'vitest';
import { startedAhead } from './started.js';

describe('startedAhead', () => {
  it('a rejection before anything awaits it is no unhandled rejection, and awaiting it later still throws', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const failure = new Error('read failed');
      const p = startedAhead(Promise.reject(failure));
      // Let the platform look for unhandled rejections before anything awaits it.
      await new Promise((r) => setImmediate(r));
      expect(unhandled).toEqual([]);
      await expect(p).rejects.toBe(failure);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it("answers the same promise: its value is the work's", async () => {
    const work = Promise.resolve(42);
    expect(startedAhead(work)).toBe(work);
    expect(await startedAhead(work)).toBe(42);
  });
});
