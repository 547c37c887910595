// What a user types wrong, and the links a user has lying around: every
// mistake gets one line and status 1, and no spelling of "the same file"
// gets an input overwritten.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo } from '@img/testkit';
import { expectOneLine, userShell } from './user.js';

const user = userShell('img-e2e-typos-');
afterAll(() => user.cleanup());
const sha = (name: string) =>
  createHash('sha256')
    .update(readFileSync(user.path(name)))
    .digest('hex');

describeQemu('typos and links', () => {
  let before: string;
  beforeAll(() => {
    qemuImg(['create', '-f', 'qcow2', user.path('disk.qcow2'), '32M']);
    qemuIo(user.path('disk.qcow2'), 'qcow2', ['write -P 9 0 2M']);
    user.sh('ln -s disk.qcow2 link.qcow2 && ln disk.qcow2 hard.qcow2 && mkdir sub && ln -s ../disk.qcow2 sub/up.qcow2');
    before = sha('disk.qcow2');
  });

  const typos: Array<[string, RegExp]> = [
    ['img ifno disk.qcow2', /unknown command "ifno"/],
    ['img info --outptu=json disk.qcow2', /Unknown option|unknown option/i],
    ['img info', /expected <file>/],
    ['img info missing.qcow2', /missing\.qcow2/],
    ['img info .', /is a directory, not an image file/],
    ['img-convert qcow2 raw disk.qcow2', /expected <src-format> <dst-format> <input> <output>/],
    ['img-convert qcow3 raw disk.qcow2 out.raw', /qcow3/],
    ['img-convert raw qcow2 disk.qcow2 out.qcow2', /looks like qcow2/],
    ['img resize disk.qcow2 12Q', /size/],
    ['img check -r some disk.qcow2', /-r takes leaks or all/],
  ];
  for (const [cmd, why] of typos) {
    it(`${cmd}: one line, status 1`, () => {
      const r = user.sh(cmd);
      expect(r.status, r.stderr).toBe(1);
      const lines = expectOneLine(r.stderr);
      expect(lines.length).toBeLessThanOrEqual(2);
      expect(r.stderr).toMatch(why);
      expect(sha('disk.qcow2')).toBe(before);
    });
  }

  it('img create with a missing backing file names the image and the name, and leaves no file (as qemu-img)', () => {
    const r = user.sh('img create -f qcow2 -b gone.qcow2 -F qcow2 new.qcow2 1M');
    expect(r.status).toBe(1);
    expect(expectOneLine(r.stderr)).toEqual([expect.stringMatching(/ERR_IMG_NOT_FOUND: qcow2: new\.qcow2: backing file "gone\.qcow2" \(resolved to .*gone\.qcow2\) does not exist/)]);
    expect(user.sh('test -e new.qcow2').status).not.toBe(0);
    expect(qemuImg(['create', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', user.path('new.qcow2'), '1M'], { allowFail: true }).status).toBe(1);
    expect(user.sh('test -e new.qcow2').status).not.toBe(0);
  });

  for (const out of ['disk.qcow2', './disk.qcow2', 'link.qcow2', 'hard.qcow2', 'sub/up.qcow2', 'sub/../disk.qcow2']) {
    it(`img-convert onto ${out} is refused and the input survives`, () => {
      const r = user.sh(`img-convert qcow2 raw disk.qcow2 ${out}`);
      expect(r.status).toBe(1);
      expect(expectOneLine(r.stderr)[0]).toMatch(/ERR_IMG_SAME_FILE/);
      expect(sha('disk.qcow2')).toBe(before);
      expect(qemuImg(['check', user.path('disk.qcow2')]).status).toBe(0);
    });
  }
});
