/**
 * `img convert -n` syncs the existing target as qemu-img does: not with
 * `-t unsafe` (the default), at the end with the other modes. strace is the
 * oracle for "synced": the fsync/fdatasync calls the whole process made.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeWith, qemuImg, seededBytes, tempDir } from '@img/testkit';
import { bin } from './test/cli.js';

const MiB = 1024 * 1024;
const tmp = tempDir('img-n-sync-');
afterAll(() => tmp.cleanup());

/** Runs `img convert -n` under strace; answers how many fsync/fdatasync calls it made. */
function syncsOf(args: string[], log: string): number {
  const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=fsync,fdatasync,sync_file_range', '-o', log, process.execPath, bin('img'), 'convert', '-n', ...args], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return readFileSync(log, 'utf8')
    .split('\n')
    .filter((line) => /\b(fsync|fdatasync|sync_file_range)\(/.test(line)).length;
}

describeWith('strace', 'convert -n and syncing the target', () => {
  it('leaves the target to the page cache by default, as qemu-img -t unsafe does, and syncs it with -t writeback, none or directsync', () => {
    const input = join(tmp.path, 'in.raw');
    writeFileSync(input, seededBytes(8 * MiB, 41));
    const counts: Record<string, number> = {};
    for (const mode of ['default', 'unsafe', 'writeback', 'none', 'directsync']) {
      for (const format of ['raw', 'qcow2']) {
        const target = join(tmp.path, `t-${mode}.${format}`);
        qemuImg(['create', '-q', '-f', format, target, '8M']);
        counts[`${mode} ${format}`] = syncsOf([...(mode === 'default' ? [] : ['-t', mode]), '-f', 'raw', '-O', format, input, target], join(tmp.path, `strace-${mode}-${format}.txt`));
        qemuImg(['compare', '-q', '-f', 'raw', '-F', format, input, target]);
        if (format === 'qcow2') expect(qemuImg(['check', '-q', target], { allowFail: true }).status).toBe(0);
      }
    }
    for (const format of ['raw', 'qcow2']) {
      expect(counts[`default ${format}`]).toBe(0);
      expect(counts[`unsafe ${format}`]).toBe(0);
      for (const mode of ['writeback', 'none', 'directsync']) expect(counts[`${mode} ${format}`]).toBeGreaterThan(0);
    }
  });
});
