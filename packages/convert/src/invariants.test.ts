// Invariants every published package keeps: ESM exports with types first,
// no side effects, public access, Node >= 20, and no Node-only imports in
// core modules (only the node entry points and the CLI may use them).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '@img/testkit';
import { LIMITS } from '@img/block';
import * as qcow2Layout from '@img/qcow2/layout';
import * as vhd from '@img/vhd';

const packagesDir = join(repoRoot, 'packages');
const packages = readdirSync(packagesDir).filter((d) => statSync(join(packagesDir, d)).isDirectory());

/** Files allowed to import node: modules, relative to packages/. */
const NODE_ALLOWED = [
  /^block\/src\/node\//,
  /^convert\/src\/cli\//,
  /^convert\/src\/bin\//,
  /^convert\/src\/node\.ts$/,
  /^convert\/src\/node\//,
  /^vhd\/src\/node\.ts$/,
  // Node's qcow2 codecs (zlib, the native zstd addon) and the worker pool, behind the "node" condition
  /^qcow2\/src\/node\//,
  // The NBD server and client are sockets (node:net); the protocol's codecs and state machines beside them are not.
  /^nbd\/src\/(server|client)\.ts$/,
  // Node's codecs for streamOptimized grains (zlib) and the worker pool, behind the "node" condition, and the file helpers
  /^vmdk\/src\/node\//,
];

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (p.endsWith('.ts') && !p.endsWith('.test.ts') && !/\/test[-/]/.test(p) && !/\/test-[^/]*\.ts$/.test(p)) out.push(p);
  }
  return out;
}

describe('package invariants', () => {
  it('finds every package', () => {
    expect(packages.sort()).toEqual(['block', 'convert', 'luks', 'nbd', 'qcow2', 'vhd', 'vmdk']);
  });

  for (const name of packages) {
    it(`@img/${name}: package.json is publishable ESM`, () => {
      const pkg = JSON.parse(readFileSync(join(packagesDir, name, 'package.json'), 'utf8'));
      expect(pkg.name).toBe(`@img/${name}`);
      expect(pkg.type).toBe('module');
      // No side effects, but for the module that installs Node's codecs when Node loads @img/qcow2
      // (a bundler for Node must keep it, though the names it re-exports resolve past it).
      if (Array.isArray(pkg.sideEffects)) expect(pkg.sideEffects).toEqual(['./dist/node/root.js']);
      else expect(pkg.sideEffects).toBe(false);
      expect(pkg.publishConfig?.access).toBe('public');
      expect(pkg.engines?.node).toBe('>=20');
      expect(pkg.files).toContain('dist');
      // The MIT text ships in every package (npm pack lists it), the same as the repository's.
      expect(pkg.license).toBe('MIT');
      expect(pkg.files).toContain('LICENSE');
      expect(readFileSync(join(packagesDir, name, 'LICENSE'), 'utf8')).toBe(readFileSync(join(repoRoot, 'LICENSE'), 'utf8'));
      expect(readFileSync(join(repoRoot, 'LICENSE'), 'utf8')).toMatch(/^MIT License\n\nCopyright \(c\) 2026 img contributors\n/);
      expect(pkg.private).toBeUndefined();
      // The npm page: a README of its own, and where the repository (and what the README names outside the package) is.
      expect(existsSync(join(packagesDir, name, 'README.md')), 'README.md').toBe(true);
      expect(pkg.repository).toEqual({ type: 'git', url: 'git+https://github.com/img-project/img.git', directory: `packages/${name}` });
      // The declaration and source maps point into src/: it ships, without the tests and test helpers.
      expect(pkg.files).toEqual(expect.arrayContaining(['src', '!src/**/*.test.ts', '!src/**/test-*.ts']));
      for (const [key, entry] of Object.entries(pkg.exports as Record<string, unknown>)) {
        if (typeof entry === 'string') continue;
        expect(Object.keys(entry as object)[0], `exports["${key}"] lists types first`).toBe('types');
      }
      for (const dep of Object.keys(pkg.dependencies ?? {})) {
        if (dep.startsWith('@img/')) expect(pkg.dependencies[dep]).toMatch(/^workspace:/);
      }
    });

    it(`@img/${name}: core modules use no Node-only API`, () => {
      const offenders: string[] = [];
      for (const file of walk(join(packagesDir, name, 'src'))) {
        const rel = relative(packagesDir, file);
        if (NODE_ALLOWED.some((r) => r.test(rel))) continue;
        const text = readFileSync(file, 'utf8')
          .replace(/\/\*[\s\S]*?\*\//g, '')
          .replace(/^\s*\/\/.*$/gm, '');
        if (/from ['"]node:|require\(['"]node:|\bBuffer\.|process\./.test(text)) offenders.push(rel);
      }
      expect(offenders).toEqual([]);
    });
  }

  it('the formats apply the bounds documented in LIMITS', () => {
    expect(qcow2Layout.MAX_L1_TABLE_BYTES).toBe(LIMITS.qcow2MaxL1TableBytes);
    expect(qcow2Layout.MAX_REFCOUNT_TABLE_BYTES).toBe(LIMITS.qcow2MaxRefcountTableBytes);
    expect(qcow2Layout.MAX_SNAPSHOTS).toBe(LIMITS.qcow2MaxSnapshots);
    expect(qcow2Layout.MAX_SNAPSHOT_EXTRA_DATA).toBe(LIMITS.qcow2MaxSnapshotExtraData);
    expect(qcow2Layout.MIN_CLUSTER_BITS).toBe(LIMITS.qcow2MinClusterBits);
    expect(qcow2Layout.MAX_CLUSTER_BITS).toBe(LIMITS.qcow2MaxClusterBits);
    expect(vhd.DEFAULT_MAX_CHAIN_DEPTH).toBe(LIMITS.maxChainDepth);
    expect(vhd.VHD_MAX_SIZE).toBe(LIMITS.vhdMaxSize);
  });

  it('qcow2 and vhd never import each other', () => {
    for (const [a, b] of [
      ['qcow2', 'vhd'],
      ['vhd', 'qcow2'],
    ]) {
      for (const file of walk(join(packagesDir, a!, 'src'))) expect(readFileSync(file, 'utf8')).not.toMatch(new RegExp(`@img/${b}`));
    }
  });
});
