// The shipped .d.ts of block, qcow2, vhd and vmdk type-check in a browser
// project (lib ["ES2022", "DOM"], no @types/node, skipLibCheck off), in a
// browser project whose own code writes `await using` (the README's lib
// setup: esnext.disposable added) and in a Node project (lib ESNext,
// @types/node), where the platform's own declarations of
// Symbol.asyncDispose meet ours.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { toolDir } from './bundle.js';

const TSC = join(toolDir, 'node_modules', '.bin', 'tsc');

function tsc(config: string, ...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(TSC, ['-p', join(toolDir, 'types', config), ...args], { encoding: 'utf8', timeout: 50_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('the shipped types', () => {
  it('check under lib ["ES2022", "DOM"] without Node types, the Disk classes (Symbol.asyncDispose) included', () => {
    const r = tsc('tsconfig.json', '--listFiles');
    expect(r.status, r.out).toBe(0);
    // The program really holds the shipped declarations (not the sources), and no Node types.
    for (const file of ['packages/block/dist/disk.d.ts', 'packages/qcow2/dist/image.d.ts', 'packages/vhd/dist/image.d.ts', 'packages/vmdk/dist/disk.d.ts', 'lib.dom.d.ts']) {
      expect(r.out, file).toContain(file);
    }
    expect(r.out).not.toMatch(/@types\/node/);
    expect(r.out).not.toMatch(/lib\.esnext\.disposable/);
  });

  it('check in a browser project that writes `await using` (lib ["ES2022", "DOM", "esnext.disposable"], the README\'s setup), without Node types', () => {
    const r = tsc('tsconfig.using.json', '--listFiles');
    expect(r.status, r.out).toBe(0);
    expect(r.out).toMatch(/lib\.esnext\.disposable/);
    expect(r.out).toContain('lib.dom.d.ts');
    expect(r.out).not.toMatch(/@types\/node/);
  });

  it('check in a Node project (lib ESNext and @types/node), with `await using`', () => {
    const r = tsc('tsconfig.node.json', '--listFiles');
    expect(r.status, r.out).toBe(0);
    expect(r.out).toMatch(/@types\/node/);
    expect(r.out).toMatch(/lib\.esnext\.disposable/);
  });
});
