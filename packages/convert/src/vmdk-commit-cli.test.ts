// After a commit into its parent (img commit or qemu-img commit), a VMDK child's parentCID no longer matches the
// parent's CID. qemu-img 7.2 still opens it (info, map, check) and reads the child's own grains, but a read that falls
// through to the parent and a write that needs a new grain fail ("Invalid argument"); img does the same, naming the CIDs.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-vmdk-commit-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

function cids(file: string): { cid: string; parentCid: string } {
  const text = readFileSync(p(file), 'latin1');
  return { cid: /^CID=([0-9a-f]+)/m.exec(text)![1]!, parentCid: /^parentCID=([0-9a-f]+)/m.exec(text)![1]! };
}

function chain(name: string, baseData: boolean, committer: 'img' | 'qemu-img'): { base: string; top: string; before: string } {
  const base = `${name}-base.vmdk`;
  const top = `${name}-top.vmdk`;
  qemuImg(['create', '-q', '-f', 'vmdk', p(base), '16M']);
  if (baseData) qemuIo(p(base), 'vmdk', ['write -P 0x11 0 2M']);
  qemuImg(['create', '-q', '-f', 'vmdk', '-b', base, '-F', 'vmdk', p(top)]);
  qemuIo(p(top), 'vmdk', ['write -P 0x5a 1M 64k']);
  const before = cids(base).cid;
  if (committer === 'img') expect(run('img', ['commit', p(top)]).status).toBe(0);
  else qemuImg(['commit', '-q', p(top)]);
  expect(cids(base).cid).not.toBe(before);
  expect(cids(top).parentCid).toBe(before);
  return { base, top, before };
}

describeQemu('a VMDK child after a commit into its parent', () => {
  for (const committer of ['img', 'qemu-img'] as const) {
    it(`${committer} commit, parent with data: info, map and check as qemu-img; convert and convert -n into it fail in both`, () => {
      const { top } = chain(`${committer}-full`, true, committer);
      expect(run('img', ['map', '--output=json', p(top)]).stdout).toBe(qemuImg(['map', '--output=json', p(top)]).stdout);
      expect(run('img', ['map', p(top)]).stdout).toBe(qemuImg(['map', p(top)]).stdout);
      expect(run('img', ['info', p(top)]).status).toBe(0);
      const check = run('img', ['check', p(top)]);
      expect(check.stdout).toBe(qemuImg(['check', p(top)]).stdout);
      expect(qemuImg(['convert', '-O', 'raw', p(top), p(`${top}.q.raw`)], { allowFail: true }).stderr).toMatch(/Invalid argument/);
      const ours = run('img', ['convert', '-O', 'raw', p(top), p(`${top}.i.raw`)]);
      expect(ours.status).toBe(1);
      expect(ours.stderr).toMatch(/ERR_IMG_MISMATCH: vmdk: .*-top\.vmdk: the parent ".*-base\.vmdk", which the bytes at 0x0 would be read from, has CID [0-9a-f]{8}, but this image's parentCID is [0-9a-f]{8}/);
      qemuImg(['create', '-q', '-f', 'raw', p('src.raw'), '16M']);
      qemuIo(p('src.raw'), 'raw', ['write -P 0x22 4M 64k']);
      expect(qemuImg(['convert', '-n', '-O', 'vmdk', p('src.raw'), p(top)], { allowFail: true }).status).not.toBe(0);
      const refused = run('img', ['convert', '-n', '-O', 'vmdk', p('src.raw'), p(top)]);
      expect(refused.status).not.toBe(0);
      expect(refused.stderr).toMatch(/ERR_IMG_MISMATCH: .*has CID [0-9a-f]{8}, but this image's parentCID is [0-9a-f]{8}/);
    });

    it(`${committer} commit, parent empty but for the commit (the audit's case): img convert gives qemu-img's bytes`, () => {
      const { top } = chain(`${committer}-empty`, false, committer);
      qemuImg(['convert', '-O', 'raw', p(top), p(`${top}.q.raw`)]);
      const ours = run('img', ['convert', '-O', 'raw', p(top), p(`${top}.i.raw`)]);
      expect(ours.stderr).toBe('');
      expect(ours.status).toBe(0);
      expect(Buffer.compare(readFileSync(p(`${top}.i.raw`)), readFileSync(p(`${top}.q.raw`)))).toBe(0);
      expect(run('img', ['map', '--output=json', p(top)]).stdout).toBe(qemuImg(['map', '--output=json', p(top)]).stdout);
    });
  }
});
