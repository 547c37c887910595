import { spawnSync } from 'node:child_process';
import { closeSync, openSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nativeStatus } from '@img/block/node';
import { tempDir } from '@img/testkit';

const bin = (name: string) => fileURLToPath(new URL(`../../dist/bin/${name}.js`, import.meta.url));
const WARNING = /native helper not loaded \(IMG_NO_NATIVE=1 is set\); sparse raw files are read in full and qemu image locks are not taken\n/g;

function run(cmd: 'img' | 'img-convert', args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [bin(cmd), ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const NO_NATIVE = { IMG_NO_NATIVE: '1' };

describe('the native helper in the commands', () => {
  const tmp = tempDir();
  const a = join(tmp.path, 'a.raw');
  const b = join(tmp.path, 'b.raw');
  beforeAll(() => {
    // 64 MiB virtual, 64 KiB of data in the middle.
    for (const file of [a, b]) {
      const fd = openSync(file, 'w');
      writeSync(fd, new Uint8Array(64 * 1024).fill(7), 0, 64 * 1024, 32 * 1024 * 1024);
      closeSync(fd);
      truncateSync(file, 64 * 1024 * 1024);
    }
  });
  afterAll(() => tmp.cleanup());

  it('img doctor and img --version --verbose say where the helper came from and which features are active', () => {
    const s = nativeStatus();
    const doctor = run('img', ['doctor']);
    expect(doctor.status).toBe(0);
    expect(run('img', ['--version', '--verbose']).stdout).toBe(doctor.stdout);
    expect(doctor.stdout).toMatch(/^img \d+\.\d+\.\d+\nnode: v\d+/);
    // Which file loads may differ between two processes while a pack test builds prebuilds in the checkout: the kind and the features may not.
    if (s.loaded) expect(doctor.stdout).toMatch(/\nnative helper: loaded, (prebuilt binary shipped in @img\/block|built from source at install): \/\S*img_seek[.\w]*\.node\n/);
    else expect(doctor.stdout).toContain(`native helper: not loaded (${s.reason})`);
    expect(doctor.stdout).toContain(`seek data/holes (SEEK_DATA/SEEK_HOLE): ${s.features.seekData ? 'active' : 'inactive'}`);
    expect(doctor.stdout).toContain(`image locks: ${s.features.locks === 'none' ? 'inactive' : 'active'}`);
    expect(doctor.stdout).toMatch(/copy_file_range: (in)?active/);
    expect(doctor.stdout).toContain(`hole punching (fallocate): ${s.features.punchHole ? 'active' : 'inactive'}`);
    expect(doctor.stdout).toContain(s.features.zstd ? `zstd clusters (system libzstd): active (libzstd ${s.features.zstd},` : 'zstd clusters (system libzstd): inactive: ');
    // Plain --version stays one line.
    expect(run('img', ['--version']).stdout).toMatch(/^img \d+\.\d+\.\d+\n$/);

    const off = run('img', ['doctor'], NO_NATIVE);
    expect(off.stdout).toContain('native helper: not loaded (IMG_NO_NATIVE=1 is set)');
    expect(off.stdout).toContain('seek data/holes (SEEK_DATA/SEEK_HOLE): inactive: sparse raw files are read in full');
    expect(off.stdout).toContain('image locks: inactive: qemu image locks are not taken');
    expect(off.stdout).toContain('zstd clusters (system libzstd): inactive: zstd clusters are compressed in worker threads');
    expect(off.stderr).toBe('');
  });

  it('without the helper, the first raw input read in full prints one warning line, and only then', () => {
    const compare = run('img', ['compare', a, b], NO_NATIVE);
    expect(compare.status).toBe(0);
    // Two raw inputs, one line: nothing else on stderr.
    expect(compare.stderr).toBe('img: native helper not loaded (IMG_NO_NATIVE=1 is set); sparse raw files are read in full and qemu image locks are not taken\n');

    const out = join(tmp.path, 'out.qcow2');
    const convert = run('img', ['convert', '-O', 'qcow2', a, out], NO_NATIVE);
    expect(convert.status).toBe(0);
    expect(convert.stderr.match(WARNING)?.length).toBe(1);
    expect(convert.stderr).toMatch(/^img: native helper not loaded/);

    const legacy = run('img-convert', ['raw', 'qcow2', a, join(tmp.path, 'out2.qcow2')], NO_NATIVE);
    expect(legacy.stderr).toMatch(/^img-convert: native helper not loaded \(IMG_NO_NATIVE=1 is set\)/);
    // The cost the warning names: the whole file was read (img-convert's summary says it; img convert prints none).
    expect(legacy.stderr).toContain('64 MiB read');

    const dd = run('img', ['dd', `if=${a}`, `of=${join(tmp.path, 'dd.raw')}`, '-O', 'raw'], NO_NATIVE);
    expect(dd.status, dd.stderr).toBe(0);
    expect(dd.stderr.match(WARNING)?.length).toBe(1);

    // A qcow2 input maps its own holes: nothing to warn about.
    const map = run('img', ['map', '--output=json', out], NO_NATIVE);
    expect(map.status).toBe(0);
    expect(map.stderr).toBe('');
  });

  it.runIf(nativeStatus().features.seekData)('with the helper, nothing is printed and only the data is read', () => {
    const convert = run('img-convert', ['-O', 'qcow2', a, join(tmp.path, 'out3.qcow2')]);
    expect(convert.status).toBe(0);
    expect(convert.stderr).not.toContain('native helper');
    expect(convert.stderr).toContain('64 KiB read');
    expect(run('img', ['compare', a, b]).stderr).toBe('');
  });
});
