// Exit statuses a script can trust: a closed or failing stdout never hides a verdict, and no error prints a stack.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { testImagesDir } from '@img/testkit';
import { statusAfterOutput, type Io } from './cli/common.js';
import { imgMain } from './cli/img.js';

const bin = (name: string) => fileURLToPath(new URL(`../dist/bin/${name}.js`, import.meta.url));
const img = `"${process.execPath}" "${bin('img')}"`;
const imgConvert = `"${process.execPath}" "${bin('img-convert')}"`;
const dirty = join(testImagesDir, 'qcow2', 'dirty.qcow2'); // qemu-img check: 4 errors, status 2
const clean = join(testImagesDir, 'qcow2', 'v3-64k.qcow2');
const demo = join(testImagesDir, 'raw', 'demo.img');
const odd = join(testImagesDir, 'raw', 'odd-size.img');

/** Runs a bash pipeline; status is the first command's (PIPESTATUS), stderr is its stderr. */
function sh(script: string): { status: number; stderr: string } {
  const r = spawnSync('bash', ['-c', `${script}; exit \${PIPESTATUS[0]}`], { encoding: 'utf8' });
  return { status: r.status ?? -1, stderr: r.stderr };
}

/** No stack, no bundled source: every line of stderr is a message. */
function expectNoStack(stderr: string): void {
  expect(stderr).not.toMatch(/\n\s+at |__defProp|node:internal|Node\.js v/);
  expect(stderr.length).toBeLessThan(600);
}

const hasDevFull = existsSync('/dev/full');

describe('a closed stdout (EPIPE) never changes the verdict', () => {
  it('check keeps 2 for a corrupt image, 0 for a clean one', () => {
    expect(sh(`${img} check ${dirty} | true`).status).toBe(2);
    expect(sh(`${img} check ${clean} | true`).status).toBe(0);
  });

  it('compare keeps 1 (different), 0 (same) and 2 (error)', () => {
    expect(sh(`${img} compare ${demo} ${odd} | true`).status).toBe(1);
    expect(sh(`${img} compare ${demo} ${demo} | true`).status).toBe(0);
    const e = sh(`${img} compare ${demo} /nonexistent | true`);
    expect(e.status).toBe(2);
    expectNoStack(e.stderr);
  });

  it('inspect keeps 2 for an unsafe image; map and info end 0', () => {
    expect(sh(`${img} inspect ${join(testImagesDir, 'qcow2', 'chain-top.qcow2')} | true`).status).toBe(2);
    const m = sh(`${img} map --output=json ${clean} | head -c 10 >/dev/null`);
    expect(m.status).toBe(0);
    expect(m.stderr).toBe('');
    expect(sh(`${img} info ${clean} | true`).status).toBe(0);
  });

  it('img-convert writing an image into a closed pipe fails in one line (the image is incomplete)', () => {
    const r = sh(`${imgConvert} raw qcow2 ${demo} - | head -c 100 >/dev/null`);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^img-convert: ERR_IMG_IO: the output pipe was closed before the image was complete\n$/);
  });
});

describe.runIf(hasDevFull)('a failing stdout (ENOSPC on /dev/full) is one line on stderr', () => {
  it('info: status 1, "img: error writing to stdout: No space left on device"', () => {
    const r = sh(`${img} info ${clean} > /dev/full`);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('img: error writing to stdout: No space left on device\n');
  });

  it('check and compare keep a verdict worse than 1, else 1', () => {
    expect(sh(`${img} check ${dirty} > /dev/full`).status).toBe(2);
    expect(sh(`${img} check ${clean} > /dev/full`).status).toBe(1);
    expect(sh(`${img} compare ${demo} ${odd} > /dev/full`).status).toBe(1);
    expect(sh(`${img} compare ${demo} /nonexistent > /dev/full`).status).toBe(2);
  });

  it('img-convert and img convert to stdout, and --help: status 1, one line', () => {
    for (const cmd of [`${imgConvert} raw qcow2 ${demo} -`, `${img} convert raw vhd ${demo} -`, `${imgConvert} --help`]) {
      const r = sh(`${cmd} > /dev/full`);
      expect(r.status, cmd).toBe(1);
      expect(r.stderr, cmd).toMatch(/^img[- ]convert: error writing to stdout: No space left on device\n$/);
    }
  });
});

describe('the last-resort handler', () => {
  // An error nobody catches, thrown from a timer the command does not know about, while the command runs (a command
  // that has returned ends its process at once, timers or not: see exitWhenWritten).
  const boom = `--import "data:text/javascript,setTimeout(() => { throw new Error('boom') }, 0)"`;

  it('prints one line and a hint, never the bundle', () => {
    const r = sh(`"${process.execPath}" ${boom} "${bin('img')}" info ${clean} >/dev/null`);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe('img: internal error: boom\nimg: run with --debug for a stack\n');
    const c = sh(`"${process.execPath}" ${boom} "${bin('img-convert')}" -O raw ${clean} - >/dev/null`);
    expect(c.stderr).toBe('img-convert: internal error: boom\nimg-convert: run with --debug for a stack\n');
  });

  it('prints the stack with --debug', () => {
    const r = sh(`"${process.execPath}" ${boom} "${bin('img')}" info --debug ${clean} >/dev/null`);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^img: internal error: boom\nError: boom\n\s+at /);
  });
});

describe('a command that has returned ends its process at once', () => {
  it('after every byte of its output, through a pipe read slowly, with its status', () => {
    const whole = spawnSync(process.execPath, [bin('img'), 'map', '--output=json', clean], { encoding: 'utf8' });
    expect(whole.status).toBe(0);
    expect(whole.stdout.length).toBeGreaterThan(100);
    const slow = spawnSync('bash', ['-c', `${img} map --output=json ${clean} | (sleep 0.3; cat); exit \${PIPESTATUS[0]}`], { encoding: 'utf8' });
    expect(slow.status).toBe(0);
    expect(slow.stdout).toBe(whole.stdout);
    expect(sh(`${img} check ${dirty} | (sleep 0.3; cat >/dev/null)`).status).toBe(2);
  });

  it('without waiting for a timer it did not set', () => {
    const started = Date.now();
    const r = sh(`"${process.execPath}" --import "data:text/javascript,setTimeout(() => {}, 30000)" "${bin('img')}" info ${clean} >/dev/null`);
    expect(r.status).toBe(0);
    expect(Date.now() - started).toBeLessThan(20000);
  });
});

describe("the process's stdout", () => {
  it('asks a command to wait once megabytes are queued on a pipe nobody reads yet, and lets it go on when they have gone out', () => {
    const io = fileURLToPath(new URL('../dist/cli/process-io.js', import.meta.url));
    const script = [
      `import { processIo } from ${JSON.stringify(io)};`,
      `const mib = 'x'.repeat(1 << 20);`,
      `processIo.stdout(mib);`,
      `process.stderr.write((processIo.stdoutRoom() ? 'wait' : 'room') + '\\n');`,
      `for (let i = 0; i < 5; i++) processIo.stdout(mib);`,
      `const room = processIo.stdoutRoom();`,
      `process.stderr.write((room ? 'wait' : 'room') + '\\n');`,
      `if (room) { await room; process.stderr.write('went out ' + (process.stdout.writableLength < (4 << 20)) + '\\n'); }`,
    ].join('\n');
    const r = spawnSync('bash', ['-c', `"${process.execPath}" --input-type=module -e "$SCRIPT" | (sleep 0.5; wc -c)`], { encoding: 'utf8', env: { ...process.env, SCRIPT: script } });
    expect(r.stderr).toBe('room\nwait\nwent out true\n');
    expect(r.stdout.trim()).toBe(String(6 << 20));
  });
});

describe('statusAfterOutput', () => {
  const io = (failure?: string) => {
    const err: string[] = [];
    const value: Io = {
      stdout: () => undefined,
      stderr: (t) => err.push(t),
      isTTY: false,
      stdoutFailure: async () => (failure ? Object.assign(new Error(`${failure}: oops, write`), { code: failure }) : undefined),
    };
    return { value, err };
  };

  it('keeps the status on EPIPE and without failure', async () => {
    for (const s of [0, 1, 2, 3]) {
      expect(await statusAfterOutput('img', io('EPIPE').value, s)).toBe(s);
      expect(await statusAfterOutput('img', io().value, s)).toBe(s);
    }
  });

  it('says an EIO in strerror words and returns max(1, a worse verdict)', async () => {
    const { value, err } = io('EIO');
    expect(await statusAfterOutput('img', value, 0)).toBe(1);
    expect(err).toEqual(['img: error writing to stdout: Input/output error\n']);
    expect(await statusAfterOutput('img', io('EIO').value, 3)).toBe(3);
    expect(await statusAfterOutput('img', io('EIO').value, 1)).toBe(1);
  });

  it('is applied to every img command (imgMain)', async () => {
    const { value, err } = io('ENOSPC');
    expect(await imgMain(['--version'], value)).toBe(1);
    expect(err).toEqual(['img: error writing to stdout: No space left on device\n']);
  });
});
