import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, qemuCompare, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('commit-base-');
afterAll(() => tmp.cleanup());
const dirOf = (name: string) => {
  const d = join(tmp.path, name);
  mkdirSync(d);
  return d;
};

/**
 * A chain of `depth` qcow2 images l0 (base) <- l1 <- ... in `dir`, each
 * layer writing its own pattern somewhere and overwriting part of the
 * layers below (a zero write in layer 1 too, which must reach the base).
 */
function buildChain(dir: string, depth: number): string[] {
  qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', join(dir, 'l0.qcow2'), '8M']);
  qemuIo(join(dir, 'l0.qcow2'), 'qcow2', ['write -P 1 0 2M', 'write -P 9 6M 1M']);
  for (let i = 1; i < depth; i++) {
    const name = join(dir, `l${i}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', `l${i - 1}.qcow2`, '-F', 'qcow2', name]);
    const writes = [`write -P ${0x10 + i} ${i}M 1M`, `write -P ${0x20 + i} ${i * 64 + 3}k 5k`];
    if (i === 1) writes.push('write -z 6M 64k');
    qemuIo(name, 'qcow2', writes);
  }
  return Array.from({ length: depth }, (_, i) => join(dir, `l${i}.qcow2`));
}

function rawOf(path: string): Buffer {
  const out = `${path}.raw`;
  qemuImg(['convert', '-U', '-O', 'raw', path, out]);
  return readFileSync(out);
}

describeQemu('img commit -b (into an ancestor), against qemu-img commit -b', () => {
  for (const depth of [3, 4]) {
    it(`${depth}-deep chain: the base gets every layer above it; the image and the layers between keep theirs, as qemu-img leaves them`, () => {
      const ours = buildChain(dirOf(`ours-${depth}`), depth);
      const theirs = buildChain(dirOf(`theirs-${depth}`), depth);
      const top = depth - 1;
      const before = rawOf(ours[top]!);
      const q = qemuImg(['commit', '-b', 'l0.qcow2', theirs[top]!]);
      expect(q.stdout).toBe('Image committed.\n');
      const r = run('img', ['commit', '-b', 'l0.qcow2', ours[top]!]);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toBe(q.stdout);
      // Each layer reads as qemu-img left it (the base now reads as the whole chain did).
      for (let i = 0; i < depth; i++) expect(rawOf(ours[i]!).equals(rawOf(theirs[i]!)), `layer ${i}`).toBe(true);
      expect(rawOf(ours[0]!).equals(before)).toBe(true);
      expect(qemuImg(['check', ours[0]!]).status).toBe(0);
      // The image kept its data and its backing file (-b implies -d).
      const map = (p: string) => JSON.stringify(JSON.parse(qemuImg(['map', '--output=json', p]).stdout));
      expect(map(ours[top]!)).toBe(map(theirs[top]!));
    });
  }

  it('commits into a middle layer of a 4-deep chain by a path from elsewhere', () => {
    const ours = buildChain(dirOf('mid-ours'), 4);
    const theirs = buildChain(dirOf('mid-theirs'), 4);
    expect(qemuImg(['commit', '-b', theirs[1]!, theirs[3]!]).status).toBe(0);
    expect(run('img', ['commit', '-b', ours[1]!, ours[3]!]).status).toBe(0);
    for (let i = 0; i < 4; i++) expect(rawOf(ours[i]!).equals(rawOf(theirs[i]!)), `layer ${i}`).toBe(true);
  });

  it('copies a 3 GiB chain a window of 1 GiB at a time: data across the windows ends up in the base as qemu-img leaves it', () => {
    const dir = dirOf('windows');
    const layer = (i: number) => join(dir, `w${i}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', layer(0), '3G']);
    qemuIo(layer(0), 'qcow2', ['write -P 1 1023M 2M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'w0.qcow2', '-F', 'qcow2', layer(1)]);
    qemuIo(layer(1), 'qcow2', ['write -P 2 1073737728 8k', 'write -z 2047M 2M', 'write -P 3 3071M 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'w1.qcow2', '-F', 'qcow2', layer(2)]);
    qemuIo(layer(2), 'qcow2', ['write -P 4 2147479552 8k']);
    const before = join(dir, 'before.raw');
    qemuImg(['convert', '-O', 'raw', layer(2), before]);
    const r = run('img', ['commit', '-b', 'w0.qcow2', layer(2)]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(qemuCompare(layer(0), before, 'qcow2', 'raw')).toBe(true);
    expect(qemuCompare(layer(2), before, 'qcow2', 'raw')).toBe(true);
  });

  it('a base that is not in the chain, or the image itself: status 1 and one line, as qemu-img', () => {
    const ours = buildChain(dirOf('bad'), 3);
    qemuImg(['create', '-q', '-f', 'qcow2', join(tmp.path, 'bad', 'other.qcow2'), '8M']);
    for (const base of ['other.qcow2', 'l2.qcow2']) {
      const q = qemuImg(['commit', '-b', base, ours[2]!], { allowFail: true });
      const r = run('img', ['commit', '-b', base, ours[2]!]);
      expect(q.status).toBe(1);
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(`Did not find '${base}' in the backing chain of '${ours[2]!}'`);
    }
  });
});

describe('img commit spellings', () => {
  it('takes --base, --drop, --format, --progress, --quiet; refuses a secret without a value in one line', () => {
    const h = run('img', ['commit', '--help']);
    expect(h.stdout).toMatch(/-b, --base <base>/);
    const o = run('img', ['commit', '--object', 'secret,id=s0', 'x.qcow2']);
    expect(o.status).toBe(1);
    expect(o.stderr.split('\n')[0]).toBe("img commit: --object secret,id=s0: give the secret's value as data= or file=, one of them");
  });
});
