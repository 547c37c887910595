import { describe, expect, it } from 'vitest';
import { DiskOperations } from './disk-operations.js';
import { startedAhead } from './started.js';
import { MemoryStorage } from './memory-storage.js';
import { createRaw } from './raw.js';

const later = <T>(ms: number, value: T) => new Promise<T>((r) => setTimeout(() => r(value), ms));

describe('DiskOperations', () => {
  it('close waits for the operations called before it (failed ones too), then closes once; later ones are ERR_IMG_CLOSED', async () => {
    const ops = new DiskOperations('test', () => 'a.img');
    const order: string[] = [];
    const slow = ops.run(async () => {
      await later(30, 0);
      order.push('slow');
      return 1;
    });
    // Awaited only after close: marked as handled, as a caller that awaits later does.
    const failing = startedAhead(
      ops.run(async () => {
        await later(10, 0);
        order.push('failing');
        throw new Error('boom');
      }),
    );
    const thrown = startedAhead(
      ops.run(() => {
        throw new Error('at once');
      }),
    );
    expect(ops.active).toBe(2);
    const closing = ops.close(async () => {
      order.push('close');
    });
    expect(ops.closing).toBe(true);
    const late = startedAhead(ops.run(async () => 2));
    const second = ops.close(async () => {
      order.push('closed twice');
    });
    await closing;
    await second;
    expect(order).toEqual(['failing', 'slow', 'close']);
    expect(await slow).toBe(1);
    await expect(failing).rejects.toThrow('boom');
    await expect(thrown).rejects.toThrow('at once');
    await expect(late).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED', message: 'test: a.img: disk is closed' });
    expect(() => ops.check()).toThrow(expect.objectContaining({ code: 'ERR_IMG_CLOSED' }) as Error);
  });

  it('an operation starts before run() returns (call order is kept)', () => {
    const ops = new DiskOperations('test', () => undefined);
    let started = false;
    void ops.run(async () => {
      started = true;
    });
    expect(started).toBe(true);
  });

  it('a second close resolves even when the first one failed', async () => {
    const ops = new DiskOperations('test', () => undefined);
    await expect(ops.close(() => Promise.reject(new Error('flush failed')))).rejects.toThrow('flush failed');
    await expect(ops.close(async () => {})).resolves.toBeUndefined();
  });

  it('RawDisk: writes called before close land; a resize under way finishes its zeroing', async () => {
    const storage = new MemoryStorage();
    const disk = await createRaw(storage, { size: 1 << 20 });
    const writes = Array.from({ length: 50 }, (_, k) => disk.write(k * 4096, new Uint8Array(4096).fill(k + 1)));
    const resize = disk.resize(2 << 20, { preallocation: 'full' });
    await disk.close();
    await Promise.all(writes);
    await resize;
    const bytes = storage.toBytes();
    expect(bytes.length).toBe(2 << 20);
    for (let k = 0; k < 50; k++) expect(bytes[k * 4096 + 100]).toBe(k + 1);
    await expect(disk.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_IMG_CLOSED' });
  });
});
