// The other side of the split: Node gets Node's codecs from a plain
// `import '@img/qcow2'`, through its own resolver, through vitest's, and
// through a bundle built for Node (esbuild, platform "node"), where the
// package's `sideEffects: false` must not drop the entry that installs
// them.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import { qcow2Codecs } from '@img/qcow2';
import { vmdkCodecs } from '@img/vmdk';
import { toolDir } from './bundle.js';

const PROBE = `import { qcow2Codecs, openQcow2 } from '@img/qcow2'; console.log(qcow2Codecs().name, typeof openQcow2);`;

function runModule(file: string): string {
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', cwd: toolDir, timeout: 30_000 });
  expect(r.status, r.stderr).toBe(0);
  return r.stdout.trim();
}

describe('@img/qcow2 under Node', () => {
  it("has Node's codecs when vitest resolves it", () => {
    expect(qcow2Codecs().name).toBe('node');
    expect(vmdkCodecs().name).toBe('node');
  });

  it("has Node's codecs when Node resolves it, and in a bundle built for Node", async () => {
    const dir = mkdtempSync(join(toolDir, '.node-entry-'));
    try {
      const plain = join(dir, 'plain.mjs');
      writeFileSync(plain, PROBE);
      expect(runModule(plain)).toBe('node function');
      const bundled = join(dir, 'bundled.mjs');
      await build({ stdin: { contents: PROBE, resolveDir: toolDir, loader: 'ts' }, bundle: true, platform: 'node', format: 'esm', outfile: bundled, logLevel: 'silent', external: ['@toondepauw/*', '@bokuweb/*'] });
      expect(runModule(bundled)).toBe('node function');
      // Control: the same bundle for a browser takes the web codecs.
      const web = join(dir, 'web.mjs');
      await build({ stdin: { contents: PROBE, resolveDir: toolDir, loader: 'ts' }, bundle: true, platform: 'browser', format: 'esm', outfile: web, logLevel: 'silent' });
      expect(runModule(web)).toBe('web function');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
