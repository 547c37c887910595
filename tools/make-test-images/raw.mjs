// Raw fixtures. The demo image is what the README's first command converts.
import { writeFileSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { noise as pattern } from './lib.mjs';

function sparseFile(path, size, pieces) {
  writeFileSync(path, '');
  truncateSync(path, size);
  const fd = openSync(path, 'r+');
  try {
    for (const [offset, data] of pieces) writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** @type {import('./index.mjs').Recipe[]} */
export const recipes = [
  {
    file: 'raw/demo.img',
    format: 'raw',
    description: '8 MiB sparse raw disk with 1.5 MiB of data in 3 places (the README demo)',
    build({ path }) {
      sparseFile(path, 8 * 1024 * 1024, [
        [0, pattern(512 * 1024, 1)],
        [5 * 1024 * 1024, pattern(512 * 1024, 2)],
        [7 * 1024 * 1024 + 4096, pattern(512 * 1024, 3)],
      ]);
    },
  },
  {
    file: 'raw/odd-size.img',
    format: 'raw',
    description: 'raw file of 1000003 bytes: a 1000448-byte disk, zero padded',
    build({ path }) {
      sparseFile(path, 1000003, [
        [1000003 - 3000, pattern(3000, 4)],
        [0, pattern(1000, 5)],
      ]);
    },
  },
  {
    file: 'raw/empty.img',
    format: 'raw',
    description: 'zero-length raw file',
    build({ path }) {
      writeFileSync(path, '');
    },
  },
];
