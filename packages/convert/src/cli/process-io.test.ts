// stderr before anything made its stream: written to descriptor 2 directly; what a non-blocking descriptor cannot take now goes to the stream.
import { afterEach, describe, expect, it, vi } from 'vitest';

const direct: string[] = [];
/** Bytes descriptor 2 takes before it answers EAGAIN (undefined: all). */
let room: number | undefined;

vi.mock('node:fs', async (original) => {
  const fs = await original<typeof import('node:fs')>();
  return {
    ...fs,
    writeSync: (fd: number, bytes: Uint8Array, offset = 0) => {
      if (fd !== 2) return fs.writeSync(fd, bytes, offset);
      const n = Math.min(room ?? Infinity, bytes.length - offset);
      if (n === 0) throw Object.assign(new Error('EAGAIN: resource temporarily unavailable, write'), { code: 'EAGAIN' });
      if (room !== undefined) room -= n;
      direct.push(Buffer.from(bytes.subarray(offset, offset + n)).toString());
      return n;
    },
  };
});

const saved = { stdout: Object.getOwnPropertyDescriptor(process, 'stdout')!, stderr: Object.getOwnPropertyDescriptor(process, 'stderr')! };

/** A fresh copy of process-io with its guard installed (its exit handlers taken off again), and a spy on stderr's stream. */
async function guarded() {
  const stream = process.stderr;
  const streamWrites: string[] = [];
  vi.spyOn(stream, 'write').mockImplementation((chunk: string | Uint8Array) => {
    streamWrites.push(Buffer.from(chunk).toString());
    return true;
  });
  vi.resetModules();
  const io = await import('./process-io.js');
  const before = { e: process.listeners('uncaughtException'), r: process.listeners('unhandledRejection') };
  io.guardProcess({ prog: 'test', internalErrorStatus: 1 });
  for (const l of process.listeners('uncaughtException')) if (!before.e.includes(l)) process.off('uncaughtException', l);
  for (const l of process.listeners('unhandledRejection')) if (!before.r.includes(l)) process.off('unhandledRejection', l);
  return { io, streamWrites };
}

afterEach(() => {
  Object.defineProperty(process, 'stdout', saved.stdout);
  Object.defineProperty(process, 'stderr', saved.stderr);
  vi.restoreAllMocks();
  direct.length = 0;
  room = undefined;
});

describe('processIo.stderr while nothing has made stderr’s stream', () => {
  it('writes to descriptor 2 itself, and the stream is left unmade', async () => {
    const { io, streamWrites } = await guarded();
    io.processIo.stderr('img-convert: converted a -> b\n');
    expect(direct).toEqual(['img-convert: converted a -> b\n']);
    expect(streamWrites).toEqual([]);
    // Still behind the guard's getter: nothing asked for the stream.
    expect(Object.getOwnPropertyDescriptor(process, 'stderr')).not.toEqual(saved.stderr);
  });

  it('hands what a non-blocking descriptor could not take (EAGAIN) to the stream, in order', async () => {
    const { io, streamWrites } = await guarded();
    room = 5;
    io.processIo.stderr('img-convert: converted a -> b\n');
    expect(direct).toEqual(['img-c']);
    expect(streamWrites).toEqual(['onvert: converted a -> b\n']);
    // Once the stream is made, every later line goes through it.
    io.processIo.stderr('second\n');
    expect(direct).toEqual(['img-c']);
    expect(streamWrites).toEqual(['onvert: converted a -> b\n', 'second\n']);
  });
});
