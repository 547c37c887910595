// The packages as a user gets them: `pnpm pack` of @img/convert and the
// workspace packages it depends on, installed with `npm install
// --ignore-scripts` into an empty project. No install script runs, so no
// compiler is involved: the native helper must come from the prebuilt
// binary inside @img/block's tarball, and a sparse raw conversion must read
// only the data. With IMG_NO_NATIVE=1 the command says, once, what is lost.
import { spawnSync } from 'node:child_process';
import { closeSync, cpSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImg, tempDir } from '@img/testkit';

const repo = fileURLToPath(new URL('../../../', import.meta.url));
const tmp = tempDir('img-e2e-pack-');
afterAll(() => tmp.cleanup());
const project = join(tmp.path, 'project');
const tarballs = join(tmp.path, 'tarballs');
const MiB = 1024 * 1024;

/** The environment of a user's shell: nothing pnpm or npm set for the test run leaks into the child. */
function userEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^(npm_|pnpm_|PNPM_|IMG_)/i.test(k)) env[k] = v;
  return { ...env, ...extra };
}

function sh(cmd: string, args: string[], options: { cwd: string; env?: Record<string, string> }): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { cwd: options.cwd, encoding: 'utf8', env: userEnv(options.env), maxBuffer: 64 * MiB });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** @img/convert and the workspace packages it needs, found from the package.json files (a new format package is included by itself). */
function packagesToPack(): { name: string; dir: string }[] {
  const byName = new Map<string, string>();
  for (const d of readdirSync(join(repo, 'packages'))) {
    const pj = join(repo, 'packages', d, 'package.json');
    if (existsSync(pj)) byName.set((JSON.parse(readFileSync(pj, 'utf8')) as { name: string }).name, join(repo, 'packages', d));
  }
  const wanted = new Set<string>();
  const visit = (name: string) => {
    if (wanted.has(name)) return;
    wanted.add(name);
    const pj = JSON.parse(readFileSync(join(byName.get(name)!, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
    for (const dep of Object.keys(pj.dependencies ?? {})) if (byName.has(dep)) visit(dep);
  };
  visit('@img/convert');
  return [...wanted].map((name) => ({ name, dir: byName.get(name)! }));
}

const img = (args: string[], env: Record<string, string> = {}) => sh(process.execPath, [join(project, 'node_modules', '@img', 'convert', 'dist', 'bin', 'img.js'), ...args], { cwd: project, env });
const imgConvert = (args: string[], env: Record<string, string> = {}) => sh(process.execPath, [join(project, 'node_modules', '@img', 'convert', 'dist', 'bin', 'img-convert.js'), ...args], { cwd: project, env });

/** A 256 MiB raw file with 1 MiB of data at 100 MiB: sparse where the file system allows. */
function sparseRaw(path: string): void {
  const fd = openSync(path, 'w');
  writeSync(fd, new Uint8Array(MiB).fill(0x5a), 0, MiB, 100 * MiB);
  writeSync(fd, new Uint8Array(1), 0, 1, 256 * MiB - 1);
  closeSync(fd);
}

describe('pnpm pack + npm install --ignore-scripts', () => {
  beforeAll(() => {
    mkdirSync(tarballs, { recursive: true });
    mkdirSync(project, { recursive: true });
    const packages = packagesToPack();
    expect(packages.map((p) => p.name)).toContain('@img/block');
    // pnpm pack runs @img/block's prepack (native/prebuild.mjs) and replaces workspace: ranges with versions.
    // It packs copies in a workspace of their own: the prepack writes prebuilds/ into the package it packs, and
    // the postpack removes it, which in the repository would happen under the tests running beside this one
    // (a process loading @img/block meanwhile takes the prebuild, which is then gone).
    const workspace = join(tmp.path, 'workspace');
    mkdirSync(join(workspace, 'packages'), { recursive: true });
    for (const f of ['package.json', '.npmrc']) if (existsSync(join(repo, f))) cpSync(join(repo, f), join(workspace, f));
    writeFileSync(join(workspace, 'pnpm-workspace.yaml'), 'packages:\n  - packages/*\n');
    const skip = new Set(['node_modules', 'test-results', 'build', 'prebuilds', '.turbo']);
    for (const p of packages) cpSync(p.dir, join(workspace, relative(repo, p.dir)), { recursive: true, filter: (from) => !skip.has(relative(p.dir, from)) });
    // pnpm resolves workspace: ranges through each package's node_modules: the copies use the repository's.
    for (const p of packages) if (existsSync(join(p.dir, 'node_modules'))) symlinkSync(join(p.dir, 'node_modules'), join(workspace, relative(repo, p.dir), 'node_modules'));
    const filters = packages.flatMap((p) => ['--filter', p.name]);
    const pack = sh('npx', ['-y', 'pnpm@10', ...filters, '-r', 'pack', '--pack-destination', tarballs], { cwd: workspace });
    expect(pack.status, pack.stderr + pack.stdout).toBe(0);
    const files = readdirSync(tarballs).filter((f) => f.endsWith('.tgz'));
    expect(files).toHaveLength(packages.length);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'pack-install-check', private: true, type: 'module' }));
    // Optional dependencies (a native zstd) are left out: they have nothing to do with this and cost time.
    const install = sh('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--omit=optional', '--prefer-offline', ...files.map((f) => join(tarballs, f))], { cwd: project });
    expect(install.status, install.stderr).toBe(0);
  }, 300_000);

  it('ships the prebuilt helpers in @img/block and loads the one for this machine, with no install script run', () => {
    const block = join(project, 'node_modules', '@img', 'block');
    expect(existsSync(join(block, 'build')), 'no install script ran, so no from-source build').toBe(false);
    const shipped = readdirSync(join(block, 'prebuilds'), { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.node'))
      .sort();
    if (process.env.CI) {
      // .ci/run installs the cross compiler and musl-tools: every target is in the tarball.
      expect(shipped).toEqual(['linux-arm64/img_seek.napi.glibc.node', 'linux-x64/img_seek.napi.glibc.node', 'linux-x64/img_seek.napi.musl.node']);
    }
    if (process.platform !== 'linux' || !['x64', 'arm64'].includes(process.arch)) return;

    const r = sh(process.execPath, ['--input-type=module', '-e', "import { nativeStatus } from '@img/block/node'; console.log(JSON.stringify(nativeStatus()))"], { cwd: project });
    expect(r.stderr).toBe('');
    const status = JSON.parse(r.stdout) as { loaded: boolean; source: string; path: string; target: string; features: Record<string, unknown> };
    expect(status).toMatchObject({ loaded: true, source: 'prebuild', features: { seekData: true, nowait: true, locks: 'ofd' } });
    expect(status.path).toBe(join(block, 'prebuilds', `${process.platform}-${process.arch}`, `img_seek.napi.${status.target.split('-')[2]}.node`));

    const doctor = img(['doctor']);
    expect(doctor.status).toBe(0);
    expect(doctor.stdout).toContain(`native helper: loaded, prebuilt binary shipped in @img/block: ${status.path}`);
    expect(doctor.stdout).toContain('seek data/holes (SEEK_DATA/SEEK_HOLE): active');
    expect(doctor.stdout).toContain('image locks: active (OFD locks');

    // The install-time fallback sees the prebuild and compiles nothing.
    const build = sh(process.execPath, ['native/build.mjs'], { cwd: block });
    expect(build.status).toBe(0);
    expect(build.stdout + build.stderr).toBe('');
    expect(existsSync(join(block, 'build'))).toBe(false);
  });

  it.runIf(process.platform === 'linux')('converts a sparse raw reading only its data, and says nothing', () => {
    sparseRaw(join(project, 'a.raw'));
    const r = img(['convert', '-O', 'qcow2', 'a.raw', 'a.qcow2']);
    expect(r.status, r.stderr).toBe(0);
    // As qemu-img convert: a successful img convert prints nothing; img-convert's summary line says what was read.
    expect(r.stderr).toBe('');
    const summary = imgConvert(['raw', 'qcow2', 'a.raw', 'a2.qcow2']);
    expect(summary.status, summary.stderr).toBe(0);
    expect(summary.stderr).toMatch(/^img-convert: converted raw a\.raw -> qcow2 a2\.qcow2: 256 MiB virtual, 1 MiB read, 1 MiB written, 255 MiB left sparse, [\d.]+ s\n$/);
    if (spawnSync('qemu-img', ['--version']).status === 0 || process.env.CI) {
      expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', join(project, 'a.raw'), join(project, 'a.qcow2')]).status).toBe(0);
    }
  });

  it.runIf(process.platform === 'linux')('compresses zstd clusters with the system libzstd through the prebuilt helper (the optional zstd addon is not installed)', () => {
    const zstdVersion = sh(process.execPath, ['--input-type=module', '-e', "import { nativeStatus } from '@img/block/node'; console.log(nativeStatus().features.zstd ?? '')"], { cwd: project }).stdout.trim();
    // CI's qemu-utils brings libzstd.so.1; elsewhere a machine without it keeps the WebAssembly encoder.
    if (process.env.CI) expect(zstdVersion).toMatch(/^1\.\d+\.\d+$/);
    if (zstdVersion) expect(img(['doctor']).stdout).toContain(`zstd clusters (system libzstd): active (libzstd ${zstdVersion}`);
    const words = 'cluster refcount guest host table snapshot bitmap '.repeat(1 << 12);
    writeFileSync(join(project, 't.raw'), words.repeat(Math.ceil((8 << 20) / words.length)).slice(0, 8 << 20));
    const r = img(['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 't.raw', 't.qcow2']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    if (spawnSync('qemu-img', ['--version']).status === 0 || process.env.CI) {
      expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', join(project, 't.raw'), join(project, 't.qcow2')]).status).toBe(0);
      const check = qemuImg(['check', '--output=json', join(project, 't.qcow2')]);
      expect(check.status).toBe(0);
      expect(JSON.parse(check.stdout)).toMatchObject({ 'compressed-clusters': 128 });
    }
  });

  it.runIf(process.platform === 'linux')('with IMG_NO_NATIVE=1 warns exactly once, and reads the whole file', () => {
    sparseRaw(join(project, 'b.raw'));
    sparseRaw(join(project, 'c.raw'));
    const WARNING = 'img: native helper not loaded (IMG_NO_NATIVE=1 is set); sparse raw files are read in full and qemu image locks are not taken\n';
    const compare = img(['compare', 'b.raw', 'c.raw'], { IMG_NO_NATIVE: '1' });
    expect(compare.status).toBe(0);
    expect(compare.stderr).toBe(WARNING);
    const convert = imgConvert(['raw', 'qcow2', 'b.raw', 'b.qcow2'], { IMG_NO_NATIVE: '1' });
    expect(convert.status).toBe(0);
    const convertWarning = WARNING.replace(/^img:/, 'img-convert:');
    expect(convert.stderr.startsWith(convertWarning)).toBe(true);
    expect(convert.stderr.split(convertWarning)).toHaveLength(2);
    expect(convert.stderr).toContain('256 MiB read');
  });
});
