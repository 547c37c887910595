// img convert -r / --rate-limit and img commit -r (qemu-img's rate limit): the data moves no faster than asked
// (a lower bound on the time taken, which a copy at full speed of these few MiB does not reach), holes cost
// nothing, the result is the one qemu-img writes, and a bad rate is refused in qemu-img's words.
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { bin, run } from './test/cli.js';

const tmp = tempDir('img-rate-');
afterAll(() => tmp.cleanup());
const MiB = 1024 * 1024;

/** Runs img with `args`, returning its result and how long it took in seconds. */
function timed(args: string[]): { status: number; stderr: string; seconds: number } {
  const started = performance.now();
  const r = run('img', args);
  return { status: r.status, stderr: r.stderr, seconds: (performance.now() - started) / 1000 };
}

describeQemu('rate limit (-r)', () => {
  // 2 MiB of data in a 1 GiB image: at 1 MiB/s the data takes at least (2 MiB - one 102 KiB piece) / 1 MiB/s;
  // the 1022 MiB of holes would take 17 minutes if they were paced.
  const src = join(tmp.path, 'src.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', src, '1G']);
  qemuIo(src, 'qcow2', ['write -P 7 0 1M', 'write -P 9 512M 1M']);

  it.each([['-r 1M'], ['--rate-limit 1M'], ['--rate-limit=1M']])('convert %s: no faster than 1 MiB/s, the same image as qemu-img writes', (spelling) => {
    const out = join(tmp.path, `out-${spelling.replace(/\W/g, '')}.qcow2`);
    const r = timed(['convert', ...spelling.split(' '), '-O', 'qcow2', src, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.seconds).toBeGreaterThanOrEqual(1.8);
    expect(r.seconds).toBeLessThan(60);
    expect(qemuImg(['compare', src, out]).status).toBe(0);
    expect(qemuImg(['check', out]).status).toBe(0);
  });

  it('convert -r into a stream (-O qcow2 -) and from one paces the stream', () => {
    const started = performance.now();
    const out = spawnSync(process.execPath, [bin('img'), 'convert', '-r', '2M', '-O', 'qcow2', src, '-'], { maxBuffer: 64 * MiB });
    expect(out.status, String(out.stderr)).toBe(0);
    expect((performance.now() - started) / 1000).toBeGreaterThanOrEqual(0.8);
    const back = join(tmp.path, 'from-stream.raw');
    const inStarted = performance.now();
    const r = spawnSync(process.execPath, [bin('img'), 'convert', '-r', '4M', '-f', 'qcow2', '-O', 'raw', '-', back], { input: out.stdout });
    expect(r.status, String(r.stderr)).toBe(0);
    // The stream holds the image's 2 MiB of data and its tables: at least 1.8 MiB after the first piece, at 4 MiB/s.
    expect((performance.now() - inStarted) / 1000).toBeGreaterThanOrEqual(0.45);
    expect(qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', src, back]).status).toBe(0);
  });

  it('convert -n -r into an existing image', () => {
    const target = join(tmp.path, 'target.raw');
    qemuImg(['create', '-q', '-f', 'raw', target, '1G']);
    const r = timed(['convert', '-n', '-r', '2M', '-O', 'raw', src, target]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.seconds).toBeGreaterThanOrEqual(0.9);
    expect(qemuImg(['compare', '-F', 'raw', src, target]).status).toBe(0);
  });

  it('commit -r (into the backing file, and with -b into an ancestor): no faster than asked, the chain reads the same', () => {
    for (const viaBase of [false, true]) {
      const base = join(tmp.path, `base-${viaBase}.qcow2`);
      copyFileSync(src, base);
      const top = join(tmp.path, `top-${viaBase}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
      qemuIo(top, 'qcow2', ['write -P 3 64M 2M']);
      const expected = join(tmp.path, `expected-${viaBase}.raw`);
      qemuImg(['convert', '-O', 'raw', top, expected]);
      const r = timed(['commit', ...(viaBase ? ['-b', base] : []), '-r', '2M', top]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.seconds).toBeGreaterThanOrEqual(0.9);
      expect(qemuImg(['compare', '-F', 'raw', base, expected]).status).toBe(0);
      expect(qemuImg(['check', base]).status).toBe(0);
    }
  });

  it('-r 0 is no limit; a rate that is not a size is refused in qemu-img words, as qemu-img refuses it', () => {
    const out = join(tmp.path, 'zero.qcow2');
    expect(run('img', ['convert', '-r', '0', '-O', 'qcow2', src, out]).status).toBe(0);
    expect(readFileSync(out).subarray(0, 4)).toEqual(Buffer.from('QFI\xfb', 'latin1'));
    for (const bad of ['abc', '-5', '1Q']) {
      const ours = run('img', ['convert', '-r', bad, '-O', 'qcow2', src, join(tmp.path, 'bad.qcow2')]);
      const theirs = qemuImg(['convert', '-r', bad, '-O', 'qcow2', src, join(tmp.path, 'bad-q.qcow2')], { allowFail: true });
      expect([ours.status, theirs.status]).toEqual([1, 1]);
      expect(ours.stderr).toMatch(/^img convert: Invalid rate limit specified\. You may use k, M, G, T, P or E suffixes/);
      expect(theirs.stderr).toMatch(/Invalid rate limit specified/);
      const commit = run('img', ['commit', '-r', bad, out]);
      expect(commit.status).toBe(1);
      expect(commit.stderr).toMatch(/^img commit: Invalid rate limit specified/);
    }
  });
});

describeQemu("qemu-img 10.1's long names of convert's I/O options", () => {
  it('--target-cache, --source-cache, --oob-writes, --parallel and --copy-range-offloading are taken as -t, -T, -W, -m and -C', () => {
    const src = join(tmp.path, 'long.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', src, '4M']);
    qemuIo(src, 'qcow2', ['write -P 5 0 1M']);
    const out = join(tmp.path, 'long-out.raw');
    const r = run('img', ['convert', '--target-cache', 'writeback', '--source-cache', 'none', '--oob-writes', '--parallel', '4', '--copy-range-offloading', '-O', 'raw', src, out]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuImg(['compare', '-F', 'raw', src, out]).status).toBe(0);
    expect(run('img', ['convert', '--parallel', '17', '-O', 'raw', src, out]).stderr).toMatch(/Invalid number of coroutines/);
    expect(run('img', ['convert', '--target-cache', 'bogus', '-O', 'raw', src, out]).stderr).toMatch(/Invalid cache option: bogus/);
  });
});
