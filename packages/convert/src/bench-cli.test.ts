// img bench against qemu-img bench: the same lines, the same requests (a write run leaves the image qemu-img's run
// leaves), the same refusals in the same words, and what img refuses where qemu-img would misbehave.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, describeWith, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { bin, run } from './test/cli.js';

const tmp = tempDir('img-bench-');
afterAll(() => tmp.cleanup());

const COMPLETED = /^Run completed in \d+\.\d{3} seconds\.$/;

describeQemu('img bench', () => {
  const image = join(tmp.path, 'disk.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', image, '64M']);
  qemuIo(image, 'qcow2', ['write -P 3 0 8M']);

  // img's arguments, and qemu-img 7.2's spelling of the same (10.1's long names are img's too).
  it.each([
    [
      ['-c', '1000'],
      ['-c', '1000'],
    ],
    [
      ['-c', '300', '-d', '4', '-s', '64k', '-S', '128k', '-o', '1M'],
      ['-c', '300', '-d', '4', '-s', '64k', '-S', '128k', '-o', '1M'],
    ],
    [
      ['--count=200', '--depth=2', '--buffer-size=3000', '--step-size=1M', '--offset=63M'],
      ['-c', '200', '-d', '2', '-s', '3000', '-S', '1M', '-o', '63M'],
    ],
    [
      ['-c', '0'],
      ['-c', '0'],
    ],
  ])('reads as qemu-img bench does (%j): the same first line, then the time', (args, qemuArgs) => {
    const ours = run('img', ['bench', ...args, image]);
    const theirs = qemuImg(['bench', ...qemuArgs, image]);
    expect(ours.status, ours.stderr).toBe(0);
    const lines = ours.stdout.trimEnd().split('\n');
    expect(lines[0]).toBe(theirs.stdout.split('\n')[0]);
    expect(lines[1]).toMatch(COMPLETED);
    expect(lines).toHaveLength(2);
  });

  it('a write run (-w --pattern, a flush interval) leaves the image qemu-img bench leaves, and qemu-img check clean', () => {
    const ours = join(tmp.path, 'ours.qcow2');
    const theirs = join(tmp.path, 'theirs.qcow2');
    copyFileSync(image, ours);
    copyFileSync(image, theirs);
    const args = ['-w', '--pattern=7', '-c', '500', '-d', '8', '-s', '8k', '-S', '24k', '-o', '4M', '--flush-interval=64'];
    const r = run('img', ['bench', ...args, ours]);
    expect(r.status, r.stderr).toBe(0);
    const q = qemuImg(['bench', ...args, theirs]);
    expect(r.stdout.split('\n').slice(0, 2)).toEqual(q.stdout.split('\n').slice(0, 2));
    expect(r.stdout.split('\n')[1]).toBe('Sending flush every 64 requests');
    expect(qemuImg(['compare', ours, theirs]).status).toBe(0);
    expect(qemuImg(['check', ours]).status).toBe(0);
    // Something was written: the pattern where the image held 3s.
    expect(qemuImg(['compare', ours, image], { allowFail: true }).status).toBe(1);
  });

  it('a request that runs past the end of the image fails the run with status 1, as with qemu-img', () => {
    for (const args of [
      ['-c', '30000', '-s', '4k', '-S', '3k'],
      ['-c', '20', '-o', '64M'],
    ]) {
      const ours = run('img', ['bench', ...args, image]);
      expect(ours.status).toBe(1);
      expect(ours.stderr).toMatch(/^img bench: Failed request: ERR_IMG_INVALID_ARG: .*outside the disk/m);
      expect(qemuImg(['bench', ...args, image], { allowFail: true }).status).toBe(1);
    }
  });

  it("refuses what qemu-img refuses, in qemu-img's words", () => {
    const cases: Array<[string[], string]> = [
      [['-c', 'abc'], 'Invalid request count specified'],
      [['-d', 'abc'], 'Invalid queue depth specified'],
      [['-s', 'abc'], 'Invalid buffer size specified.'],
      [['-S', 'abc'], 'Invalid step_size specified.'],
      [['-o', 'abc'], 'Invalid offset specified.'],
      [['-w', '--pattern=300'], 'Invalid pattern byte specified'],
      [['-w', '--flush-interval=abc'], 'Invalid flush interval specified'],
      [['--flush-interval=70'], '--flush-interval is only available in write tests'],
      [['-w', '--flush-interval=10'], "Flush interval can't be smaller than depth"],
      [['-i', 'bogus'], 'Invalid aio option: bogus'],
      [['-t', 'bogus'], 'Invalid cache mode'],
    ];
    for (const [args, words] of cases) {
      const ours = run('img', ['bench', '-c', '5', ...args, image]);
      const theirs = qemuImg(['bench', '-c', '5', ...args, image], { allowFail: true });
      expect([ours.status, theirs.status], args.join(' ')).toEqual([1, 1]);
      expect(ours.stderr.startsWith(`img bench: ${words}`), ours.stderr).toBe(true);
      expect(theirs.stderr).toContain(words);
    }
  });

  it('refuses a depth of 0 (qemu-img never finishes), -U with -w, and buffers over 1 GiB; -t none, -n and -U reads run', () => {
    expect(run('img', ['bench', '-c', '5', '-d', '0', image]).stderr).toMatch(/^img bench: Invalid queue depth specified/);
    expect(run('img', ['bench', '-c', '5', '-w', '-U', image]).stderr).toMatch(/-U reads without locks: it cannot go with -w/);
    expect(run('img', ['bench', '-c', '100', '-d', '64', '-s', '1G', image]).stderr).toMatch(/need 68719476736 bytes of buffers: at most 1073741824/);
    for (const args of [['-t', 'none', '-n'], ['-U'], ['-i', 'io_uring', '-q']]) {
      const r = run('img', ['bench', '-c', '50', ...args, image]);
      expect(r.status, r.stderr).toBe(0);
      if (args.includes('-q')) expect(r.stdout).toBe('');
    }
  });
});

describeQemu('img bench and Ctrl-C', () => {
  it('stops a long run of cached reads on SIGINT with status 130 (the reads never left the microtask queue, and the run went on to its end)', async () => {
    const image = join(tmp.path, 'sigint.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', image, '16M']);
    qemuIo(image, 'qcow2', ['write -P 1 0 16M']);
    const child = spawn(process.execPath, [bin('img'), 'bench', '-c', '100000000', '-d', '1', image], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    await new Promise((resolve) => setTimeout(resolve, 300));
    child.kill('SIGINT');
    const status = await new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    expect(status).toBe(130);
    expect(stderr).toBe('img bench: interrupted\n');
  }, 30_000);
});

describeWith('strace', 'img bench -t writethrough', () => {
  it('flushes after each write with writethrough and directsync, once at the end otherwise (strace counts the syncs)', () => {
    const image = join(tmp.path, 'sync.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', image, '16M']);
    const syncs = (mode: string[]) => {
      const log = join(tmp.path, `strace-${mode.join('') || 'default'}.txt`);
      const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=fsync,fdatasync', '-o', log, process.execPath, bin('img'), 'bench', '-w', '-c', '40', '-d', '4', ...mode, image], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      return readFileSync(log, 'utf8')
        .split('\n')
        .filter((line) => /\b(fsync|fdatasync)\(/.test(line)).length;
    };
    expect(syncs(['-t', 'writethrough'])).toBeGreaterThanOrEqual(40);
    expect(syncs(['-t', 'directsync'])).toBeGreaterThanOrEqual(40);
    expect(syncs([])).toBeLessThanOrEqual(3);
    expect(syncs(['-t', 'unsafe'])).toBeLessThanOrEqual(3);
    expect(qemuImg(['check', image]).status).toBe(0);
  });
});
