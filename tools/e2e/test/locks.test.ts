// A running qemu holds the image: img refuses to write it (and to read it
// while qemu writes, unless -U), and while img writes, qemu refuses it.
// Both sides are real processes: qemu-io, and the img bins from a shell.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeEach, expect, it } from 'vitest';
import { describeQemu, holdWithQemuIo, qemuImg, qemuIo, type QemuIoHolder } from '@img/testkit';
import { expectOneLine, userShell } from './user.js';

const user = userShell('img-e2e-locks-');
afterAll(() => user.cleanup());
const sha = (name: string) =>
  createHash('sha256')
    .update(readFileSync(user.path(name)))
    .digest('hex');

async function holding<T>(readOnly: boolean, body: (h: QemuIoHolder) => T): Promise<T> {
  const holder = await holdWithQemuIo(user.path('vm.qcow2'), { format: 'qcow2', readOnly });
  try {
    return body(holder);
  } finally {
    await holder.stop();
  }
}

describeQemu('image locks shared with qemu', () => {
  beforeEach(() => {
    user.sh('rm -f ./*.qcow2 ./*.raw');
    qemuImg(['create', '-f', 'qcow2', user.path('vm.qcow2'), '64M']);
    qemuIo(user.path('vm.qcow2'), 'qcow2', ['write -P 7 0 1M']);
  });

  it('a VM writing the image: every writing command and plain reads are refused, -U reads', async () => {
    const before = sha('vm.qcow2');
    await holding(false, () => {
      for (const cmd of ['img snapshot -c s1 vm.qcow2', 'img resize vm.qcow2 +1M', 'img amend -o lazy_refcounts=on vm.qcow2', 'img check -r all vm.qcow2', 'img-convert raw qcow2 other.raw vm.qcow2 --force-format', 'img info vm.qcow2', 'img-convert qcow2 raw vm.qcow2 out.raw']) {
        if (cmd.includes('other.raw')) user.sh('truncate -s 1M other.raw');
        const r = user.sh(cmd);
        expect(r.status, cmd).toBe(1);
        const lines = expectOneLine(r.stderr);
        expect(lines, cmd).toHaveLength(1);
        expect(lines[0], cmd).toMatch(/ERR_IMG_LOCKED: .*vm\.qcow2: Failed to get (shared )?"write" lock\. Is another process using the image \[.*vm\.qcow2\]\?/);
      }
      const info = user.sh('img info -U --output=json vm.qcow2');
      expect(info.status, info.stderr).toBe(0);
      expect(JSON.parse(info.stdout)['virtual-size']).toBe(64 * 2 ** 20);
      expect(user.sh('img convert -U -O raw vm.qcow2 copy.raw').status).toBe(0);
    });
    expect(sha('vm.qcow2')).toBe(before);
    expect(qemuImg(['compare', user.path('vm.qcow2'), user.path('copy.raw')]).status).toBe(0);
  });

  it('a read-only qemu: img reads, img does not write', async () => {
    await holding(true, () => {
      expect(user.sh('img info vm.qcow2').status).toBe(0);
      expect(user.sh('img-convert qcow2 raw vm.qcow2 out.raw').status).toBe(0);
      const r = user.sh('img snapshot -c s1 vm.qcow2');
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/ERR_IMG_LOCKED: .*Failed to get "write" lock/);
    });
  });

  it('img writing the image: qemu-img info and qemu-io refuse it, qemu-img info -U reads it', async () => {
    // A long conversion holds its output for writing: qemu must not touch it meanwhile.
    user.sh('truncate -s 4G big.raw');
    const child = spawn('bash', ['-c', 'exec img-convert --json-progress -S 0 raw qcow2 big.raw out.qcow2'], { cwd: user.dir, env: { ...process.env, PATH: `${user.dir}/../.bin:${process.env.PATH ?? ''}` }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('bytes-done')) resolve();
      });
      child.once('exit', () => reject(new Error(`img-convert ended before the test looked: ${stderr}`)));
    });
    try {
      const info = qemuImg(['info', user.path('out.qcow2')], { allowFail: true });
      expect(info.status).toBe(1);
      expect(info.stderr).toMatch(/Failed to get shared "write" lock/);
      const io = qemuImg(['info', '-U', user.path('out.qcow2')], { allowFail: true });
      expect(io.status, io.stderr).toBe(0);
      const w = user.sh(`qemu-io -f qcow2 -c 'write 0 512' out.qcow2`);
      expect(w.stdout + w.stderr).toMatch(/Failed to get "write" lock/);
    } finally {
      child.kill('SIGINT');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  });
});
