import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { tempDir } from '@img/testkit';
import { elfInterpreter, loadNativeFrom, nativeCandidates, nativeStatus, prebuildPath, runtimeLibc, NATIVE_ADDON_NAME } from './native-loader.js';

const pkgRoot = new URL('../../', import.meta.url);
const localBuild = new URL(`build/Release/${NATIVE_ADDON_NAME}.node`, pkgRoot);
const linux = process.platform === 'linux';

describe('native helper loader', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());

  /** A package folder of its own: `files` maps a path in it to a source file (or to bytes). */
  function fakePackage(name: string, files: Record<string, URL | Uint8Array>): URL {
    const root = join(tmp.path, name);
    for (const [rel, from] of Object.entries(files)) {
      mkdirSync(join(root, rel, '..'), { recursive: true });
      if (from instanceof URL) copyFileSync(from, join(root, rel));
      else writeFileSync(join(root, rel), from);
    }
    mkdirSync(root, { recursive: true });
    return pathToFileURL(root + '/');
  }

  it('names prebuilds as native/prebuild.mjs writes them, and reads binding.gyp for the addon name', async () => {
    const targets = (await import('../../native/targets.mjs' as string)) as {
      prebuildPath: (name: string, platform: string, arch: string, libc?: string) => string;
      readBindingGyp: () => { name: string; sources: string[] };
    };
    expect(targets.readBindingGyp().name).toBe(NATIVE_ADDON_NAME);
    expect(targets.readBindingGyp().sources.every((s) => /^native\/[\w-]+\.c$/.test(s))).toBe(true);
    for (const [p, a, l] of [
      ['linux', 'x64', 'glibc'],
      ['linux', 'arm64', 'glibc'],
      ['linux', 'x64', 'musl'],
      ['darwin', 'arm64', undefined],
    ] as const) {
      expect(prebuildPath(p, a, l)).toBe(targets.prebuildPath(NATIVE_ADDON_NAME, p, a, l));
    }
    expect(prebuildPath('linux', 'x64', 'musl')).toBe('prebuilds/linux-x64/img_seek.napi.musl.node');
  });

  it('looks at the libc-tagged prebuild, the untagged one, then the local build', () => {
    expect(nativeCandidates('linux', 'arm64', 'musl').map((c) => `${c.source}:${c.path}`)).toEqual(['prebuild:prebuilds/linux-arm64/img_seek.napi.musl.node', 'prebuild:prebuilds/linux-arm64/img_seek.napi.node', 'build:build/Release/img_seek.node']);
    expect(nativeCandidates('win32', 'x64', undefined).map((c) => c.path)).toEqual(['prebuilds/win32-x64/img_seek.napi.node', 'build/Release/img_seek.node']);
  });

  it.runIf(linux)('detects the C library as Node’s own report does', () => {
    const header = (process.report.getReport() as { header: { glibcVersionRuntime?: string } }).header;
    expect(runtimeLibc()).toBe(header.glibcVersionRuntime ? 'glibc' : 'musl');
  });

  const readelf = spawnSync('readelf', ['--version']).status === 0;
  it.runIf(linux && readelf)('reads the dynamic loader an executable names as readelf does, and nothing from what is not a 64-bit little-endian ELF file', () => {
    for (const file of [process.execPath, '/bin/sh']) {
      const shown = /Requesting program interpreter: ([^\]]+)\]/.exec(spawnSync('readelf', ['-lW', file], { encoding: 'utf8' }).stdout)?.[1];
      expect(elfInterpreter(file)).toBe(shown);
    }
    const loader = elfInterpreter(process.execPath);
    if (loader !== undefined) expect(runtimeLibc()).toBe(/ld-musl/.test(loader) ? 'musl' : 'glibc');
    const head = new Uint8Array(4096);
    head.set([0x7f, 0x45, 0x4c, 0x46, 1, 1]); // ELFCLASS32
    const dir = fakePackage('elf', { text: new TextEncoder().encode('not an executable'), elf32: head, short: head.subarray(0, 20) });
    for (const name of ['text', 'elf32', 'short', 'absent']) expect(elfInterpreter(new URL(name, dir).pathname)).toBeUndefined();
  });

  it('says why nothing loaded when a package has no binary for this platform', () => {
    const root = fakePackage('empty', { 'package.json': new TextEncoder().encode('{}') });
    const r = loadNativeFrom(root, { platform: 'linux', arch: 'riscv64', libc: 'glibc', disabled: false });
    expect(r.exports).toBeUndefined();
    expect(r.status).toMatchObject({ loaded: false, source: 'none', target: 'linux-riscv64-glibc', reason: 'no prebuilt binary for linux-riscv64-glibc and no build from source' });
    expect(r.status.tried).toHaveLength(3);
    expect(loadNativeFrom(root, { disabled: true }).status.reason).toBe('IMG_NO_NATIVE=1 is set');
  });

  it.runIf(linux && existsSync(localBuild))('loads a prebuild for this platform before an older local build, a newer local build first, and passes over one that does not load', () => {
    const libc = runtimeLibc();
    const tagged = prebuildPath(process.platform, process.arch, libc);
    const good = fakePackage('good', { [tagged]: localBuild, [`build/Release/${NATIVE_ADDON_NAME}.node`]: localBuild });
    // As in an installed tarball: npm gives every packed file the same old date.
    const packed = new Date('1985-10-26T08:15:00Z');
    utimesSync(new URL(tagged, good), packed, packed);
    utimesSync(new URL(`build/Release/${NATIVE_ADDON_NAME}.node`, good), packed, packed);
    const r = loadNativeFrom(good, { disabled: false });
    expect(r.status).toMatchObject({ loaded: true, source: 'prebuild', tried: [] });
    expect(r.status.path).toBe(join(new URL(tagged, good).pathname));
    expect(typeof r.exports?.seekRanges).toBe('function');

    // A from-source build made after the prebuild (npm install --build-from-source, a developer's rebuild) goes first.
    utimesSync(new URL(`build/Release/${NATIVE_ADDON_NAME}.node`, good), new Date(), new Date());
    expect(loadNativeFrom(good, { disabled: false }).status).toMatchObject({ loaded: true, source: 'build', tried: [] });

    // A damaged prebuild (not an ELF file): the local build is used, and the failure is recorded.
    const bad = fakePackage('bad', { [tagged]: new Uint8Array(64).fill(0x41), [`build/Release/${NATIVE_ADDON_NAME}.node`]: localBuild });
    utimesSync(new URL(tagged, bad), packed, packed);
    utimesSync(new URL(`build/Release/${NATIVE_ADDON_NAME}.node`, bad), packed, packed);
    const b = loadNativeFrom(bad, { disabled: false });
    expect(b.status).toMatchObject({ loaded: true, source: 'build' });
    expect(b.status.tried[0]).toMatch(new RegExp(`^${tagged.replaceAll('.', '\\.')}: .*(invalid ELF header|file too short)`));

    // Only the damaged one: nothing loads, and the reason names the file and the loader's complaint.
    const worse = fakePackage('worse', { [tagged]: new Uint8Array(64).fill(0x41) });
    const w = loadNativeFrom(worse, { disabled: false });
    expect(w.status.loaded).toBe(false);
    expect(w.status.reason).toMatch(new RegExp(`^${tagged.replaceAll('.', '\\.')} did not load: `));
  });

  it.runIf(linux)('reports the features of the helper this process loaded', () => {
    const s = nativeStatus();
    if (process.env.IMG_NO_NATIVE) {
      expect(s).toMatchObject({ loaded: false, reason: 'IMG_NO_NATIVE=1 is set' });
      return;
    }
    const expected = existsSync(new URL(prebuildPath(process.platform, process.arch, runtimeLibc()), pkgRoot)) || existsSync(localBuild);
    expect(s.loaded).toBe(expected);
    if (!s.loaded) return;
    expect(s.features.seekData).toBe(true);
    expect(s.features.nowait).toBe(true);
    // Linux >= 3.15 has open-file-description locks; every kernel a Node 20 runs on does.
    expect(s.features.locks).toBe('ofd');
    expect(existsSync(s.path!)).toBe(true);
  });

  it('IMG_NO_NATIVE=1 turns the helper off, and the status says so', () => {
    const dist = new URL('dist/node/index.js', pkgRoot);
    expect(existsSync(dist), 'build @img/block first (dist/ is what the child process imports)').toBe(true);
    const script = `import { nativeStatus } from ${JSON.stringify(dist.href)}; console.log(JSON.stringify(nativeStatus()));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, IMG_NO_NATIVE: '1' } });
    expect(r.stderr).toBe('');
    const s = JSON.parse(r.stdout) as ReturnType<typeof nativeStatus>;
    expect(s).toMatchObject({ loaded: false, source: 'none', reason: 'IMG_NO_NATIVE=1 is set', features: { seekData: false, nowait: false, locks: 'none', copyFileRange: false, punchHole: false, inflate: false } });
  });
});
