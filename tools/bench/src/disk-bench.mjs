#!/usr/bin/env node
/**
 * 4 KiB reads or writes through the Disk API of an open qcow2, `depth`
 * requests in flight, like `qemu-img bench`. Prints one JSON line:
 * { ops, seconds, iops }.
 *
 * usage: disk-bench.mjs <image.qcow2> <read|write> <count> <depth> <pattern>
 *   pattern: "random" (seeded uniform 4 KiB-aligned offsets) or
 *            "step:<bytes>" (qemu-img bench's pattern: offset += step, modulo the size)
 */
import { FileStorage } from '@img/block/node';
import { openQcow2 } from '@img/qcow2';

export async function diskBench({ path, mode, count, depth, pattern, size = 4096 }) {
  const write = mode === 'write';
  const storage = await FileStorage.open(path, { readOnly: !write });
  const disk = await openQcow2(storage, { readOnly: !write });
  try {
    const blocks = Math.floor(disk.size / size);
    let seed = 0x2545f491;
    const step = pattern.startsWith('step:') ? Number(pattern.slice(5)) : 0;
    let pos = 0;
    const nextOffset = () => {
      if (step) {
        const at = pos;
        pos = (pos + step) % (blocks * size);
        return at;
      }
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return ((seed >>> 0) % blocks) * size;
    };
    const buffers = Array.from({ length: depth }, (_, i) => new Uint8Array(size).fill(i + 1));
    let issued = 0;
    const t0 = performance.now();
    const worker = async (buf) => {
      while (issued < count) {
        issued++;
        const at = nextOffset();
        if (write) await disk.write(at, buf);
        else await disk.readInto(at, buf);
      }
    };
    await Promise.all(buffers.map(worker));
    if (write) await disk.flush();
    const seconds = (performance.now() - t0) / 1000;
    return { ops: count, seconds, iops: count / seconds };
  } finally {
    await disk.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [path, mode, count, depth, pattern] = process.argv.slice(2);
  const result = await diskBench({ path, mode, count: Number(count), depth: Number(depth), pattern: pattern ?? 'random' });
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
