import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PendingWrites } from './pending-writes.js';

const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 5));

describe('PendingWrites', () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);
  beforeEach(() => {
    unhandled.length = 0;
    process.on('unhandledRejection', onUnhandled);
  });
  afterEach(() => {
    process.off('unhandledRejection', onUnhandled);
  });

  it('holds a failure while its owner awaits other I/O, then settle throws it', async () => {
    const pending = new PendingWrites();
    pending.add(Promise.reject(new Error('refcount block write failed')));
    await tick(); // the owner builds its data meanwhile
    await tick();
    expect(unhandled).toEqual([]);
    await expect(pending.settle()).rejects.toThrow('refcount block write failed');
  });

  it('waits for every write and throws the failure of the first added, whatever failed first', async () => {
    const pending = new PendingWrites();
    let finished = 0;
    pending.add(
      tick().then(() => {
        finished++;
        throw new Error('first added');
      }),
    );
    pending.add(
      Promise.resolve().then(() => {
        finished++;
        throw new Error('first to fail');
      }),
    );
    pending.add(
      tick().then(() => {
        finished++;
      }),
    );
    await expect(pending.settle()).rejects.toThrow('first added');
    expect(finished).toBe(3);
    expect(unhandled).toEqual([]);
  });

  it('settles quietly when every write succeeds, and drain never throws', async () => {
    const pending = new PendingWrites();
    pending.add(tick());
    pending.add(Promise.resolve());
    await expect(pending.settle()).resolves.toBeUndefined();
    pending.add(Promise.reject(new Error('late')));
    await expect(pending.drain()).resolves.toBeUndefined();
    await expect(pending.settle()).rejects.toThrow('late');
  });
});
