// The built commands start from V8's code cache only when it was made from the very bytes of their bundle (scripts/bundle-bins.mjs).
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';

const binDir = fileURLToPath(new URL('../dist/bin/', import.meta.url));
const MAGIC = 'img-v8-code-cache-1\n';
// Inside the package, so that the bundle still finds @img/convert and its dependencies.
const work = mkdtempSync(join(fileURLToPath(new URL('..', import.meta.url)), '.launcher-test-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A copy of the img command (launcher, bundle, cache, the package.json that makes them CommonJS) in its own folder, two levels below the package as dist/bin is. */
function copyOfImg(name: string): string {
  const dir = mkdtempSync(join(work, `${name}-`));
  for (const f of ['img.js', 'img.bundle.cjs', 'img.bundle.cjs.cache', 'package.json']) copyFileSync(join(binDir, f), join(dir, f));
  return dir;
}

function runImg(dir: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [join(dir, 'img.js'), ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
}

describe('the command launchers', () => {
  it.each(['img', 'img-convert'])('%s: the build made a code cache for exactly its bundle', (name) => {
    const source = readFileSync(join(binDir, `${name}.bundle.cjs`));
    const cache = readFileSync(join(binDir, `${name}.bundle.cjs.cache`));
    expect(cache.toString('latin1', 0, MAGIC.length)).toBe(MAGIC);
    expect(cache.readUInt32LE(MAGIC.length)).toBe(source.length);
    expect(cache.readUInt32LE(MAGIC.length + 4)).toBe(crc32(source));
    expect(cache.length).toBeGreaterThan(MAGIC.length + 8 + 1024);
  });

  it('runs a bundle edited in place (same length), not the code cached from the old one', () => {
    const dir = copyOfImg('edited');
    const file = join(dir, 'img.bundle.cjs');
    const text = readFileSync(file, 'utf8');
    expect(text).toContain('Usage: img <command>');
    // V8 checks only the source's length: without the CRC the old "Usage" would be printed.
    writeFileSync(file, text.replace('Usage: img <command>', 'USAGE: img <command>'));
    const r = runImg(dir, []);
    expect(r.stderr.split('\n')[0]).toBe('USAGE: img <command> [options]');
  });

  it('starts without the cache, or with a damaged one, or with IMG_CODE_CACHE=0', () => {
    const dir = copyOfImg('damaged');
    const want = runImg(binDir, ['--version']);
    expect(want.status).toBe(0);
    expect(want.stdout).toMatch(/^img \d/);
    const cache = join(dir, 'img.bundle.cjs.cache');
    const bytes = readFileSync(cache);
    bytes.fill(0x41, MAGIC.length + 8, MAGIC.length + 4096);
    writeFileSync(cache, bytes);
    expect(runImg(dir, ['--version'])).toMatchObject({ status: 0, stdout: want.stdout });
    writeFileSync(cache, 'not a cache');
    expect(runImg(dir, ['--version'])).toMatchObject({ status: 0, stdout: want.stdout });
    rmSync(cache);
    expect(runImg(dir, ['--version'])).toMatchObject({ status: 0, stdout: want.stdout });
    expect(runImg(binDir, ['--version'], { IMG_CODE_CACHE: '0' })).toMatchObject({ status: 0, stdout: want.stdout });
  });

  // Node 20 loses the dynamic import loader of a script compiled from a code cache that another process made;
  // the compression pool is imported late, and without it `img convert -c` compressed on one thread.
  it.each(['1', '0'])('imports modules late whether the bundle runs from the code cache or not (IMG_CODE_CACHE=%s): convert -c starts its workers', (useCache) => {
    const dir = copyOfImg(`late-import-${useCache}`);
    const input = join(dir, 'in.raw');
    writeFileSync(input, Buffer.from('text that compresses well, '.repeat(40_000)).subarray(0, 1 << 20));
    // Counts the workers the command starts: a preload, so it sees node:worker_threads before the bundle does.
    const hook = join(dir, 'count-workers.cjs');
    writeFileSync(hook, "const wt = require('node:worker_threads'); let n = 0; const W = wt.Worker;" + ' wt.Worker = class extends W { constructor(...a) { super(...a); n++; } };' + " process.on('exit', () => process.stderr.write('workers started: ' + n + '\\n'));");
    const cacheBefore = readFileSync(join(dir, 'img.bundle.cjs.cache'));
    const r = spawnSync(process.execPath, ['-r', hook, join(dir, 'img.js'), 'convert', '-c', '-O', 'qcow2', input, join(dir, 'out.qcow2')], {
      encoding: 'utf8',
      env: { ...process.env, IMG_CODE_CACHE: useCache, IMG_COMPRESS_THREADS: '2' },
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('workers started: 2');
    // The cache in use is the build's, for this very bundle.
    expect(readFileSync(join(dir, 'img.bundle.cjs.cache')).equals(cacheBefore)).toBe(true);
    expect(cacheBefore.readUInt32LE(MAGIC.length + 4)).toBe(crc32(readFileSync(join(dir, 'img.bundle.cjs'))));
  });

  it('loads node:crypto only where a command needs it: not for a conversion into qcow2, but for a VHD id', () => {
    // node:crypto starts OpenSSL's side of Node (about 2 ms): every command paid it while @img/qcow2 imported it for encrypted images.
    const input = join(work, 'crypto-input.raw');
    writeFileSync(input, new Uint8Array(1 << 20).fill(7));
    const probe = join(work, 'crypto-probe.cjs');
    writeFileSync(probe, "process.on('exit', () => process.stderr.write('crypto modules: ' + process.moduleLoadList.filter((m) => /crypto/.test(m)).length + '\\n'));\n");
    const loaded = (format: string): number => {
      const r = spawnSync(process.execPath, ['-r', probe, join(binDir, 'img-convert.js'), '-f', 'raw', '-O', format, input, join(work, `crypto-output.${format}`)], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      return Number(/crypto modules: (\d+)/.exec(r.stderr)?.[1]);
    };
    expect(loaded('qcow2')).toBe(0);
    expect(loaded('vpc')).toBeGreaterThan(0);
  });

  it.each(['1', '0'])('a conversion into a file, stdout and stderr pipes, loads neither node:net nor node:tty (IMG_CODE_CACHE=%s)', (useCache) => {
    // Node makes a pipe's stream, with node:net and its streams (about a millisecond), on first use: the process guard used to
    // touch stdout and stderr at the start and the end of every command, img-convert's last line made stderr's, and
    // the NBD client imported node:net.
    const input = join(work, 'quiet-input.raw');
    writeFileSync(input, new Uint8Array(1 << 20).fill(7));
    const probe = join(work, 'quiet-probe.cjs');
    writeFileSync(probe, "process.on('exit', () => require('node:fs').writeSync(2, 'modules: ' + process.moduleLoadList.join(',') + '\\n'));\n");
    const commands: Array<[string, string[]]> = [
      ['img.js', ['convert', '-f', 'raw', '-O', 'qcow2']],
      ['img-convert.js', ['raw', 'qcow2']],
    ];
    for (const [bin, args] of commands) {
      const r = spawnSync(process.execPath, ['-r', probe, join(binDir, bin), ...args, input, join(work, `quiet-output-${useCache}.qcow2`)], {
        encoding: 'utf8',
        env: { ...process.env, IMG_CODE_CACHE: useCache },
      });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toBe('');
      // img convert says nothing (as qemu-img); img-convert says what it did, in one line, before the probe's.
      const lines = r.stderr.split('\n');
      expect(lines[0], bin).toMatch(bin === 'img.js' ? /^modules: / : /^img-convert: converted raw .* -> qcow2 .*quiet-output/);
      const modules = (/^modules: (.*)$/m.exec(r.stderr)?.[1] ?? '').split(',');
      expect(modules, bin).toContain('NativeModule fs/promises');
      expect(modules, bin).not.toContain('NativeModule net');
      expect(modules, bin).not.toContain('NativeModule tty');
      // Without the launcher's CRC of the bundle (IMG_CODE_CACHE=0, or Node's own compile cache), not node:zlib either.
      if (useCache === '0') expect(modules, bin).not.toContain('NativeModule zlib');
    }
  });
});
