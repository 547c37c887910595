import { expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describeQemu, tempDir, writeCheckBomb } from '@img/testkit';
import { run } from './test/cli.js';

// Issue 13 point 6: 134 M references in a 448 KiB qcow2 (16384 L1 entries, one L2 table).
describeQemu('the check bomb ends cleanly in every command', () => {
  const cases: Array<{ name: string; args: (path: string, dir: string) => ['img' | 'img-convert', string[]]; status: number; out: RegExp }> = [
    { name: 'img check', args: (p) => ['img', ['check', p]], status: 2, out: /L2 table at 0x50000 is shared by 16384 entries/ },
    { name: 'img inspect', args: (p) => ['img', ['inspect', p]], status: 2, out: /corrupt/ },
    { name: 'img-convert --untrusted', args: (p, d) => ['img-convert', ['--untrusted', '-O', 'raw', p, join(d, 'out.raw')]], status: 1, out: /ERR_IMG_UNSAFE/ },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const { path: dir, cleanup } = tempDir();
      try {
        const path = join(dir, 'bomb.qcow2');
        writeCheckBomb(path);
        const [cmd, args] = c.args(path, dir);
        const r = run(cmd, args);
        expect(r.status).toBe(c.status);
        expect(r.stdout + r.stderr).toMatch(c.out);
        expect(r.stderr).not.toMatch(/FATAL|heap out of memory|Native stack/i);
        if (cmd === 'img-convert') expect(existsSync(join(dir, 'out.raw'))).toBe(false);
      } finally {
        cleanup();
      }
    });
  }
});
