import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as Record<string, any>;

describe('package.json', () => {
  it('is an ESM package with types-first exports for . and ./node', () => {
    expect(pkg.type).toBe('module');
    expect(pkg.sideEffects).toBe(false);
    for (const entry of ['.', './node']) expect(Object.keys(pkg.exports[entry])).toEqual(['types', 'default']);
    expect(pkg.publishConfig.access).toBe('public');
  });
  it('depends only on @img/block and uuid', () => {
    expect(Object.keys(pkg.dependencies).sort()).toEqual(['@img/block', 'uuid']);
  });
  it('core files import no Node module (only node.ts may)', async () => {
    const { readdirSync } = await import('node:fs');
    const dir = new URL('.', import.meta.url);
    for (const f of readdirSync(dir)) {
      if (!f.endsWith('.ts') || f.endsWith('.test.ts') || f.startsWith('test-') || f === 'node.ts') continue;
      const text = readFileSync(new URL(f, dir), 'utf8');
      expect([f, /from 'node:|@img\/block\/node/.test(text)]).toEqual([f, false]);
    }
  });
});
