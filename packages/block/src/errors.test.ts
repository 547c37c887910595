// The helpers that replaced inline `new ImageError(` calls keep each call site's code, wording and data.
import { describe, expect, it } from 'vitest';
import {
  abortError,
  backingReadOnlyError,
  cannotOpenError,
  chainCycleError,
  corrupt,
  ERROR_CODES,
  ImageError,
  invalidUsage,
  missingFileError,
  noResolverError,
  shown,
  storageClosedError,
  unsafe,
  unsupported,
  invalidArg,
  storageReadOnlyError,
  streamLengthError,
  unknownFormatError,
  untrustedReferenceError,
} from './errors.js';
import { MemoryStorage } from './memory-storage.js';
import { FormatRegistry } from './registry.js';

const fields = (e: ImageError) => ({ code: e.code, message: e.message, data: e.data });

describe('error helpers', () => {
  it('storage errors carry the storage words and the file', () => {
    expect(fields(storageClosedError('a.img', 'a.img: file is closed'))).toEqual({ code: ERROR_CODES.CLOSED, message: 'a.img: file is closed', data: { file: 'a.img' } });
    expect(fields(storageReadOnlyError('a.img', 'a.img: file is open read-only'))).toEqual({ code: ERROR_CODES.READ_ONLY, message: 'a.img: file is open read-only', data: { file: 'a.img' } });
  });

  it('MemoryStorage refuses writes when read-only and any use after close, in its own words', async () => {
    const s = MemoryStorage.from(new Uint8Array(512), { name: 'm', readOnly: true });
    await expect(s.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: ERROR_CODES.READ_ONLY, message: 'storage m is read-only' });
    await s.close();
    await expect(s.read(0, 1)).rejects.toMatchObject({ code: ERROR_CODES.CLOSED, message: 'm: memory storage is closed' });
  });

  it('unknown formats list the known names only when given', () => {
    expect(fields(unknownFormatError('nope'))).toEqual({ code: ERROR_CODES.UNKNOWN_FORMAT, message: 'unknown format "nope"', data: { actual: 'nope' } });
    expect(unknownFormatError('nope', ['raw', 'qcow2']).message).toBe('unknown format "nope" (known: raw, qcow2)');
    expect(() => new FormatRegistry().require('nope')).toThrow(/^unknown format "nope" \(known: /);
  });

  it('abortError names the operation and keeps the reason as cause', () => {
    const c = new AbortController();
    c.abort(new Error('stop'));
    const e = abortError(c.signal, 'rebase');
    expect([e.code, e.message, (e.cause as Error).message]).toEqual([ERROR_CODES.ABORTED, 'rebase aborted', 'stop']);
    expect(abortError(undefined).message).toBe('operation aborted');
  });

  it('the convert helpers keep their sentences', () => {
    expect(fields(backingReadOnlyError('qcow2', 'top.qcow2', 'base.qcow2'))).toEqual({
      code: ERROR_CODES.READ_ONLY,
      message: 'qcow2: top.qcow2: the backing image base.qcow2 is open read-only (open with backingWritable)',
      data: { file: 'base.qcow2' },
    });
    expect(fields(invalidUsage('input and output cannot both be streams', { field: 'input' }))).toEqual({ code: ERROR_CODES.INVALID_ARG, message: 'input and output cannot both be streams', data: { field: 'input' } });
    expect(fields(untrustedReferenceError('a.qcow2', 'backing', 'b.qcow2'))).toEqual({
      code: ERROR_CODES.UNSAFE,
      message: 'a.qcow2: refusing to open backing "b.qcow2" named inside an untrusted image',
      data: { file: 'a.qcow2', field: 'backing', actual: 'b.qcow2' },
    });
    expect(fields(streamLengthError('vhd', 100, 90))).toEqual({ code: ERROR_CODES.IO, message: 'vhd: the stream announced 100 bytes but produced 90', data: { format: 'vhd', expected: 100, actual: 90 } });
  });

  it('names an image gives are quoted on one line, their control characters as \\xNN (a backing file "b\\n\\x1b[31m.qcow2")', () => {
    const name = 'b\n\x1b[31m.qcow2';
    expect(shown(name)).toBe('b\\x0a\\x1b[31m.qcow2');
    expect(shown('plain é ✓')).toBe('plain é ✓');
    const messages = [
      missingFileError('qcow2', 'a.qcow2', 'backing file', name, `/x/${name}`, { alsoTried: [`/y/${name}`] }).message,
      cannotOpenError('qcow2', 'a.qcow2', 'backing file', name, new Error('EACCES')).message,
      noResolverError('qcow2', 'a.qcow2', 'backing file', name).message,
      untrustedReferenceError('a.qcow2', 'backing', name).message,
    ];
    for (const m of messages) {
      expect(m).toContain('"b\\x0a\\x1b[31m.qcow2"');
      expect(m).not.toSatisfy((text: string) => Array.from({ length: text.length }, (_, i) => text.charCodeAt(i)).some((c) => c < 0x20));
    }
    expect(missingFileError('qcow2', 'a.qcow2', 'backing file', name).data.expected).toBe(name);
  });

  it('every helper keeps its message on one line, whatever text a call site quotes (a bitmap or snapshot name, a path)', () => {
    const name = 'bm\n\x1b[2J\x9b';
    const messages = [
      corrupt('qcow2', 'a.qcow2', `bitmap "${name}" has granularity_bits 40`).message,
      unsupported('qcow2', `dir\n/a.qcow2`, `bitmap "${name}" has type 2`).message,
      unsafe('vmdk', 'a.vmdk', `extent "${name}"`).message,
      invalidArg('qcow2', `no persistent bitmap named "${name}"`).message,
      chainCycleError('qcow2', 'a.qcow2', `backing file "${name}"`).message,
      unknownFormatError(name).message,
    ];
    for (const m of messages) {
      expect(m).toContain('bm\\x0a\\x1b[2J\\x9b');
      expect(m).not.toSatisfy((text: string) => Array.from({ length: text.length }, (_, i) => text.charCodeAt(i)).some((c) => c < 0x20 || (c >= 0x7f && c <= 0x9f)));
    }
    expect(unsupported('qcow2', 'dir\n/a.qcow2', 'x').message).toBe('qcow2: dir\\x0a/a.qcow2: x');
    expect(corrupt('qcow2', 'a.qcow2', 'plain é ✓').message).toBe('qcow2: a.qcow2: plain é ✓');
    // Lines given as lines stay lines (qemu-img's two-line amend refusal); each is quoted on its own.
    expect(unsupported('qcow2', 'a.qcow2', ['first \x1b', 'second']).message).toBe('qcow2: a.qcow2: first \\x1b\nsecond');
  });
});
