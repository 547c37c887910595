// The maintenance commands (create, snapshot, amend, commit, rebase, measure) used as a user uses them,
// through the built bin and beside qemu-img 7.2 on the same command line: what a script would notice
// (exit status, which stream, the words of human output, the image left behind) must agree.
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, holdWithQemuIo, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-commands-e2e-');
afterAll(() => tmp.cleanup());

/** A qcow2 chain base <- top in a fresh directory, base with data; returns the directory. */
function chain(): string {
  const d = mkdtempSync(join(tmp.path, 'chain-'));
  qemuImg(['create', '-q', '-f', 'qcow2', join(d, 'base.qcow2'), '64M']);
  qemuIo(join(d, 'base.qcow2'), 'qcow2', ['write -P 1 0 2M']);
  qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'top.qcow2')]);
  qemuIo(join(d, 'top.qcow2'), 'qcow2', ['write -P 3 1M 2M']);
  return d;
}

describeQemu('img create beside qemu-img create', () => {
  it('makes an overlay of an image a running qemu holds for writing, as qemu-img does (the backing file is only read)', async () => {
    const d = chain();
    const holder = await holdWithQemuIo(join(d, 'top.qcow2'), { format: 'qcow2' });
    try {
      const ours = run('img', ['create', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', 'ours.qcow2'], { cwd: d });
      const theirs = qemuImg(['create', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', 'theirs.qcow2'], { cwd: d, allowFail: true });
      expect(theirs.status).toBe(0);
      expect(ours.stderr).toBe('');
      expect(ours.status).toBe(0);
      expect(ours.stdout).toBe(theirs.stdout.replace('theirs.qcow2', 'ours.qcow2'));
    } finally {
      await holder.stop();
    }
    expect(qemuImg(['compare', join(d, 'ours.qcow2'), join(d, 'top.qcow2')]).status).toBe(0);
  });
});
