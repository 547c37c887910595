// Command lines from the CLI audit against qemu-img 7.2: each refused or accepted as qemu-img does it,
// with qemu-img's words and exit status (qemu-img is the oracle where it is installed).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-cli-audit-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

/** qemu-img's stderr without its "qemu-img: " prefix, and its status. */
function qemu(args: string[]): { status: number; message: string; stdout: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  return { status: r.status ?? -1, message: r.stderr.replace(/^qemu-img: /, '').trimEnd(), stdout: r.stdout };
}

describeQemu('create: the size once', () => {
  it.each(['qcow2', 'raw', 'vpc', 'vmdk'])('-f %s -o size=1M <file> 2M is refused, and no file is created', (fmt) => {
    const ours = p(`twice-img.${fmt}`);
    const theirs = p(`twice-qemu.${fmt}`);
    const r = run('img', ['create', '-f', fmt, '-o', 'size=1M', ours, '2M']);
    const q = qemu(['create', '-f', fmt, '-o', 'size=1M', theirs, '2M']);
    expect(r.status).toBe(q.status);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`img create: ERR_IMG_INVALID_ARG: ${q.message.replace(theirs, ours)}\n`);
    expect(existsSync(ours)).toBe(false);
    expect(existsSync(theirs)).toBe(false);
  });

  it('-o size= alone still sets the size', () => {
    const r = run('img', ['create', '-q', '-f', 'qcow2', '-o', 'size=3M', p('once.qcow2')]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuImg(['info', '--output=json', p('once.qcow2')]).stdout).toContain('"virtual-size": 3145728');
  });
});
