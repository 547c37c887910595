// An output written as a stream into a file (a streamOptimized VMDK, an OVA) takes qemu's image locks as every other
// output does (CLI audit 3 finding 5): before, `img convert -O vmdk -o subformat=streamOptimized in.qcow2 disk.qcow2`
// truncated and overwrote disk.qcow2 while a running qemu held it for writing, where -O qcow2 or raw was refused.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, holdWithQemuIo, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-stream-lock-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

describeQemu('a stream output file that a running qemu holds', () => {
  it.each([
    ['vmdk streamOptimized', ['-O', 'vmdk', '-o', 'subformat=streamOptimized']],
    ['ova', ['-O', 'ova']],
  ])('%s: refused with ERR_IMG_LOCKED, and the held image is left as it was', async (_name, format) => {
    const src = p('src.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', src, '4M']);
    qemuIo(src, 'qcow2', ['write -P 0x11 0 1M']);
    const held = p('held.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', held, '4M']);
    qemuIo(held, 'qcow2', ['write -P 0x22 0 1M']);
    const before = readFileSync(held);
    const holder = await holdWithQemuIo(held, { format: 'qcow2' });
    try {
      const r = run('img', ['convert', ...format, src, held]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/^img convert: ERR_IMG_LOCKED: .*held\.qcow2: Failed to get "write" lock/);
      expect(readFileSync(held).equals(before)).toBe(true);
    } finally {
      await holder.stop();
    }
    // Once qemu is gone, the same command writes the file (the lock was the only reason).
    expect(run('img', ['convert', ...format, src, held]).status).toBe(0);
  });
});
