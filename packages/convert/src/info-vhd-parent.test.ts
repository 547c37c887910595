// img info of a differencing VHD whose parent lives in another directory: the stored name is a bare file name, so no
// "actual path" is made up from it; with --backing-chain the parent found through the locators is named.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { qemuImg, tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { run } from './test/cli.js';

const tmp = tempDir('img-info-vhd-');
afterAll(() => tmp.cleanup());

it('does not invent a parent path next to a differencing VHD', () => {
  const base = join(tmp.path, 'base.vhd');
  qemuImg(['create', '-q', '-f', 'vpc', base, '8M']);
  mkdirSync(join(tmp.path, 'sub'));
  const child = join(tmp.path, 'sub', 'child.vhd');
  expect(run('img', ['create', '-q', '-f', 'vpc', '-b', base, child]).status).toBe(0);
  const plain = run('img', ['info', child]);
  expect(plain.status, plain.stderr).toBe(0);
  expect(plain.stdout).toContain('backing file: base.vhd\n');
  expect(plain.stdout).not.toContain('sub/base.vhd');
  const chain = run('img', ['info', '--backing-chain', child]);
  expect(chain.status, chain.stderr).toBe(0);
  expect(chain.stdout).toContain(base);
});
