// VMDK fixtures: every subformat qemu-img writes (monolithicSparse with and
// without zeroed-grain GTEs, monolithicFlat, twoGbMaxExtentSparse/Flat,
// streamOptimized), a parent chain, descriptors written by hand for what
// qemu 7.2 cannot create (vmfs, a two-extent flat disk) and a
// streamOptimized file from Debian's python3-vmdkstream (a second,
// independent writer, with the grain directory at the end and a footer).
//
// qemu writes a random CID into each descriptor (and a new one on the first
// write); `pinCids` replaces them with fixed values of the same length so
// that regenerating gives identical bytes.
import { closeSync, openSync, readSync, rmSync, writeFileSync, writeSync, fstatSync } from 'node:fs';
import { basename, join } from 'node:path';
import { noise, run } from './lib.mjs';

const K = 1024;
const M = 1024 * K;

function img(dir, ...args) {
  return run('qemu-img', args, { cwd: dir }).stdout;
}

function io(dir, file, ...commands) {
  const args = ['-f', 'vmdk'];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  const r = run('qemu-io', args, { cwd: dir });
  if (/error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io ${commands.join('; ')} on ${file}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** Rewrites `CID=` and `parentCID=` in the descriptor held in the first 64 KiB of `path` (same length). */
function pinCids(path, cid, parentCid) {
  const fd = openSync(path, 'r+');
  try {
    const n = Math.min(fstatSync(fd).size, 64 * K);
    const buf = Buffer.alloc(n);
    readSync(fd, buf, 0, n, 0);
    let text = buf.toString('latin1');
    text = text.replace(/\nCID=[0-9a-f]{1,8}\n/, `\nCID=${cid}\n`);
    if (parentCid) text = text.replace(/\nparentCID=[0-9a-f]{1,8}\n/, `\nparentCID=${parentCid}\n`);
    const out = Buffer.from(text, 'latin1');
    writeSync(fd, out, 0, out.length, 0);
  } finally {
    closeSync(fd);
  }
}

function create(dir, path, size, opts, ...extra) {
  img(dir, 'create', '-q', '-f', 'vmdk', ...(opts ? ['-o', opts] : []), ...extra, basename(path), String(size));
}

/** A raw source: noise, text-like bytes and zeros in 64 KiB pieces, `size` bytes. */
function rawSource(path, size, seed) {
  const buf = Buffer.alloc(size);
  for (let pos = 0, i = 0; pos < size; pos += 64 * K, i++) {
    const n = Math.min(64 * K, size - pos);
    if (i % 3 === 0) noise(n, seed + i).copy(buf, pos);
    else if (i % 3 === 1) buf.fill(`line ${i} of the source text\n`, pos, pos + n);
  }
  writeFileSync(path, buf);
}

/** @type {import('./index.mjs').Recipe[]} */
export const recipes = [
  {
    file: 'vmdk/sparse.vmdk',
    format: 'vmdk',
    description: 'monolithicSparse (qemu-img default), 4 MiB, grains written whole and in part',
    build({ path, dir }) {
      create(dir, path, 4 * M, '');
      io(dir, basename(path), 'write -P 0x11 0 64k', 'write -P 0x22 200k 4k', 'write -P 0x33 1000k 512', `write -P 0x44 ${4 * M - 4 * K} 4k`);
      pinCids(path, '11111111');
    },
  },
  {
    file: 'vmdk/zeroed-grain.vmdk',
    format: 'vmdk',
    description: 'monolithicSparse with zeroed_grain=on: zeroed-grain GTEs (1) over data and over unallocated grains',
    build({ path, dir }) {
      create(dir, path, 2 * M, 'zeroed_grain=on');
      io(dir, basename(path), 'write -P 0x55 0 256k', 'write -z 64k 128k', 'write -z 1M 128k');
      pinCids(path, '22222222');
    },
  },
  {
    file: 'vmdk/flat.vmdk',
    format: 'vmdk',
    description: 'monolithicFlat: descriptor file + flat-flat.vmdk',
    build({ path, dir }) {
      create(dir, path, 1 * M, 'subformat=monolithicFlat');
      io(dir, basename(path), 'write -P 0x66 4k 8k', 'write -P 0x67 900k 4k');
      pinCids(path, '33333333');
    },
  },
  {
    file: 'vmdk/flat-flat.vmdk',
    format: 'raw',
    manifest: false,
    description: 'the flat extent of flat.vmdk',
    build() {},
  },
  {
    file: 'vmdk/split-sparse.vmdk',
    format: 'vmdk',
    description: 'twoGbMaxExtentSparse: descriptor file + split-sparse-s001.vmdk',
    build({ path, dir }) {
      create(dir, path, 3 * M, 'subformat=twoGbMaxExtentSparse');
      io(dir, basename(path), 'write -P 0x77 128k 64k', 'write -P 0x78 2M 1k');
      pinCids(path, '44444444');
    },
  },
  {
    file: 'vmdk/split-sparse-s001.vmdk',
    format: 'raw',
    manifest: false,
    description: 'the sparse extent of split-sparse.vmdk',
    build() {},
  },
  {
    file: 'vmdk/split-flat.vmdk',
    format: 'vmdk',
    description: 'twoGbMaxExtentFlat shape, two FLAT extents (written by hand: qemu splits only at 2 GiB), the second at an offset in its file',
    build({ path, dir }) {
      writeFileSync(join(dir, 'split-flat-f001.vmdk'), Buffer.concat([noise(256 * K, 3), Buffer.alloc(256 * K)]));
      writeFileSync(join(dir, 'split-flat-f002.vmdk'), Buffer.concat([Buffer.alloc(4 * K, 0xee), noise(128 * K, 4), Buffer.alloc(128 * K)]));
      writeFileSync(
        path,
        '# Disk DescriptorFile\nversion=1\nCID=55555555\nparentCID=ffffffff\ncreateType="twoGbMaxExtentFlat"\n\n# Extent description\n' + 'RW 1024 FLAT "split-flat-f001.vmdk" 0\nRW 512 FLAT "split-flat-f002.vmdk" 8\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\n',
      );
    },
  },
  { file: 'vmdk/split-flat-f001.vmdk', format: 'raw', manifest: false, description: 'first extent of split-flat.vmdk', build() {} },
  { file: 'vmdk/split-flat-f002.vmdk', format: 'raw', manifest: false, description: 'second extent of split-flat.vmdk (data from sector 8)', build() {} },
  {
    file: 'vmdk/vmfs.vmdk',
    format: 'vmdk',
    description: 'ESXi vmfs: a descriptor with one VMFS extent (written by hand, as ESXi writes it; qemu 7.2 cannot create it)',
    build({ path, dir }) {
      writeFileSync(join(dir, 'vmfs-flat.vmdk'), Buffer.concat([Buffer.alloc(64 * K), noise(64 * K, 9), Buffer.alloc(384 * K)]));
      writeFileSync(
        path,
        '# Disk DescriptorFile\nversion=1\nencoding="UTF-8"\nCID=66666666\nparentCID=ffffffff\nisNativeSnapshot="no"\ncreateType="vmfs"\n\n# Extent description\n' +
          'RW 1024 VMFS "vmfs-flat.vmdk"\n\n# The Disk Data Base\n#DDB\n\nddb.adapterType = "lsilogic"\nddb.geometry.cylinders = "0"\nddb.geometry.heads = "255"\nddb.geometry.sectors = "63"\nddb.virtualHWVersion = "13"\n',
      );
    },
  },
  { file: 'vmdk/vmfs-flat.vmdk', format: 'raw', manifest: false, description: 'the flat extent of vmfs.vmdk', build() {} },
  {
    file: 'vmdk/stream-qemu.vmdk',
    format: 'vmdk',
    description: 'streamOptimized by qemu-img convert: compressed grains with markers, directory at the start (no footer)',
    build({ path, dir }) {
      const src = join(dir, 'stream-src.raw');
      rawSource(src, 1536 * K, 11);
      img(dir, 'convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', 'stream-src.raw', basename(path));
      rmSync(src);
      pinCids(path, '77777777');
    },
  },
  {
    file: 'vmdk/stream-vmdkstream.vmdk',
    format: 'vmdk',
    description: "streamOptimized by Debian's python3-vmdkstream: grain directory at the end (GD_AT_END), footer and end-of-stream marker",
    build({ path, dir }) {
      const src = join(dir, 'stream-src.raw');
      rawSource(src, 1 * M + 300 * K, 21);
      // Debian's module lives in the system interpreter's dist-packages.
      run('/usr/bin/python3', ['-c', 'import sys; sys.path.insert(0, "/usr/lib/python3/dist-packages"); import VMDKstream; VMDKstream.convert_to_stream(sys.argv[1], sys.argv[2])', src, path]);
      rmSync(src);
      pinCids(path, '88888888');
    },
  },
  {
    file: 'vmdk/chain-base.vmdk',
    format: 'vmdk',
    description: 'parent of chain-top.vmdk (monolithicSparse)',
    build({ path, dir }) {
      create(dir, path, 1 * M, '');
      io(dir, basename(path), 'write -P 0xa1 0 256k', 'write -P 0xa2 768k 64k');
      pinCids(path, '99999999');
    },
  },
  {
    file: 'vmdk/chain-top.vmdk',
    format: 'vmdk',
    description: 'child of chain-base.vmdk (parentFileNameHint, parentCID), partial grains copied on write',
    build({ path, dir }) {
      create(dir, path, 1 * M, '', '-b', 'chain-base.vmdk', '-F', 'vmdk');
      io(dir, basename(path), 'write -P 0xb1 64k 4k', 'write -P 0xb2 512k 64k');
      pinCids(path, 'aaaaaaaa', '99999999');
    },
  },
];
