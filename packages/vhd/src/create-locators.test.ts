// The parent locators a new differencing disk records for an absolute parent name: the relative one is the way
// from the child's directory (never ".\" glued to an absolute path), or left out where the child's own path is relative.
import { MemoryStorage } from '@img/block';
import { describe, expect, it } from 'vitest';
import { createVhd } from './create.js';

const utf16 = (s: string) => Buffer.from(s, 'utf16le');

async function childBytes(childName: string, parentPath: string): Promise<Buffer> {
  const parent = await createVhd(new MemoryStorage({ name: parentPath }), { size: 4 << 20 });
  const storage = new MemoryStorage({ name: childName });
  const child = await createVhd(storage, { parent: { disk: parent, relativePath: parentPath, absolutePath: parentPath } });
  await child.close();
  return Buffer.from(storage.toBytes());
}

describe('parent locators for an absolute parent name', () => {
  it('record the relative way from an absolute child path', async () => {
    const bytes = await childBytes('/srv/vm/disks/child.vhd', '/srv/vm/base.vhd');
    expect(bytes.includes(utf16('..\\base.vhd'))).toBe(true);
    expect(bytes.includes(utf16('/srv/vm/base.vhd'))).toBe(true);
    expect(bytes.includes(utf16('.\\\\srv'))).toBe(false);
    expect(bytes.includes(utf16('.\\/srv'))).toBe(false);
  });

  it('record only the absolute locators when the child path is relative', async () => {
    const bytes = await childBytes('child.vhd', '/srv/vm/base.vhd');
    expect(bytes.includes(utf16('/srv/vm/base.vhd'))).toBe(true);
    expect(bytes.includes(utf16('.\\'))).toBe(false);
  });
});
