// Conversions through pipes: "-" when the other end stalls, and a named pipe (a FIFO, a process substitution's
// /dev/fd/63, /dev/stdin or /dev/stdout as one) taken as "-" is while its other end is open; one nobody has open at
// the other end is refused at once, never waited on. Ctrl-C ends the command at once in every case: before, a
// reader that stopped reading (or a writer that stopped writing) held it until it went away, every further signal
// absorbed.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createReadStream, existsSync, lstatSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '@img/block';
import { qemuImg, seededBytes, tempDir } from '@img/testkit';
import { writeFileSync } from 'node:fs';
import { convertFile } from './node.js';
import type { Io } from './cli/common.js';
import { imgMain } from './cli/img.js';

const tmp = tempDir('img-pipe-out-');
afterAll(() => tmp.cleanup());
const img = new URL('../dist/bin/img.js', import.meta.url).pathname;

// 8 MiB of data: more than a pipe holds, so a writer whose reader does not read waits.
const input = join(tmp.path, 'in.raw');
writeFileSync(input, seededBytes(8 << 20, 7));

function fifo(name: string): string {
  const path = join(tmp.path, name);
  expect(spawnSync('mkfifo', [path]).status).toBe(0);
  return path;
}

/** Runs `img args` (stdout: `stdout`), sends SIGINT after `delayMs`, and says how it ended and how long after the signal. */
function interruptedAfter(args: string[], stdout: 'pipe' | 'ignore', delayMs: number, stdin: 'pipe' | 'ignore' = 'ignore'): Promise<{ status: number | null; stderr: string; afterSignalMs: number; child: ChildProcess }> {
  return new Promise((resolve) => {
    // stdin 'pipe': a pipe nobody writes into (and never closes).
    const child = spawn(process.execPath, [img, ...args], { stdio: [stdin, stdout, 'pipe'] });
    // A reader that never reads: the pipe fills, and the writer waits.
    child.stdout?.pause();
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    let sentAt = 0;
    setTimeout(() => {
      sentAt = performance.now();
      child.kill('SIGINT');
    }, delayMs);
    // Whatever happens, the test ends: a command still running 10 s after the signal has failed it.
    const guard = setTimeout(() => child.kill('SIGKILL'), delayMs + 10_000);
    child.on('exit', (status) => {
      clearTimeout(guard);
      resolve({ status, stderr, afterSignalMs: performance.now() - sentAt, child });
    });
  });
}

describe('img convert into a pipe, on Ctrl-C', () => {
  it.each([
    ['"-"', '-'],
    ['/dev/stdout as a pipe', '/dev/stdout'],
  ])('%s whose reader has stopped reading: ends at once with 130 and says the image is incomplete', async (_what, output) => {
    const r = await interruptedAfter(['convert', '-f', 'raw', '-O', 'raw', input, output], 'pipe', 1500);
    r.child.stdout?.destroy();
    expect(r.stderr).toBe('img convert: interrupted; the image written to standard output is incomplete\n');
    expect(r.status).toBe(130);
    expect(r.afterSignalMs).toBeLessThan(5000);
  });

  it('a FIFO nobody has opened for reading: refused at once, never waited on (as every FIFO named as an image)', () => {
    const path = fifo('nobody');
    const r = spawnSync(process.execPath, [img, 'convert', '-f', 'raw', '-O', 'qcow2', input, path], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`img convert: ERR_IMG_INVALID_ARG: ${path}: is a FIFO, not an image file: nothing has it open for reading (a conversion streams through a pipe only while the other end is open)\n`);
    expect(lstatSync(path).isFIFO()).toBe(true);
  });

  it('a FIFO whose reader has stopped reading: ends at once with 130, the FIFO left in place', async () => {
    const path = fifo('stalled');
    // Opened for reading and never read: the writer's open succeeds, and its writes fill the pipe.
    const reader = spawn('sh', ['-c', `exec sleep 30 < '${path}'`], { stdio: 'ignore' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    try {
      const r = await interruptedAfter(['convert', '-f', 'raw', '-O', 'raw', input, path], 'ignore', 1500);
      expect(r.stderr).toBe(`img convert: interrupted; the image written to ${path} is incomplete\n`);
      expect(r.status).toBe(130);
      expect(r.afterSignalMs).toBeLessThan(5000);
      expect(lstatSync(path).isFIFO()).toBe(true);
    } finally {
      reader.kill('SIGKILL');
    }
  });
});

describe('img convert from a pipe, on Ctrl-C', () => {
  it('"-" as the input, whose writer has stopped writing: ends at once with 130, and the new output is removed', async () => {
    const out = join(tmp.path, 'from-stdin.qcow2');
    const r = await interruptedAfter(['convert', '-f', 'raw', '-O', 'qcow2', '-', out], 'ignore', 1000, 'pipe');
    r.child.stdin?.destroy();
    expect(r.stderr).toBe('img convert: interrupted; the partial output was removed\n');
    expect(r.status).toBe(130);
    expect(r.afterSignalMs).toBeLessThan(5000);
    expect(existsSync(out)).toBe(false);
  });
});

describe('a named pipe as the output', () => {
  it('convertFile writes each format into a FIFO front to back, as to "-": the bytes its reader gets are the image', async () => {
    for (const format of ['raw', 'qcow2', 'vhd', 'vmdk']) {
      const path = fifo(`out-${format}`);
      const chunks: Buffer[] = [];
      const got = new Promise<Buffer>((resolve, reject) => {
        createReadStream(path)
          .on('data', (c) => chunks.push(c as Buffer))
          .on('end', () => resolve(Buffer.concat(chunks)))
          .on('error', reject);
      });
      // The reader's open is under way (it waits there for a writer) before the conversion looks for one.
      await new Promise((resolve) => setTimeout(resolve, 100));
      await convertFile({ input, output: path, srcFormat: 'raw', dstFormat: format });
      const file = join(tmp.path, `got.${format}`);
      writeFileSync(file, await got);
      // An independent reader takes it as the same disk.
      expect(qemuImg(['compare', '-f', 'raw', '-F', format === 'vhd' ? 'vpc' : format, input, file]).stdout).toBe('Images are identical.\n');
      expect(lstatSync(path).isFIFO()).toBe(true);
    }
  });

  it('img convert -O qcow2 into /dev/stdout when it is a pipe: the image, as with "-"', () => {
    const viaStdout = spawnSync(process.execPath, [img, 'convert', '-f', 'raw', '-O', 'qcow2', input, '/dev/stdout'], { maxBuffer: 64 << 20 });
    expect(viaStdout.status).toBe(0);
    const viaDash = spawnSync(process.execPath, [img, 'convert', '-f', 'raw', '-O', 'qcow2', input, '-'], { maxBuffer: 64 << 20 });
    expect(Buffer.compare(viaStdout.stdout, viaDash.stdout)).toBe(0);
    const file = join(tmp.path, 'stdout.qcow2');
    writeFileSync(file, viaStdout.stdout);
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', input, file]).stdout).toBe('Images are identical.\n');
  });

  it('a FIFO whose reader goes away before the end: one line naming it, status 1', async () => {
    const path = fifo('short');
    const reader = spawn('sh', ['-c', `head -c 100 < '${path}' > /dev/null`], { stdio: 'ignore' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const r = spawnSync(process.execPath, [img, 'convert', '-f', 'raw', '-O', 'raw', input, path], { encoding: 'utf8', timeout: 20_000 });
    reader.kill('SIGKILL');
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`img convert: ERR_IMG_IO: ${path}: the pipe was closed before the image was complete (EPIPE)\n`);
    expect(lstatSync(path).isFIFO()).toBe(true);
  });

  it('--bitmaps into a FIFO is refused before anything is written (they are added to the image file after the copy)', () => {
    const path = fifo('bitmaps');
    const r = spawnSync(process.execPath, [img, 'convert', '--bitmaps', '-f', 'raw', '-O', 'qcow2', input, path], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^img convert: --bitmaps needs an output file, not a pipe\n/);
  });

  it('-c into a FIFO is refused before anything is written (a compressed qcow2 needs a file)', async () => {
    const path = fifo('compressed');
    await expect(convertFile({ input, output: path, srcFormat: 'raw', dstFormat: 'qcow2', compress: true })).rejects.toMatchObject({ code: ERROR_CODES.UNSUPPORTED, message: expect.stringMatching(/-c needs the output in a file, not a pipe/) });
    expect(lstatSync(path).isFIFO()).toBe(true);
    expect(existsSync(join(tmp.path, 'compressed'))).toBe(true);
    expect(readFileSync(input).length).toBe(8 << 20);
  });
});

describe('"-" onto a terminal', () => {
  it('is refused before anything is written, as gzip refuses: one line, status 1', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const io: Io = { stdout: (t) => out.push(t), stderr: (t) => err.push(t), isTTY: false, stdoutTTY: true };
    expect(await imgMain(['convert', '-f', 'raw', '-O', 'qcow2', input, '-'], io)).toBe(1);
    expect(out).toEqual([]);
    expect(err.join('')).toMatch(/^img convert: refusing to write a disk image to a terminal: redirect standard output to a file or a pipe\n/);
    // Not a terminal: written.
    const piped: string[] = [];
    const written = await imgMain(['convert', '-f', 'raw', '-O', 'raw', '-S', '0', input, join(tmp.path, 'not-tty.raw')], { stdout: (t) => piped.push(t), stderr: () => undefined, isTTY: false, stdoutTTY: true });
    expect(written).toBe(0);
  });

  it('the bins on a pseudo-terminal (util-linux script) refuse it; /dev/null is not a terminal and takes it', () => {
    const onTty = spawnSync('script', ['-qec', `"${process.execPath}" "${img}" convert -f raw -O raw "${input}" -; echo "status $?"`, '/dev/null'], { encoding: 'latin1', timeout: 20_000 });
    if (onTty.error) return; // no script(1) here: the in-process test above stands
    expect(onTty.stdout).toMatch(/refusing to write a disk image to a terminal/);
    expect(onTty.stdout).toMatch(/status 1/);
    expect(onTty.stdout.length).toBeLessThan(4096);
    const toNull = spawnSync('sh', ['-c', `"${process.execPath}" "${img}" convert -f raw -O raw "${input}" - > /dev/null`]);
    expect(toNull.status).toBe(0);
  });
});

describe('a named pipe as the input', () => {
  const same = (file: string, format = 'qcow2') => qemuImg(['compare', '-f', 'raw', '-F', format, input, file]).stdout;

  it('a process substitution (/dev/fd/63) and /dev/stdin as a pipe are read as "-" is', () => {
    const viaSubst = join(tmp.path, 'subst.qcow2');
    const r = spawnSync('bash', ['-c', `"${process.execPath}" "${img}" convert -f raw -O qcow2 <(cat "${input}") "${viaSubst}"`], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(same(viaSubst)).toBe('Images are identical.\n');
    const viaStdin = join(tmp.path, 'dev-stdin.qcow2');
    const s = spawnSync('sh', ['-c', `cat "${input}" | "${process.execPath}" "${img}" convert -f raw -O qcow2 /dev/stdin "${viaStdin}"`], { encoding: 'utf8', timeout: 30_000 });
    expect(s.status, s.stderr).toBe(0);
    expect(same(viaStdin)).toBe('Images are identical.\n');
  });

  it('pipes on both sides are refused before anything is created (stdin piped, "-" out: no file named "-")', () => {
    for (const [from, to] of [
      ['/dev/stdin', '-'],
      ['-', '/dev/stdout'],
      ['/dev/stdin', '/dev/stdout'],
    ]) {
      const r = spawnSync('sh', ['-c', `cat "${input}" | "${process.execPath}" "${img}" convert -f raw -O qcow2 ${from} ${to} | cat > /dev/null`], { cwd: tmp.path, encoding: 'utf8', timeout: 20_000 });
      expect(r.stderr, `${from} -> ${to}`).toBe('img convert: ERR_IMG_INVALID_ARG: input and output cannot both be streams: convert into a file, or from one\n');
      expect(existsSync(join(tmp.path, '-'))).toBe(false);
    }
  });

  it('a FIFO whose writer waits in its open is read whole; nobody writing: refused at once; without -f: refused by name', async () => {
    const path = fifo('in-waiting');
    const out = join(tmp.path, 'waiting.qcow2');
    // The writer opens first and waits there for a reader (Linux counts it as a writer already).
    const writer = spawn('sh', ['-c', `cat "${input}" > "${path}"`], { stdio: 'ignore' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const r = spawnSync(process.execPath, [img, 'convert', '-f', 'raw', '-O', 'qcow2', path, out], { encoding: 'utf8', timeout: 30_000 });
    await new Promise((resolve) => writer.on('exit', resolve));
    expect(r.status, r.stderr).toBe(0);
    expect(same(out)).toBe('Images are identical.\n');
    const alone = spawnSync(process.execPath, [img, 'convert', '-f', 'raw', '-O', 'qcow2', path, join(tmp.path, 'alone.qcow2')], { encoding: 'utf8', timeout: 20_000 });
    expect(alone.status).toBe(1);
    expect(alone.stderr).toBe(`img convert: ERR_IMG_INVALID_ARG: ${path}: is a FIFO, not an image file: nothing has it open for writing (a conversion streams through a pipe only while the other end is open)\n`);
    expect(existsSync(join(tmp.path, 'alone.qcow2'))).toBe(false);
    const probe = spawnSync(process.execPath, [img, 'convert', '-O', 'qcow2', path, join(tmp.path, 'probed.qcow2')], { encoding: 'utf8', timeout: 20_000 });
    expect(probe.status).toBe(1);
    expect(probe.stderr.split('\n')[0]).toBe(`img convert: -f is needed to read an image from a pipe (${path})`);
  });

  it('a pipe whose writer has stopped writing: Ctrl-C ends the command at once with 130, the new output removed', async () => {
    const path = fifo('in-stalled-writer');
    const out = join(tmp.path, 'stalled-writer.qcow2');
    // Opened for writing and never written.
    const writer = spawn('sh', ['-c', `exec sleep 30 > '${path}'`], { stdio: 'ignore' });
    await new Promise((resolve) => setTimeout(resolve, 300));
    try {
      const r = await interruptedAfter(['convert', '-f', 'raw', '-O', 'qcow2', path, out], 'ignore', 1000);
      expect(r.stderr).toBe('img convert: interrupted; the partial output was removed\n');
      expect(r.status).toBe(130);
      expect(r.afterSignalMs).toBeLessThan(5000);
      expect(existsSync(out)).toBe(false);
    } finally {
      writer.kill('SIGKILL');
    }
  });
});
