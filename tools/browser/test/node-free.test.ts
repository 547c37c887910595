// The core entry points run in a browser: bundled as a browser bundler
// bundles them (platform "browser", from the built dist through each
// package's exports), their whole import graph holds no Node built-in
// module. The Node entries are bundled the same way as a control: the
// check sees node: imports where they are.
import { describe, expect, it } from 'vitest';
import { bundleForBrowser } from './bundle.js';

describe('core entry points import nothing from Node (as a browser bundler resolves them)', () => {
  for (const [pkg, own] of [
    ['@img/block', 'packages/block/dist/'],
    ['@img/qcow2', 'packages/qcow2/dist/'],
    ['@img/vhd', 'packages/vhd/dist/'],
    ['@img/vmdk', 'packages/vmdk/dist/'],
    ['@img/convert', 'packages/convert/dist/'],
  ] as const) {
    it(`${pkg}: no node: or built-in module, directly or through any dependency`, async () => {
      const b = await bundleForBrowser(`export * from '${pkg}';`);
      expect(b.nodeImports).toEqual([]);
      // The graph really is the package's (and not a stub): its dist modules are in it.
      expect(b.inputs.filter((f) => f.includes(own)).length).toBeGreaterThan(5);
    });
  }

  it('@img/qcow2 resolves for a browser to its default entry, with the web codecs and without its Node modules', async () => {
    const b = await bundleForBrowser(`export * from '@img/qcow2';`);
    expect(b.inputs.some((f) => f.endsWith('packages/qcow2/dist/web-codecs.js'))).toBe(true);
    expect(b.inputs.filter((f) => f.includes('packages/qcow2/dist/node/'))).toEqual([]);
    // fzstd decodes zstd in the browser; zstd-wasm's web build encodes it.
    expect(b.inputs.some((f) => f.includes('fzstd'))).toBe(true);
    const wasm = b.inputs.filter((f) => f.includes('zstd-wasm'));
    expect(wasm.some((f) => f.includes('/dist/web/'))).toBe(true);
    expect(wasm.filter((f) => !f.includes('/dist/web/'))).toEqual([]);
  });

  it('@img/vmdk resolves for a browser to its default entry, with the web codecs and without its Node modules', async () => {
    const b = await bundleForBrowser(`export * from '@img/vmdk';`);
    expect(b.inputs.some((f) => f.endsWith('packages/vmdk/dist/web-codecs.js'))).toBe(true);
    expect(b.inputs.filter((f) => f.includes('packages/vmdk/dist/node/'))).toEqual([]);
  });

  it('control: the Node entries are seen importing from Node', async () => {
    // (node:zlib is loaded there when first needed, through createRequire: node:module is what a bundler sees.)
    const v = await bundleForBrowser(`export * from '@img/vmdk/node';`);
    expect(v.nodeImports.some((i) => i.endsWith('-> node:module'))).toBe(true);
    expect(v.nodeImports.some((i) => i.endsWith('-> node:os'))).toBe(true);
    const q = await bundleForBrowser(`export * from '@img/qcow2/node';`);
    expect(q.nodeImports.some((i) => i.endsWith('-> node:module'))).toBe(true);
    expect(q.nodeImports.some((i) => i.endsWith('-> node:os'))).toBe(true);
    const b = await bundleForBrowser(`export * from '@img/block/node';`);
    expect(b.nodeImports.length).toBeGreaterThan(0);
  });
});
