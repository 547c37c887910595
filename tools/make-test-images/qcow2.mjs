// qcow2 fixtures, built with qemu-img and qemu-io only (plus a few header
// patches for feature bits qemu never writes). Every backing and data file
// name is relative, so the fixtures work from any checkout: each command
// runs with the fixture's directory as its working directory.
//
// Sizes are kept small (the whole directory well under 3 MiB): most
// fixtures use 4 KiB or 512-byte clusters; 2 MiB clusters and the 1 TiB
// sparse image are generated at test time by packages/qcow2 instead.
import { closeSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { noise, run } from './lib.mjs';

function img(dir, ...args) {
  return run('qemu-img', args, { cwd: dir }).stdout;
}

function io(dir, file, ...commands) {
  const args = ['-f', 'qcow2'];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  const r = run('qemu-io', args, { cwd: dir });
  if (/error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io ${commands.join('; ')} on ${file}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Compressible but not trivial: text-like lines with counters. */
function text(length, seed) {
  let s = '';
  for (let i = 0; s.length < length; i++) s += `line ${i} of block ${seed}: the quick brown fox ${(i * 7919 + seed) % 1000}\n`;
  return Buffer.from(s.slice(0, length));
}

/** A raw source for convert -c: text, noise, zeros and a pattern, `size` bytes. */
function mixedRaw(path, size, unit) {
  const buf = Buffer.alloc(size);
  let pos = 0;
  let i = 0;
  while (pos < size) {
    const n = Math.min(unit * (1 + (i % 3)), size - pos);
    switch (i % 5) {
      case 0:
        text(n, i).copy(buf, pos);
        break;
      case 1:
        noise(n, i + 1).copy(buf, pos);
        break;
      case 2:
        break; // zeros
      case 3:
        buf.fill(0x5a, pos, pos + n);
        break;
      case 4:
        text(n >> 1, i).copy(buf, pos);
        noise(n - (n >> 1), i).copy(buf, pos + (n >> 1));
        break;
    }
    pos += n;
    i++;
  }
  writeFileSync(path, buf);
}

function withTemp(fn) {
  const dir = mkdtempSync(join(tmpdir(), 'mkqcow2-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Compressed image from a mixed raw source. */
function compressed(path, dir, { clusterSize, type, size }) {
  withTemp((tmp) => {
    const src = join(tmp, 'src.raw');
    mixedRaw(src, size, clusterSize);
    img(dir, 'convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${clusterSize},compression_type=${type}`, src, basename(path));
  });
}

/** Reads/patches the header in place. */
function patchHeader(path, fn) {
  const fd = openSync(path, 'r+');
  try {
    const buf = Buffer.alloc(4096);
    readSync(fd, buf, 0, buf.length, 0);
    fn(buf);
    writeSync(fd, buf, 0, buf.length, 0);
  } finally {
    closeSync(fd);
  }
}

const startCwd = process.cwd();
const K = 1024;
const M = 1024 * 1024;

function create(dir, path, size, opts, ...extra) {
  img(dir, 'create', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), ...extra, basename(path), String(size));
}

const refcountRecipes = [1, 2, 4, 8, 16, 32, 64].map((bits) => ({
  file: `qcow2/refcount-${bits}.qcow2`,
  format: 'qcow2',
  description: `v3, 4 KiB clusters, refcount_bits=${bits}`,
  build({ path, dir }) {
    create(dir, path, 128 * K, `cluster_size=4k,refcount_bits=${bits}`);
    io(dir, basename(path), 'write -P 0x11 0 6k', 'write -P 0x22 64k 4k', 'write -z 100k 8k');
  },
}));

const compressionRecipes = [];
for (const type of ['zlib', 'zstd']) {
  for (const [cs, label, size] of [
    [512, '512', 24 * K],
    [4 * K, '4k', 96 * K],
    [64 * K, '64k', 128 * K],
  ]) {
    compressionRecipes.push({
      file: `qcow2/compressed-${type}-${label}.qcow2`,
      format: 'qcow2',
      description: `qemu-img convert -c, compression_type=${type}, ${label} clusters, text/noise/zero/pattern clusters`,
      build({ path, dir }) {
        compressed(path, dir, { clusterSize: cs, type, size });
      },
    });
  }
}

/** @type {import('./index.mjs').Recipe[]} */
export const recipes = [
  {
    file: 'qcow2/v3-64k.qcow2',
    format: 'qcow2',
    description: 'v3 defaults (64 KiB clusters): data, a partial cluster, a zero cluster, holes',
    build({ path, dir }) {
      create(dir, path, 1 * M);
      io(dir, basename(path), 'write -P 0xab 0 40k', 'write -z 512k 64k', 'write -P 0xef 1000k 24k');
    },
  },
  {
    file: 'qcow2/v2-4k.qcow2',
    format: 'qcow2',
    description: 'compat=0.10 (v2, 72-byte header), 4 KiB clusters, writes, zero writes and a discard',
    build({ path, dir }) {
      create(dir, path, 256 * K, 'compat=0.10,cluster_size=4k');
      io(dir, basename(path), 'write -P 0x01 0 20k', 'write -P 0x02 33k 7k', 'write -z 8k 4k', 'discard 12k 4k', 'write -P 0x03 250k 6k');
    },
  },
  {
    file: 'qcow2/v3-512.qcow2',
    format: 'qcow2',
    description: '512-byte clusters (L2 tables of 64 entries, many L1 entries), scattered unaligned writes',
    build({ path, dir }) {
      create(dir, path, 192 * K, 'cluster_size=512');
      io(dir, basename(path), 'write -P 0x31 0 3k', 'write -P 0x32 33000 9000', 'write -P 0x33 100k 1k', 'write -z 1k 1k', 'write -P 0x34 191k 1k');
    },
  },
  ...refcountRecipes,
  {
    file: 'qcow2/zero-clusters.qcow2',
    format: 'qcow2',
    description: 'v3 zero clusters of both kinds: preallocated (host offset kept) and plain (unmapped)',
    build({ path, dir }) {
      create(dir, path, 128 * K, 'cluster_size=4k');
      io(dir, basename(path), 'write -P 0x44 0 32k', 'write -z 4k 8k', 'write -z -u 16k 8k', 'write -z -u 64k 16k');
    },
  },
  {
    file: 'qcow2/discard.qcow2',
    format: 'qcow2',
    description: 'v3, data then discards (whole and partial clusters)',
    build({ path, dir }) {
      create(dir, path, 128 * K, 'cluster_size=4k');
      io(dir, basename(path), 'write -P 0x55 0 64k', 'discard 8k 8k', 'discard 30k 3k', 'discard 40k 12k');
    },
  },
  ...compressionRecipes,
  {
    file: 'qcow2/compressed-overwritten.qcow2',
    format: 'qcow2',
    description: 'zlib-compressed 4 KiB clusters partially overwritten (COW from compressed), zeroed and discarded',
    build({ path, dir }) {
      compressed(path, dir, { clusterSize: 4 * K, type: 'zlib', size: 96 * K });
      io(dir, basename(path), 'write -P 0x66 2k 1k', 'write -P 0x67 20k 12k', 'write -z 40k 4k', 'discard 48k 4k', 'discard 60k 4k', 'write -c -P 0x68 60k 4k');
    },
  },
  {
    file: 'qcow2/extended-l2.qcow2',
    format: 'qcow2',
    description: 'extended L2 entries, 16 KiB clusters (512-byte subclusters): partial subcluster writes, zeroed subclusters',
    build({ path, dir }) {
      create(dir, path, 512 * K, 'cluster_size=16k,extended_l2=on');
      io(dir, basename(path), 'write -P 0x71 0 3k', 'write -P 0x72 5k 1500', 'write -z 1k 1k', 'write -P 0x73 64k 32k', 'write -z 70k 4k', 'write -z 200k 40k', 'write -P 0x74 300k 1k');
    },
  },
  {
    file: 'qcow2/extended-l2-base.qcow2',
    format: 'qcow2',
    description: 'backing file of extended-l2-overlay.qcow2: data in the first 64 KiB and at 128 KiB',
    build({ path, dir }) {
      create(dir, path, 256 * K, 'cluster_size=16k');
      io(dir, basename(path), 'write -P 0x81 0 64k', 'write -P 0x85 128k 32k');
    },
  },
  {
    file: 'qcow2/extended-l2-overlay.qcow2',
    format: 'qcow2',
    description: 'extended L2 over a backing file: unallocated subclusters of allocated clusters read from the backing file',
    build({ path, dir }) {
      create(dir, path, 256 * K, 'cluster_size=16k,extended_l2=on', '-b', 'extended-l2-base.qcow2', '-F', 'qcow2');
      io(dir, basename(path), 'write -P 0x82 2k 1k', 'write -P 0x83 40k 3k', 'write -z 50k 2k', 'write -P 0x84 130k 1k', 'write -z 140k 1k');
    },
  },
  {
    file: 'qcow2/chain-base.qcow2',
    format: 'qcow2',
    description: 'chain layer 2 (bottom): 256 KiB',
    build({ path, dir }) {
      create(dir, path, 256 * K, 'cluster_size=4k');
      io(dir, basename(path), 'write -P 0x91 0 48k', 'write -P 0x92 64k 16k', 'write -P 0x93 232k 24k');
    },
  },
  {
    file: 'qcow2/chain-mid.qcow2',
    format: 'qcow2',
    description: 'chain layer 1: 384 KiB over chain-base.qcow2, zero clusters over backing data',
    build({ path, dir }) {
      create(dir, path, 384 * K, 'cluster_size=4k', '-b', 'chain-base.qcow2', '-F', 'qcow2');
      io(dir, basename(path), 'write -P 0xa1 16k 16k', 'write -z 64k 16k', 'write -P 0xa2 300k 8k');
    },
  },
  {
    file: 'qcow2/chain-top.qcow2',
    format: 'qcow2',
    description: 'chain layer 0: 512 KiB over chain-mid.qcow2 (3-deep chain of growing sizes)',
    build({ path, dir }) {
      create(dir, path, 512 * K, 'cluster_size=4k', '-b', 'chain-mid.qcow2', '-F', 'qcow2');
      io(dir, basename(path), 'write -P 0xb1 20k 8k', 'write -z 100k 8k', 'write -z 296k 8k', 'write -P 0xb2 500k 4k', 'discard 24k 4k');
    },
  },
  {
    file: 'qcow2/raw-base.img',
    format: 'raw',
    manifest: false,
    description: 'raw backing file of over-raw.qcow2 (fully written, so qemu sees no holes)',
    build({ path }) {
      writeFileSync(path, Buffer.concat([noise(32 * K, 7), text(32 * K, 8)]));
    },
  },
  {
    file: 'qcow2/over-raw.qcow2',
    format: 'qcow2',
    description: 'qcow2 over a raw backing file (no backing-format probing needed: -F raw), overlay larger than backing',
    build({ path, dir }) {
      create(dir, path, 256 * K, 'cluster_size=4k', '-b', 'raw-base.img', '-F', 'raw');
      io(dir, basename(path), 'write -P 0xc1 4k 4k', 'write -z 32k 4k', 'write -P 0xc2 200k 4k');
    },
  },
  {
    file: 'qcow2/no-backing-format.qcow2',
    format: 'qcow2',
    description: 'backing file without a backing-format extension (the format must be probed): over chain-base.qcow2',
    build({ path, dir }) {
      create(dir, path, 256 * K, 'cluster_size=4k', '-b', 'chain-base.qcow2', '-F', 'qcow2');
      io(dir, basename(path), 'write -P 0xc3 8k 4k');
      // Drop the backing format extension: qemu-img rebase -u without -F keeps it, so rewrite it
      // as an unknown extension type that qemu ignores.
      patchHeader(path, (buf) => {
        const headerLength = buf.readUInt32BE(100);
        for (let at = headerLength; at + 8 <= buf.length;) {
          const type = buf.readUInt32BE(at);
          const len = buf.readUInt32BE(at + 4);
          if (type === 0) break;
          if (type === 0xe2792aca) buf.writeUInt32BE(0x7e57ed00, at);
          at += 8 + Math.ceil(len / 8) * 8;
        }
      });
    },
  },
  {
    file: 'qcow2/snapshots.qcow2',
    format: 'qcow2',
    // Snapshots keep the image's size here: the manifest records a snapshot's size from
    // qemu-img info, which does not report it, so a resized image would record the wrong
    // one. packages/qcow2 tests snapshots of another size against qemu at test time.
    description: 'internal snapshots s1 and s2, then the active layer changed',
    build({ path, dir }) {
      const f = basename(path);
      create(dir, path, 128 * K, 'cluster_size=4k');
      io(dir, f, 'write -P 0xd1 0 16k', 'write -P 0xd2 64k 8k');
      img(dir, 'snapshot', '-c', 's1', f);
      io(dir, f, 'write -P 0xd3 4k 4k', 'write -z 64k 4k', 'discard 68k 4k');
      img(dir, 'snapshot', '-c', 's2', f);
      io(dir, f, 'write -P 0xd4 0 2k', 'write -P 0xd5 100k 8k');
    },
  },
  {
    file: 'qcow2/prealloc-metadata.qcow2',
    format: 'qcow2',
    description: 'preallocation=metadata: every cluster mapped, data never written',
    build({ path, dir }) {
      create(dir, path, 64 * K, 'cluster_size=4k,preallocation=metadata');
      io(dir, basename(path), 'write -P 0xe1 8k 4k');
    },
  },
  {
    file: 'qcow2/prealloc-full.qcow2',
    format: 'qcow2',
    description: 'preallocation=full, 64 KiB virtual',
    build({ path, dir }) {
      create(dir, path, 64 * K, 'cluster_size=4k,preallocation=full');
      io(dir, basename(path), 'write -P 0xe2 12k 4k');
    },
  },
  {
    file: 'qcow2/grown.qcow2',
    format: 'qcow2',
    description: 'created at 64 KiB with 512-byte clusters, written, grown to 1 MiB (L1 table grown and moved), written again',
    build({ path, dir }) {
      const f = basename(path);
      create(dir, path, 64 * K, 'cluster_size=512');
      io(dir, f, 'write -P 0xf1 0 8k', 'write -P 0xf2 60k 4k');
      img(dir, 'resize', f, String(1 * M));
      io(dir, f, 'write -P 0xf3 1000k 8k', 'write -P 0xf4 62k 4k');
    },
  },
  {
    file: 'qcow2/shrunk.qcow2',
    format: 'qcow2',
    description: 'created at 256 KiB, written across the new end, shrunk to 100 KiB (qemu-img resize --shrink)',
    build({ path, dir }) {
      const f = basename(path);
      create(dir, path, 256 * K, 'cluster_size=4k');
      io(dir, f, 'write -P 0xf5 0 64k', 'write -P 0xf6 96k 8k', 'write -P 0xf7 200k 56k');
      img(dir, 'resize', '--shrink', f, String(100 * K));
    },
  },
  {
    file: 'qcow2/bitmaps.qcow2',
    format: 'qcow2',
    description: 'persistent dirty bitmaps (bitmaps extension, autoclear bit 0): reading ignores them',
    build({ path, dir }) {
      const f = basename(path);
      create(dir, path, 128 * K, 'cluster_size=4k');
      io(dir, f, 'write -P 0x12 0 8k');
      img(dir, 'bitmap', '--add', f, 'bm0');
      img(dir, 'bitmap', '--add', '-g', '64k', f, 'bm1');
      img(dir, 'bitmap', '--disable', f, 'bm1');
    },
  },
  {
    file: 'qcow2/data-file.qcow2',
    format: 'qcow2',
    description: 'external data file data-file.img (incompatible bit 2, data_file_raw=on): guest offset = host offset',
    build({ path, dir }) {
      // qemu resolves a relative data file name against its working directory (not the
      // image's, as we do): the manifest's qemu runs need the fixture directory as cwd,
      // until the restore-cwd recipe below.
      process.chdir(dir);
      const f = basename(path);
      create(dir, path, 64 * K, 'cluster_size=4k,data_file=data-file.img,data_file_raw=on');
      io(dir, f, 'write -P 0x13 0 12k', 'write -P 0x14 40k 4k', 'write -z 4k 4k');
    },
  },
  {
    file: 'qcow2/data-file-nonraw.qcow2',
    format: 'qcow2',
    description: 'external data file data-file-nonraw.img without data_file_raw',
    build({ path, dir }) {
      const f = basename(path);
      create(dir, path, 64 * K, 'cluster_size=4k,data_file=data-file-nonraw.img');
      io(dir, f, 'write -P 0x15 4k 8k', 'write -z 20k 4k');
    },
  },
  {
    file: 'qcow2/dirty.qcow2',
    format: 'qcow2',
    description: 'lazy_refcounts=on, left dirty (qemu-io killed after writing): readable',
    build({ path, dir }) {
      const f = basename(path);
      create(dir, path, 64 * K, 'cluster_size=4k,lazy_refcounts=on');
      run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x16 0 8k', '-c', 'sigraise 9', f], { cwd: dir, allowFail: true });
    },
  },
  {
    file: 'qcow2/unknown-features.qcow2',
    format: 'qcow2',
    description: 'unknown compatible bit 7 and autoclear bit 9, and an unknown header extension: all ignorable',
    build({ path, dir }) {
      const f = basename(path);
      create(dir, path, 64 * K, 'cluster_size=4k');
      io(dir, f, 'write -P 0x17 0 4k');
      patchHeader(path, (buf) => {
        buf.writeUInt32BE(buf.readUInt32BE(84) | 0x80, 84);
        buf.writeUInt32BE(buf.readUInt32BE(92) | 0x200, 92);
        const headerLength = buf.readUInt32BE(100);
        // Insert the unknown extension first and shift the others along.
        let end = headerLength;
        for (;;) {
          const type = buf.readUInt32BE(end);
          const len = buf.readUInt32BE(end + 4);
          end += 8 + Math.ceil(len / 8) * 8;
          if (type === 0) break;
        }
        const ext = Buffer.alloc(24);
        ext.writeUInt32BE(0x0badcafe, 0);
        ext.writeUInt32BE(13, 4);
        Buffer.from('hello, qcow2!').copy(ext, 8);
        const rest = Buffer.from(buf.subarray(headerLength, end));
        ext.copy(buf, headerLength);
        rest.copy(buf, headerLength + ext.length);
      });
    },
  },
  {
    file: 'qcow2/corrupt-bit.qcow2',
    format: 'qcow2',
    description: 'corrupt bit (incompatible bit 1) set on an otherwise fine image: readable, never writable',
    build({ path, dir }) {
      create(dir, path, 64 * K, 'cluster_size=4k');
      io(dir, basename(path), 'write -P 0x18 4k 4k');
      patchHeader(path, (buf) => buf.writeUInt32BE(buf.readUInt32BE(76) | 2, 76));
    },
  },
  {
    file: 'qcow2/.restore-cwd',
    format: 'qcow2',
    manifest: false,
    description: 'not a fixture: restores the working directory changed by the data-file recipes',
    build() {
      process.chdir(startCwd);
    },
  },
];
