// VHD (qemu "vpc") fixtures, all made by qemu-img / qemu-io. qemu writes a
// random unique id and the current time into the footer; `pin` replaces
// them with fixed values (and fixes the checksum) in every footer copy so
// that regenerating gives identical bytes.
//
// Dynamic disks cost a whole 2 MiB block per allocated block (qemu's
// block size), so the data fixtures write into few blocks to keep
// test-images/vhd small.
import { openSync, readSync, writeSync, closeSync, fstatSync } from 'node:fs';

const EPOCH_2020 = 631152000; // 2020-01-01T00:00:00Z in VHD time (seconds since 2000)

function checksum(buf) {
  let sum = 0;
  for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) sum += buf[i];
  return ~sum >>> 0;
}

/** Pins unique id and timestamp of the footer copies at 0 and at the end. */
function pin(path, uuidByte) {
  const fd = openSync(path, 'r+');
  try {
    const size = fstatSync(fd).size;
    for (const at of [0, size - 512]) {
      const buf = Buffer.alloc(512);
      readSync(fd, buf, 0, 512, at);
      if (buf.toString('latin1', 0, 8) !== 'conectix') continue;
      buf.writeUInt32BE(EPOCH_2020, 0x18);
      for (let i = 0; i < 16; i++) buf[0x44 + i] = (uuidByte + i * 17) & 0xff;
      buf[0x44 + 6] = (buf[0x44 + 6] & 0x0f) | 0x40;
      buf[0x44 + 8] = (buf[0x44 + 8] & 0x3f) | 0x80;
      buf.writeUInt32BE(checksum(buf), 0x40);
      writeSync(fd, buf, 0, 512, at);
    }
  } finally {
    closeSync(fd);
  }
}

function make({ path, qemuImg, qemuIo }, size, options, writes, uuidByte) {
  const args = ['create', '-q', '-f', 'vpc'];
  if (options) args.push('-o', options);
  qemuImg(...args, path, String(size));
  if (writes.length) qemuIo(path, 'vpc', ...writes);
  pin(path, uuidByte);
}

const G = 1024 ** 3;
const M = 1024 ** 2;

/** @type {import('./index.mjs').Recipe[]} */
export const recipes = [
  {
    file: 'vhd/dynamic-default.vhd',
    format: 'vhd',
    qemuFormat: 'vpc',
    description: 'dynamic, qemu-img default (creator "qemu", size rounded up to CHS: 5000000 asked), data in one block',
    expect: { type: 'dynamic', creatorApp: 'qemu', blockSize: 2 * M, uuidByte: 1, cylinders: 144, heads: 4, sectors: 17 },
    build: (ctx) => make(ctx, 5000000, '', ['write -P 0x11 2M 4k', `write -P 0x22 ${3 * M + 512} 1536`, `write -P 0x33 ${4 * M - 512} 512`], 1),
  },
  {
    file: 'vhd/dynamic-force-size.vhd',
    format: 'vhd',
    qemuFormat: 'vpc',
    description: 'dynamic, force_size=on (creator "qem2", maximal CHS, 3000064 asked, rounded up to a sector: 3000320), no data',
    expect: { type: 'dynamic', creatorApp: 'qem2', blockSize: 2 * M, uuidByte: 2 },
    build: (ctx) => make(ctx, 3000064, 'force_size=on', [], 2),
  },
  {
    file: 'vhd/dynamic-40g.vhd',
    format: 'vhd',
    qemuFormat: 'vpc',
    description: '40 GiB dynamic disk with nothing allocated (20480 BAT entries, 80 KiB file)',
    expect: { type: 'dynamic', creatorApp: 'qemu', blockSize: 2 * M, uuidByte: 3 },
    build: (ctx) => make(ctx, 40 * G, '', [], 3),
  },
  {
    file: 'vhd/fixed-default.vhd',
    format: 'vhd',
    qemuFormat: 'vpc',
    description: 'fixed, qemu-img default (300000 asked, rounded to 313344 by CHS), data at both ends',
    expect: { type: 'fixed', creatorApp: 'qemu', uuidByte: 4 },
    build: (ctx) => make(ctx, 300000, 'subformat=fixed', ['write -P 0x66 0 4k', 'write -P 0x77 300k 1k'], 4),
  },
  {
    file: 'vhd/fixed-force-size.vhd',
    format: 'vhd',
    qemuFormat: 'vpc',
    description: 'fixed, force_size=on, odd size 200704 (not CHS-exact), data in the middle',
    expect: { type: 'fixed', creatorApp: 'qem2', uuidByte: 5 },
    build: (ctx) => make(ctx, 200704, 'subformat=fixed,force_size=on', ['write -P 0x88 100k 3k'], 5),
  },
];
