#!/usr/bin/env node
// Builds the prebuilt native helpers that ship inside the @img/block tarball
// (run at `prepack`, and by CI before a release):
//
//   prebuilds/linux-x64/img_seek.napi.glibc.node    gcc
//   prebuilds/linux-arm64/img_seek.napi.glibc.node  aarch64-linux-gnu-gcc (Debian: gcc-aarch64-linux-gnu)
//   prebuilds/linux-x64/img_seek.napi.musl.node     musl-gcc (Debian: musl-tools)
//
// The compiler is called directly, not through node-gyp: an N-API module is
// one shared object whose napi_* symbols the running node provides, and
// node-gyp cannot cross-compile without a second toolchain description.
// Sources, defines and cflags come from binding.gyp, so a C file added there
// is in the prebuilds too. N-API headers do not depend on the architecture:
// the running Node's own (<prefix>/include/node) serve every target.
//
// Every binary is checked: an ELF shared object for the right machine; the
// host's own is loaded into a child node and must export seekRanges; the
// others are dlopen()ed by a small C program built for their target (musl's
// loader runs it here; arm64 runs under qemu-aarch64 when it is installed).
//
// Usage: node native/prebuild.mjs [--strict] [--only linux-x64-glibc,...]
//   default   builds what the machine has compilers for; fails if the host's own target cannot be built
//   --strict  every target must build and pass its checks (IMG_PREBUILD_STRICT=1 says the same)
// IMG_NO_NATIVE=1 skips everything (a tarball without prebuilds: pure JS or a from-source build).
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { packageRoot, prebuildPath, readBindingGyp, runtimeLibc } from './targets.mjs';

/** ELF e_machine values (System V ABI): the check that a binary is for the target it claims. */
const EM_X86_64 = 62;
const EM_AARCH64 = 183;

const TARGETS = [
  { id: 'linux-x64-glibc', platform: 'linux', arch: 'x64', libc: 'glibc', machine: EM_X86_64, cc: ['x86_64-linux-gnu-gcc', 'gcc', 'cc'], runner: [] },
  { id: 'linux-arm64-glibc', platform: 'linux', arch: 'arm64', libc: 'glibc', machine: EM_AARCH64, cc: ['aarch64-linux-gnu-gcc', 'gcc', 'cc'], runner: ['qemu-aarch64', '-L', '/usr/aarch64-linux-gnu'] },
  { id: 'linux-x64-musl', platform: 'linux', arch: 'x64', libc: 'musl', machine: EM_X86_64, cc: ['musl-gcc', 'x86_64-linux-musl-gcc'], runner: [] },
];

const args = process.argv.slice(2);
const strict = args.includes('--strict') || process.env.IMG_PREBUILD_STRICT === '1';
const onlyArg = args.indexOf('--only');
const only = onlyArg >= 0 ? (args[onlyArg + 1] ?? '').split(',') : undefined;

if (process.env.IMG_NO_NATIVE) {
  console.log('prebuild: IMG_NO_NATIVE is set; no prebuilt binaries');
  process.exit(0);
}

const gyp = readBindingGyp();
const hostId = `${process.platform}-${process.arch}-${runtimeLibc() ?? 'none'}`;

/** Whether `cmd` runs at all (a compiler exists under that name). */
function runs(cmd) {
  return spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
}

/** A compiler for `target`: the native `gcc`/`cc` only where they produce the target's code. */
function compilerFor(target) {
  for (const cc of target.cc) {
    const generic = cc === 'gcc' || cc === 'cc';
    if (generic && `${target.platform}-${target.arch}-${target.libc}` !== hostId) continue;
    if (runs(cc)) return cc;
  }
  return undefined;
}

/** The folder holding node_api.h for the running Node (or npm_config_nodedir's). */
function nodeIncludeDir() {
  const prefixes = [process.env.npm_config_nodedir, process.config?.variables?.node_prefix, dirname(dirname(process.execPath))];
  for (const p of prefixes) {
    if (p && existsSync(join(p, 'include', 'node', 'node_api.h'))) return join(p, 'include', 'node');
  }
  return undefined;
}

/** Reads an ELF header: { elf, is64, type (3 = shared object), machine }. */
function elfHeader(file) {
  const b = readFileSync(file).subarray(0, 64);
  const elf = b.length >= 20 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
  if (!elf) return { elf: false };
  const le = b[5] === 1;
  const u16 = (o) => (le ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1]);
  return { elf: true, is64: b[4] === 2, type: u16(16), machine: u16(18) };
}

/**
 * The newest glibc symbol version a binary asks for ("2.26"), read from the
 * version names in its dynamic string table; undefined for musl.
 */
function glibcFloor(file) {
  let best;
  for (const m of readFileSync(file, 'latin1').matchAll(/GLIBC_(\d+)\.(\d+)/g)) {
    const v = [Number(m[1]), Number(m[2])];
    if (!best || v[0] > best[0] || (v[0] === best[0] && v[1] > best[1])) best = v;
  }
  return best;
}

/** Node 20's own Linux binaries need glibc 2.28: a prebuild must not ask for more. */
const GLIBC_MAX = [2, 28];

function run(cmd, argv, options = {}) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', ...options });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}`.trim() };
}

const include = nodeIncludeDir();
const work = mkdtempSync(join(tmpdir(), 'img-prebuild-'));
const failures = [];
const built = [];
try {
  for (const target of TARGETS) {
    if (only && !only.includes(target.id)) continue;
    const isHost = target.id === hostId;
    const required = strict || isHost;
    const fail = (why) => {
      (required ? failures : []).push(`${target.id}: ${why}`);
      console.log(`prebuild: ${target.id}: ${required ? 'FAILED' : 'skipped'}: ${why}`);
    };
    const cc = compilerFor(target);
    if (!cc) {
      fail(`no compiler (tried ${target.cc.filter((c) => !((c === 'gcc' || c === 'cc') && !isHost)).join(', ')})`);
      continue;
    }
    if (!include) {
      fail('no Node-API headers (<node prefix>/include/node/node_api.h); set npm_config_nodedir');
      continue;
    }
    const rel = prebuildPath(gyp.name, target.platform, target.arch, target.libc);
    const out = join(packageRoot, rel);
    const tmpOut = join(work, `${target.id}.node`);
    const compile = run(cc, ['-shared', '-fPIC', '-fvisibility=hidden', '-s', '-std=gnu11', ...gyp.cflags, ...gyp.defines.map((d) => `-D${d}`), `-I${include}`, ...gyp.sources.map((s) => join(packageRoot, s)), '-o', tmpOut]);
    if (!compile.ok) {
      fail(`${cc} failed: ${compile.out.split('\n').slice(0, 5).join(' | ')}`);
      continue;
    }
    const h = elfHeader(tmpOut);
    if (!h.elf || !h.is64 || h.type !== 3 || h.machine !== target.machine) {
      fail(`the output is not a 64-bit ELF shared object for machine ${target.machine}: ${JSON.stringify(h)}`);
      continue;
    }
    const floor = target.libc === 'glibc' ? glibcFloor(tmpOut) : undefined;
    if (floor && (floor[0] > GLIBC_MAX[0] || (floor[0] === GLIBC_MAX[0] && floor[1] > GLIBC_MAX[1]))) {
      fail(`it needs glibc ${floor.join('.')}, newer than the ${GLIBC_MAX.join('.')} Node 20 itself needs`);
      continue;
    }
    let verified = floor ? `glibc >= ${floor.join('.')}; ` : '';
    if (isHost) {
      // The real thing: this node loads it and it answers with its functions.
      const probe = run(process.execPath, ['-e', `const m={exports:{}};process.dlopen(m,${JSON.stringify(tmpOut)});if(typeof m.exports.seekRanges!=='function')process.exit(3);console.log(Object.keys(m.exports).join(','))`]);
      if (!probe.ok) {
        fail(`node cannot load it: ${probe.out.split('\n')[0]}`);
        continue;
      }
      verified += `loaded by node ${process.version} (exports ${probe.out})`;
    } else {
      // Loadable by the target's own dynamic linker: a C program built for the target dlopen()s it.
      const checker = join(work, `${target.id}-dlopen-check`);
      const cBuild = run(cc, ['-O1', '-o', checker, join(packageRoot, 'native', 'dlopen-check.c'), '-ldl']);
      const runner = target.runner.length === 0 || runs(target.runner[0]) ? target.runner : undefined;
      if (!cBuild.ok) {
        verified += `not loaded (the dlopen check did not build: ${cBuild.out.split('\n')[0]})`;
      } else if (runner === undefined) {
        verified += `not loaded (${target.runner[0]} is not installed)`;
      } else {
        const argv = [...runner, checker, tmpOut];
        const check = run(argv[0], argv.slice(1));
        if (!check.ok) {
          fail(`its dynamic linker refuses it: ${check.out.split('\n')[0]}`);
          continue;
        }
        verified += `dlopen()ed by the ${target.libc} loader${runner.length ? ` under ${runner[0]}` : ''}: ${check.out}`;
      }
    }
    mkdirSync(dirname(out), { recursive: true });
    // Moved into place whole: a process loading the helper meanwhile never sees half a file.
    const staged = `${out}.${process.pid}.tmp`;
    copyFileSync(tmpOut, staged);
    chmodSync(staged, 0o644);
    renameSync(staged, out);
    built.push(rel);
    console.log(`prebuild: ${target.id}: ${rel} (${cc}; ${verified})`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (failures.length > 0) {
  console.error(`prebuild: ${failures.length} required target${failures.length === 1 ? '' : 's'} failed:\n  ${failures.join('\n  ')}`);
  process.exit(1);
}
if (built.length === 0) console.log('prebuild: nothing built');
