// img sparsify and img compact, run as a user would, on VHDs qemu wrote; qemu-img compare is the judge.
import { spawnSync } from 'node:child_process';
import { copyFileSync, linkSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, holdWithQemuIo, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-sparsify-');
afterAll(() => tmp.cleanup());
const MIB = 2 ** 20;
const SPAN = 2 * MIB + 512;
const hasVhdiinfo = spawnSync('vhdiinfo', ['-V']).status === 0;

function identical(a: string, b: string): void {
  const r = qemuImg(['compare', '-f', 'vpc', '-F', 'vpc', a, b], { allowFail: true });
  expect(r.status, r.stdout + r.stderr).toBe(0);
}

describeQemu('img sparsify / img compact', () => {
  it('dynamic: zeroed blocks are freed, then the file shrinks by their space; qemu-img compare identical, check clean', () => {
    const file = join(tmp.path, 'd.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', file, '64M']);
    qemuIo(file, 'vpc', ['write -P 7 0 64M', 'write -z 0 8M', 'write -z 32M 2M', 'write -z 40M 4k']);
    const before = join(tmp.path, 'd-before.vhd');
    copyFileSync(file, before);
    const size0 = statSync(file).size;
    const sp = run('img', ['sparsify', file]);
    expect(sp.status, sp.stderr).toBe(0);
    expect(sp.stdout).toMatch(/^Released 20488 sectors; freed 5 of \d+ blocks \(10488320 bytes for img compact to return\)\.$/m);
    identical(before, file);
    // Freed blocks are leaks until compacted (qemu-img check has no check for vpc: img check counts them).
    expect(run('img', ['check', file]).status).toBe(3);
    const c = run('img', ['compact', '-p', file]);
    expect(c.status, c.stderr).toBe(0);
    expect(c.stdout).toBe(`Moved 5 blocks (${5 * SPAN} bytes); file size ${size0} -> ${size0 - 5 * SPAN} bytes (${5 * SPAN} released).\n`);
    expect(c.stderr).toMatch(/100\.0%/);
    expect(statSync(file).size).toBe(size0 - 5 * SPAN);
    identical(before, file);
    expect(run('img', ['check', file]).status).toBe(0);
    expect(qemuImg(['info', '-f', 'vpc', file]).stdout).toMatch(/virtual size: 64 MiB/);
    if (hasVhdiinfo) expect(spawnSync('vhdiinfo', [file]).status).toBe(0);
    // Again (-f vpc, qemu's name): nothing to do; JSON says so.
    const again = run('img', ['compact', '-f', 'vpc', '--output=json', file]);
    expect(again.status).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ filename: file, 'blocks-moved': 0, 'size-after': size0 - 5 * SPAN, 'nothing-to-do': expect.any(String) });
  });

  it('-S: zero runs shorter than the granularity stay; 512 takes them; a size that is not a multiple of 512 is refused', () => {
    const file = join(tmp.path, 's.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', file, '4M']);
    qemuIo(file, 'vpc', ['write -P 9 0 4M', 'write -z 1024 1024', 'write -z 65536 8192']);
    const before = join(tmp.path, 's-before.vhd');
    copyFileSync(file, before);
    expect(run('img', ['sparsify', '--output=json', file]).stdout).toMatch(/"sectors-released": 16,/);
    expect(run('img', ['sparsify', '-S', '512', '--output=json', file]).stdout).toMatch(/"sectors-released": 2,/);
    identical(before, file);
    const bad = run('img', ['sparsify', '-S', '1000', file]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^img sparsify: ERR_IMG_INVALID_ARG: .*multiple of 512/);
  });

  it('differencing: zeros over parent data stay, zeros over parent zeros go; the chain reads the same', () => {
    const base = join(tmp.path, 'base.vhd');
    const child = join(tmp.path, 'child.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', base, '16M']);
    qemuIo(base, 'vpc', ['write -P 3 0 8M']);
    // qemu-img cannot create a differencing VHD: img does, with the parent's locators.
    const cr = run('img', ['create', '-f', 'vpc', '-b', base, '-F', 'vpc', child]);
    expect(cr.status, cr.stderr).toBe(0);
    qemuIo(child, 'vpc', ['write -P 5 0 16M', 'write -z 0 4M', 'write -z 8M 4M']);
    const before = join(tmp.path, 'child-before.raw');
    qemuImg(['convert', '-f', 'vpc', '-O', 'raw', child, before]);
    const sp = run('img', ['sparsify', '--output=json', child]);
    expect(sp.status, sp.stderr).toBe(0);
    expect(JSON.parse(sp.stdout)).toMatchObject({ type: 'differencing', 'blocks-freed': 2 });
    const c = run('img', ['compact', child]);
    expect(c.status, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/^Moved \d+ blocks/);
    const r = qemuImg(['compare', '-f', 'vpc', '-F', 'raw', child, before], { allowFail: true });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(run('img', ['check', child]).status).toBe(0);
  });

  it('qcow2: zero clusters released, then the file shrinks; qemu-img compare identical, check clean', () => {
    const q = join(tmp.path, 'q.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', q, '16M']);
    qemuIo(q, 'qcow2', ['write -P 7 0 12M', 'write -P 0 2M 6M']);
    qemuImg(['snapshot', '-c', 's1', q]);
    qemuIo(q, 'qcow2', ['write -P 8 12M 2M', 'write -P 0 13M 1M']);
    const before = join(tmp.path, 'q-before.qcow2');
    copyFileSync(q, before);
    const sp = run('img', ['sparsify', '--output=json', q]);
    expect(sp.status, sp.stderr).toBe(0);
    const s = JSON.parse(sp.stdout) as { format: string; 'clusters-released': number; 'clusters-shared': number };
    // The 1 MiB zeroed after the snapshot goes; the zeros the snapshot shares stay.
    expect([s.format, s['clusters-released'], s['clusters-shared'] > 0]).toEqual(['qcow2', 16, true]);
    const c = run('img', ['compact', '-p', q]);
    expect(c.status, c.stderr).toBe(0);
    expect(c.stdout).toMatch(/Moved \d+ data and \d+ metadata clusters \(\d+ bytes\); file size \d+ -> \d+ bytes/);
    expect(statSync(q).size).toBeLessThan(statSync(before).size);
    expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', before, q], { allowFail: true }).status).toBe(0);
    expect(qemuImg(['check', q], { allowFail: true }).status).toBe(0);
    expect(run('img', ['compact', q]).stdout).toMatch(/^Nothing to compact: /);
    const raw = join(tmp.path, 'r.img');
    writeFileSync(raw, new Uint8Array(MIB));
    expect(run('img', ['compact', raw]).stderr).toMatch(/^img compact: ERR_IMG_UNSUPPORTED: raw: .*works on VHD and qcow2 images/);
    const fixed = join(tmp.path, 'f.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', fixed, '1M']);
    const f = run('img', ['compact', fixed]);
    expect(f.status).toBe(0);
    expect(f.stdout).toMatch(/^Nothing to compact: a fixed disk has no blocks to move\./);
  });

  it('qcow2 v2 overlay: zeros over backing data stay, and the human line says why, as the JSON does (CLI audit 2 #10)', () => {
    const base = join(tmp.path, 'v2-base.qcow2');
    const ov = join(tmp.path, 'v2-ov.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', base, '8M']);
    qemuIo(base, 'qcow2', ['write -P 5 0 8M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'v2-base.qcow2', '-F', 'qcow2', ov]);
    qemuIo(ov, 'qcow2', ['write -P 0 1M 1M', 'write -P 9 3M 64k']);
    const human = run('img', ['sparsify', ov]);
    expect(human.status, human.stderr).toBe(0);
    expect(human.stdout).toBe('Nothing to sparsify: the 16 clusters of zeros lie over backing file data: a version 2 image has no zero clusters, and a hole would show that data (amended to compat=1.1, version 3, they can become zero clusters).\n');
    const json = JSON.parse(run('img', ['sparsify', '--output=json', ov]).stdout) as { 'clusters-scanned': number; 'clusters-released': number; 'nothing-to-do'?: string };
    expect([json['clusters-scanned'], json['clusters-released']]).toEqual([17, 0]);
    expect(human.stdout).toContain(json['nothing-to-do']);
    // Where the backing file reads zeros too, the zeros go as holes, and nothing is said.
    qemuIo(base, 'qcow2', ['write -P 0 1M 512k']);
    const some = run('img', ['sparsify', ov]);
    expect(some.stdout).toBe('Released 8 of 17 clusters (524288 bytes for img compact to return).\n');
    expect(qemuImg(['check', ov], { allowFail: true }).status).toBe(0);
  });

  it('takes the write lock: an image a qemu holds is refused (ERR_IMG_LOCKED) and left as it was', async () => {
    const file = join(tmp.path, 'held.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', file, '8M']);
    qemuIo(file, 'vpc', ['write -P 1 0 8M', 'write -z 0 4M']);
    const size = statSync(file).size;
    const holder = await holdWithQemuIo(file, { format: 'vpc', readOnly: true });
    try {
      for (const verb of ['sparsify', 'compact']) {
        const r = run('img', [verb, file]);
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(new RegExp(`^img ${verb}: ERR_IMG_LOCKED: `));
      }
    } finally {
      await holder.stop();
    }
    expect(statSync(file).size).toBe(size);
    expect(run('img', ['sparsify', file]).status).toBe(0);
  });

  it('qcow2 takes the write lock too, and refuses a backing file that is its own file (ERR_IMG_SAME_FILE)', async () => {
    const file = join(tmp.path, 'held.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '8M']);
    qemuIo(file, 'qcow2', ['write -P 1 0 8M', 'write -P 0 0 4M']);
    const bytes = readFileSync(file);
    const holder = await holdWithQemuIo(file, { format: 'qcow2', readOnly: true });
    try {
      for (const verb of ['sparsify', 'compact']) {
        const r = run('img', [verb, file]);
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(new RegExp(`^img ${verb}: ERR_IMG_LOCKED: `));
      }
    } finally {
      await holder.stop();
    }
    expect(readFileSync(file).equals(bytes)).toBe(true);
    const base = join(tmp.path, 'qloop-base.qcow2');
    const child = join(tmp.path, 'qloop-child.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '8M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'qloop-base.qcow2', '-F', 'qcow2', child], { cwd: tmp.path });
    qemuIo(child, 'qcow2', ['write -P 0 0 2M']);
    unlinkSync(base);
    linkSync(child, base);
    const childBytes = readFileSync(child);
    const r = run('img', ['sparsify', 'qloop-child.qcow2'], { cwd: tmp.path });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^img sparsify: ERR_IMG_SAME_FILE: /);
    expect(readFileSync(child).equals(childBytes)).toBe(true);
  });

  it('a differencing VHD whose parent is its own file (a hard link) is refused (ERR_IMG_SAME_FILE), nothing written', () => {
    const base = join(tmp.path, 'loop-base.vhd');
    const child = join(tmp.path, 'loop-child.vhd');
    qemuImg(['create', '-q', '-f', 'vpc', base, '8M']);
    // Relative names (the locators then name loop-base.vhd beside the child).
    expect(run('img', ['create', '-f', 'vpc', '-b', 'loop-base.vhd', '-F', 'vpc', 'loop-child.vhd'], { cwd: tmp.path }).status).toBe(0);
    qemuIo(child, 'vpc', ['write -z 0 2M']);
    unlinkSync(base);
    linkSync(child, base);
    const bytes = readFileSync(child);
    const r = run('img', ['sparsify', 'loop-child.vhd'], { cwd: tmp.path });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^img sparsify: ERR_IMG_SAME_FILE: /);
    expect(readFileSync(child).equals(bytes)).toBe(true);
  });

  it('--help shows usage and an example', () => {
    for (const verb of ['sparsify', 'compact']) {
      const r = run('img', [verb, '--help']);
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/Usage: img/);
      expect(r.stdout).toMatch(/Example/);
    }
    expect(run('img', ['--help']).stdout).toMatch(/^ {2}sparsify .*\n {2}compact /m);
  });
});
