import { describe, expect, it } from 'vitest';
import { checkOptionKeys, driverOptions, type OptionTable } from './create-options.js';
import { createRaw } from './raw.js';
import { MemoryStorage } from './memory-storage.js';

const TABLE: OptionTable = [
  { key: 'size', name: 'size', kind: 'size', help: 'Virtual disk size' },
  { key: 'clusterSize', name: 'cluster_size', kind: 'size', help: 'cluster size' },
];

describe('checkOptionKeys', () => {
  it('lists the options a caller sets, not the keys the plumbing passes (resolver, formats, noBacking)', () => {
    expect(() => checkOptionKeys('fmt', TABLE, { size: 1, backingFile: 'b.qcow2' }, ['uuid'])).toThrow('fmt: unknown create option "backingFile" (known options: size, clusterSize, uuid)');
  });

  it('accepts the plumbing keys and suggests a close spelling', () => {
    expect(() => checkOptionKeys('fmt', TABLE, { size: 1, resolver: () => undefined, formats: {}, noBacking: true })).not.toThrow();
    expect(() => checkOptionKeys('fmt', TABLE, { cluster_size: 1 })).toThrow(/did you mean clusterSize\?/);
  });

  it("a raw image given a backing file names raw's own options only", async () => {
    const error = await createRaw(new MemoryStorage(), { size: 512, backingFile: 'b.qcow2' } as never).catch((e: unknown) => e as Error);
    expect((error as Error).message).toMatch(/^raw: unknown create option "backingFile" \(known options: size, preallocation\b.*\)$/);
    expect((error as Error).message).not.toMatch(/resolver|formats|noBacking/);
  });
});

describe('driverOptions', () => {
  it('takes typed keys and -o names alike and answers typed keys', () => {
    expect(driverOptions('fmt', TABLE, { size: 1, cluster_size: '64k', resolver: undefined })).toEqual({ size: 1, clusterSize: '64k' });
    expect(driverOptions('fmt', TABLE, { size: 1, clusterSize: 512, uuid: 'u' }, { extra: ['uuid'] })).toEqual({ size: 1, clusterSize: 512, uuid: 'u' });
  });

  it('refuses a key given in both spellings, and lists both spellings of what the call takes', () => {
    expect(() => driverOptions('fmt', TABLE, { clusterSize: 512, cluster_size: '64k' })).toThrow('fmt: create option "clusterSize" is given twice, as clusterSize and as cluster_size');
    expect(() => driverOptions('fmt', TABLE, { zzz: 1 }, { extra: ['chunkSize'], what: 'stream option' })).toThrow('fmt: unknown stream option "zzz" (known options: size, clusterSize (cluster_size), chunkSize)');
    expect(() => driverOptions('fmt', TABLE, { clustersize: 1 })).toThrow(/did you mean clusterSize\?/);
  });
});
