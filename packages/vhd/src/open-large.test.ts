// A dynamic VHD of millions of small blocks: opening it kept an object per block and another per block's region
// (3.2 GB and 6.6 s for the 19.6 M blocks of a 1.2 TiB disk of 64 KiB blocks, where qemu-img info took 84 MB); the
// block starts are now one number each in a Float64Array, off the JavaScript heap. The image: img's own 16 GiB VHD
// of 4 KiB blocks with all 4 M BAT entries filled in file order, the blocks in a sparse tail. A Node with a 128 MB
// heap opens it; it ran out of memory before.
import { spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { tempDir } from '@img/testkit';
import { createVhdFile } from './node.js';

const tmp = tempDir('img-vhd-open-large-');
afterAll(() => tmp.cleanup());
const BLOCK = 4096;
const BLOCKS = 4 * 1024 * 1024;

/** Points every BAT entry at a block of its own, one after another past the metadata, and moves the footer to the new end. */
function fill(file: string): void {
  const fd = openSync(file, 'r+');
  try {
    const footer = Buffer.alloc(512);
    readSync(fd, footer, 0, 512, 0);
    const header = Buffer.alloc(1024);
    readSync(fd, header, 0, 1024, Number(footer.readBigUInt64BE(16)));
    const batAt = Number(header.readBigUInt64BE(16));
    const entries = header.readUInt32BE(28);
    expect(entries).toBe(BLOCKS);
    const first = Math.ceil((batAt + entries * 4) / 512);
    const stride = (512 + BLOCK) / 512;
    const bat = Buffer.alloc(entries * 4);
    for (let i = 0; i < entries; i++) bat.writeUInt32BE(first + i * stride, i * 4);
    writeSync(fd, bat, 0, bat.length, batAt);
    const end = (first + entries * stride) * 512;
    ftruncateSync(fd, end);
    writeSync(fd, footer, 0, 512, end);
  } finally {
    closeSync(fd);
  }
}

it('opens a dynamic VHD of 4 M allocated blocks in a 128 MB heap', { timeout: 60_000 }, async () => {
  const file = join(tmp.path, 'many.vhd');
  const disk = await createVhdFile(file, { size: BLOCKS * BLOCK, blockSize: BLOCK });
  await disk.close();
  fill(file);
  const dist = new URL('../dist/node.js', import.meta.url).href;
  const script = `const { openVhdFile } = await import(${JSON.stringify(dist)}); const d = await openVhdFile(${JSON.stringify(file)}); console.log(d.size); await d.close();`;
  const r = spawnSync(process.execPath, ['--max-old-space-size=128', '--input-type=module', '-e', script], { encoding: 'utf8' });
  expect([r.status, r.stdout.trim()], r.stderr.slice(-500)).toEqual([0, String(BLOCKS * BLOCK)]);
});
