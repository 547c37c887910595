import { closeSync, openSync, statSync, writeSync, ftruncateSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, qemuCompare, qemuImg, seededBytes, tempDir, testImagesDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-convert-');
afterAll(() => tmp.cleanup());

describe('img-convert basics', () => {
  it('prints help and version', () => {
    const help = run('img-convert', ['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/Usage: img-convert/);
    expect(help.stdout).toMatch(/raw, qcow2, vhd/);
    const v = run('img-convert', ['--version']);
    expect(v.status).toBe(0);
    expect(v.stdout).toMatch(/^img-convert \d+\.\d+\.\d+/);
  });

  it('reports usage errors in one line with status 1', () => {
    const r = run('img-convert', ['raw', 'raw', 'x']);
    expect(r.status).toBe(1);
    expect(r.stderr.split('\n')[0]).toMatch(/^img-convert: expected <src-format> <dst-format> <input> <output>, or \[-f fmt\] \[-O fmt\] <input> <output>; got 3 arguments/);
    const mixed = run('img-convert', ['-O', 'qcow2', 'raw', 'raw', 'a', 'b']);
    expect(mixed.status).toBe(1);
    expect(mixed.stderr).toMatch(/^img-convert: -f and -O go with the two-argument form/);
    const u = run('img-convert', ['--bogus', 'raw', 'raw', 'a', 'b']);
    expect(u.status).toBe(1);
    expect(u.stderr).toMatch(/^img-convert: Unknown option '--bogus'/);
  });

  it('reports image errors as "img-convert: CODE: message" without a stack, and with one under --debug', () => {
    const missing = join(tmp.path, 'missing.img');
    const r = run('img-convert', ['raw', 'raw', missing, join(tmp.path, 'x.img')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^img-convert: ERR_IMG_NOT_FOUND: .*missing\.img/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    const d = run('img-convert', ['--debug', 'raw', 'raw', missing, join(tmp.path, 'x.img')]);
    expect(d.stderr).toMatch(/\n\s+at /);
    const f = run('img-convert', ['raw', 'nope', missing, join(tmp.path, 'x.img')]);
    expect(f.stderr).toMatch(/ERR_IMG_UNKNOWN_FORMAT: unknown format "nope"/);
  });

  it('refuses a qcow2 file declared as raw unless --force-format', () => {
    const input = join(testImagesDir, 'qcow2', 'v3-64k.qcow2');
    const out = join(tmp.path, 'confused.img');
    const r = run('img-convert', ['raw', 'raw', input, out]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/ERR_IMG_UNSAFE: .*looks like qcow2, not raw/);
    expect(existsSync(out)).toBe(false);
    const forced = run('img-convert', ['--force-format', 'raw', 'raw', input, out]);
    expect(forced.status).toBe(0);
    expect(statSync(out).size).toBe(statSync(input).size);
  });

  it('removes a half-written output when the conversion fails', () => {
    // A qcow2 whose backing file is missing fails after the output exists.
    const out = join(tmp.path, 'failed.qcow2');
    const r = run('img-convert', ['raw', 'qcow2', join(tmp.path, 'nonexistent'), out]);
    expect(r.status).toBe(1);
    expect(existsSync(out)).toBe(false);
  });
});

describeQemu('img-convert raw raw on a 1 GiB sparse file with 64 MiB of data in 8 places', () => {
  it('produces identical content and a sparse output', () => {
    const input = join(tmp.path, 'big.img');
    const output = join(tmp.path, 'big-out.img');
    const fd = openSync(input, 'w');
    ftruncateSync(fd, 1 << 30);
    for (let i = 0; i < 8; i++) writeSync(fd, seededBytes(8 << 20, i + 1), 0, 8 << 20, i * (128 << 20) + (3 << 20));
    closeSync(fd);
    const r = run('img-convert', ['raw', 'raw', input, output]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/converted raw .* -> raw .*1 GiB virtual/);
    expect(qemuCompare(input, output, 'raw', 'raw')).toBe(true);
    const used = statSync(output).blocks * 512;
    expect(used).toBeGreaterThanOrEqual(64 << 20);
    expect(used).toBeLessThan(66 << 20);
    expect(JSON.parse(qemuImg(['info', '--output=json', output]).stdout)['virtual-size']).toBe(1 << 30);
  });
});

describe('-o parsing', () => {
  it('splits on commas, keeps ",," as a literal comma, and takes bare keys as on', async () => {
    const { parseCreateOptions } = await import('./convert.js');
    expect(parseCreateOptions(['cluster_size=4k,lazy_refcounts', 'backing_file=a,,b.qcow2,compat=1.1'])).toEqual({
      cluster_size: '4k',
      lazy_refcounts: 'on',
      backing_file: 'a,b.qcow2',
      compat: '1.1',
    });
  });
});
