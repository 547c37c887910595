import { readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as Record<string, any>;

describe('package.json', () => {
  it('is an ESM package with types-first exports; Node loads the entry that installs node:crypto', () => {
    expect(pkg.type).toBe('module');
    expect(Object.keys(pkg.exports['.'])).toEqual(['types', 'browser', 'node', 'default']);
    expect(pkg.exports['.'].node).toBe('./dist/node/root.js');
    expect(pkg.sideEffects).toEqual(['./dist/node/root.js']);
    expect(Object.keys(pkg.exports['./node'])).toEqual(['types', 'default']);
    expect(pkg.publishConfig.access).toBe('public');
  });
  it('depends only on @img/block and @img/qcow2 (its LUKS machinery)', () => {
    expect(Object.keys(pkg.dependencies).sort()).toEqual(['@img/block', '@img/qcow2']);
  });
  it('core files import no Node module and only the browser-safe entries of @img/qcow2 (node.ts and node/root.ts are the Node entries)', () => {
    const dir = new URL('.', import.meta.url);
    for (const f of readdirSync(dir)) {
      if (!f.endsWith('.ts') || f.endsWith('.test.ts') || f === 'node.ts') continue;
      const text = readFileSync(new URL(f, dir), 'utf8');
      expect([f, /from 'node:|@img\/block\/node|@img\/qcow2\/node/.test(text)]).toEqual([f, false]);
      expect([f, /from '@img\/qcow2'/.test(text)]).toEqual([f, false]);
    }
  });
});
