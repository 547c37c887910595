// The qemu-img spellings img claims, as a table: each row runs img's bin and qemu-img with the same
// arguments on the same inputs, and compares exit status and result (the images written, compared by
// qemu-img compare, or the JSON printed, field by field).
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, normalizeQemuMap, qemuImg, tempDir, testImagesDir, type QemuMapEntry } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-spellings-');
afterAll(() => tmp.cleanup());

const fixture = (name: string) => join(testImagesDir, name);
const V3 = fixture('qcow2/v3-64k.qcow2');
const SNAPS = fixture('qcow2/snapshots.qcow2');
const TOP = fixture('qcow2/chain-top.qcow2');
const MID = fixture('qcow2/chain-mid.qcow2');
const DIRTY = fixture('qcow2/dirty.qcow2');
const BITMAPS = fixture('qcow2/bitmaps.qcow2');
const VHD = fixture('vhd/dynamic-default.vhd');
const RAW = fixture('raw/demo.img');

type Result = { status: number; stdout: string; stderr: string };

interface Row {
  /** The arguments after the program name; OUT is the output file (one per tool), T names a per-tool copy of a prepared target. */
  args: string[];
  /** What must agree beyond the exit status. */
  compare: 'status' | 'image' | 'json' | 'json-subset' | 'map' | 'virtual-size' | 'stdout';
  /** For -n: a target made by qemu-img before each tool runs (create arguments, size last). */
  target?: string[];
  /** For resize: the file both tools change, copied per tool. */
  copyOf?: string;
  /** The output's format, for compare (default: read from -O, else raw). */
  outFormat?: string;
  /** Image info fields known to differ, with the reason in a comment on the row. */
  differs?: string[];
}

const rows: Row[] = [
  { args: ['convert', '-O', 'qcow2', V3, 'OUT'], compare: 'image' },
  { args: ['convert', V3, 'OUT'], compare: 'image', outFormat: 'raw' },
  // qemu-img rounds a new VHD's size up to a whole CHS geometry (1 MiB -> 1054 KiB); img's VHD writer keeps the exact size.
  { args: ['convert', '-f', 'qcow2', '-O', 'vpc', V3, 'OUT'], compare: 'image', differs: ['virtual-size'] },
  { args: ['convert', '-f', 'vpc', '-O', 'qcow2', VHD, 'OUT'], compare: 'image' },
  { args: ['convert', '-c', '-O', 'qcow2', RAW, 'OUT'], compare: 'image' },
  { args: ['convert', '-S', '0', '-O', 'raw', V3, 'OUT'], compare: 'image' },
  { args: ['convert', '-p', '-U', '-O', 'raw', V3, 'OUT'], compare: 'image' },
  { args: ['convert', '-l', '1', '-O', 'raw', SNAPS, 'OUT'], compare: 'image' },
  { args: ['convert', '-O', 'qcow2', '-B', MID, '-F', 'qcow2', TOP, 'OUT'], compare: 'image' },
  { args: ['convert', '-O', 'qcow2', '-o', 'cluster_size=4k', RAW, 'OUT'], compare: 'image' },
  { args: ['convert', '-n', '-O', 'qcow2', V3, 'T'], compare: 'image', target: ['-f', 'qcow2', '1M'] },
  { args: ['convert', '-n', V3, 'T'], compare: 'image', target: ['-f', 'raw', '1M'], outFormat: 'raw' },
  { args: ['convert', '-n', '-O', 'qcow2', V3, 'T'], compare: 'status', target: ['-f', 'qcow2', '512K'] },
  { args: ['info', '--output=json', V3], compare: 'json' },
  { args: ['info', '-U', '--output=json', TOP], compare: 'json' },
  { args: ['info', '--backing-chain', '--output=json', TOP], compare: 'json' },
  { args: ['info', '--output=json', '-f', 'vpc', VHD], compare: 'json-subset' },
  { args: ['info', '--output=json', SNAPS], compare: 'json' },
  { args: ['map', '-U', '--output=json', V3], compare: 'map' },
  // Unambiguous prefixes of long options, as getopt_long takes them.
  { args: ['info', '--back', '--out=json', TOP], compare: 'json' },
  { args: ['info', '--outp', 'json', '--force-s', V3], compare: 'json' },
  { args: ['map', '--out', 'json', V3], compare: 'map' },
  { args: ['check', '--out=json', V3], compare: 'status' },
  { args: ['map', '--output=json', '-f', 'vpc', VHD], compare: 'map' },
  { args: ['check', '-U', '--output=json', DIRTY], compare: 'json-subset' },
  { args: ['check', '--output=json', V3], compare: 'json-subset' },
  { args: ['compare', '-U', V3, V3], compare: 'status' },
  { args: ['compare', RAW, V3], compare: 'status' },
  { args: ['compare', '-f', 'qcow2', '-F', 'vpc', V3, VHD], compare: 'status' },
  { args: ['measure', '--output=json', '-O', 'raw', V3], compare: 'json' },
  { args: ['measure', '--output=json', '-O', 'raw', '--size', '1000'], compare: 'json' },
  { args: ['measure', '--output=json', '-U', '-O', 'qcow2', BITMAPS], compare: 'json' },
  { args: ['measure', '--output=json', '-O', 'qcow2', '-o', 'cluster_size=4k', BITMAPS], compare: 'json' },
  { args: ['measure', '--output=json', '-O', 'qcow2', RAW], compare: 'json' },
  { args: ['measure', '--output=json', '-O', 'qcow2', '-f', 'vpc', VHD], compare: 'json' },
  { args: ['snapshot', '-l', '-U', SNAPS], compare: 'stdout' },
  { args: ['map', '-U', TOP], compare: 'stdout' },
  { args: ['info', '-U', '--backing-chain', TOP], compare: 'stdout' },
  { args: ['check', '-U', DIRTY], compare: 'status' },
  // 63: the format has no check.
  { args: ['check', '-f', 'raw', RAW], compare: 'status' },
  { args: ['resize', '--shrink', 'T', '-512K'], compare: 'virtual-size', copyOf: V3 },
  { args: ['resize', 'T', '-512K'], compare: 'virtual-size', copyOf: V3 },
  { args: ['resize', 'T', '+1M'], compare: 'virtual-size', copyOf: V3 },
  { args: ['dd', `if=${V3}`, 'of=OUT'], compare: 'image', outFormat: 'raw' },
  { args: ['dd', '-f', 'qcow2', '-O', 'qcow2', 'bs=4k', 'skip=3', `if=${V3}`, 'of=OUT'], compare: 'image' },
  // qemu-img dd's count= counts from the input's start, skipped blocks included: 1000 - 7 blocks are copied.
  { args: ['dd', '-O', 'qcow2', 'bs=512', 'skip=7', 'count=1000', `if=${V3}`, 'of=OUT'], compare: 'image' },
  { args: ['dd', '-U', 'bs=3', 'count=1k', `if=${TOP}`, 'of=OUT'], compare: 'image', outFormat: 'raw' },
  { args: ['dd', 'bs=1M', 'count=0', `if=${V3}`, 'of=OUT'], compare: 'image', outFormat: 'raw' },
  { args: ['dd', 'bs=64k', 'skip=16', `if=${V3}`, 'of=OUT'], compare: 'image', outFormat: 'raw' },
  { args: ['dd', 'bs=0', `if=${V3}`, 'of=OUT'], compare: 'status' },
  { args: ['dd', 'bs=1x', `if=${V3}`, 'of=OUT'], compare: 'status' },
  { args: ['dd', 'bs=1k', 'colour=blue', `if=${V3}`, 'of=OUT'], compare: 'status' },
  { args: ['dd', `if=${V3}`], compare: 'status' },
];

function qemu(args: string[]): Result {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function outFormat(row: Row): string {
  const i = row.args.indexOf('-O');
  return row.outFormat ?? (i >= 0 ? row.args[i + 1]! : 'raw');
}

/** qemu-img's keys, each equal in ours (ours may say more). */
function expectSubset(ours: unknown, theirs: unknown, where: string): void {
  if (typeof theirs !== 'object' || theirs === null) {
    expect(ours, where).toEqual(theirs);
    return;
  }
  expect(typeof ours, where).toBe('object');
  for (const [k, v] of Object.entries(theirs)) expectSubset((ours as Record<string, unknown>)[k], v, `${where}.${k}`);
}

describeQemu('qemu-img spellings: img and qemu-img agree', () => {
  rows.forEach((row, n) => {
    it(`img ${row.args.map((a) => a.replace(testImagesDir + '/', '')).join(' ')}`, () => {
      const results: Record<'img' | 'qemu', { r: Result; out: string }> = {} as never;
      for (const tool of ['img', 'qemu'] as const) {
        const out = join(tmp.path, `${n}-${tool}.out`);
        if (row.target) qemuImg(['create', '-q', ...row.target.slice(0, -1), out, row.target[row.target.length - 1]!]);
        if (row.copyOf) copyFileSync(row.copyOf, out);
        const args = row.args.map((a) => (a === 'OUT' || a === 'T' ? out : a === 'of=OUT' ? `of=${out}` : a));
        const r = tool === 'img' ? run('img', args) : qemu(args);
        results[tool] = { r, out };
      }
      const { img, qemu: q } = results;
      expect(img.r.status, `img: ${img.r.stderr}\nqemu-img: ${q.r.stderr}`).toBe(q.r.status);
      if (q.r.status !== 0 && row.compare !== 'virtual-size') return;
      switch (row.compare) {
        case 'image': {
          const fmt = outFormat(row);
          expect(qemuImg(['compare', '-f', fmt, '-F', fmt, img.out, q.out], { allowFail: true }).status).toBe(0);
          const info = (file: string) => JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as Record<string, unknown>;
          const a = info(img.out);
          const b = info(q.out);
          for (const key of ['format', 'virtual-size', 'backing-filename', 'backing-filename-format']) if (!row.differs?.includes(key)) expect(a[key], key).toEqual(b[key]);
          if (fmt === 'qcow2') expect(qemuImg(['check', img.out], { allowFail: true }).status).toBe(0);
          break;
        }
        case 'json':
          expect(JSON.parse(img.r.stdout)).toEqual(JSON.parse(q.r.stdout));
          break;
        case 'json-subset':
          expectSubset(JSON.parse(img.r.stdout), JSON.parse(q.r.stdout), 'json');
          break;
        case 'map':
          expect(normalizeQemuMap(JSON.parse(img.r.stdout) as QemuMapEntry[])).toEqual(normalizeQemuMap(JSON.parse(q.r.stdout) as QemuMapEntry[]));
          break;
        case 'virtual-size': {
          const size = (file: string) => (JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as { 'virtual-size': number })['virtual-size'];
          expect(size(img.out)).toBe(size(q.out));
          break;
        }
        case 'stdout':
          expect(img.r.stdout).toBe(q.r.stdout);
          break;
        case 'status':
          break;
      }
    });
  });
});
