// img info on VHDs against qemu-img info 7.2: fixed, dynamic and differencing disks made by qemu-img and by
// img. What both print is byte-identical (human) or equal key by key (JSON); the differences kept on purpose
// (packages/vhd/README.md, Decisions) are pinned here, so that any other one fails.
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-info-qemu-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

const FORMAT_SPECIFIC = 'Format specific information:\n';

/** img's human output up to its format-specific block, which qemu 7.2 does not print for vpc. */
function withoutBlock(text: string): string {
  const at = text.indexOf(FORMAT_SPECIFIC);
  return at < 0 ? text : text.slice(0, at);
}

function imgInfo(args: string[]): string {
  const r = run('img', ['info', ...args]);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return r.stdout;
}

describeQemu('img info on VHDs, against qemu-img info 7.2', () => {
  const images: Array<{ file: string; kind: 'fixed' | 'dynamic' | 'differencing'; by: string }> = [];

  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', p('q-fixed.vhd'), '10M']);
    qemuImg(['create', '-q', '-f', 'vpc', p('q-dynamic.vhd'), '10M']);
    for (const args of [
      ['-f', 'vpc', '-o', 'subformat=fixed', p('i-fixed.vhd'), '10M'],
      ['-f', 'vpc', p('i-dynamic.vhd'), '10M'],
      ['-f', 'vpc', '-b', 'i-dynamic.vhd', '-F', 'vpc', p('i-diff.vhd')],
    ]) {
      expect(run('img', ['create', '-q', ...args]).status).toBe(0);
    }
    images.push(
      { file: p('q-fixed.vhd'), kind: 'fixed', by: 'qemu-img' },
      { file: p('q-dynamic.vhd'), kind: 'dynamic', by: 'qemu-img' },
      { file: p('i-fixed.vhd'), kind: 'fixed', by: 'img' },
      { file: p('i-dynamic.vhd'), kind: 'dynamic', by: 'img' },
      { file: p('i-diff.vhd'), kind: 'differencing', by: 'img' },
    );
  });

  it('human: the lines qemu-img info -f vpc prints are img info’s, byte for byte; then the format-specific block', () => {
    for (const { file, kind, by } of images) {
      const theirs = qemuImg(['info', '-f', 'vpc', file]).stdout;
      for (const mine of [imgInfo([file]), imgInfo(['-f', 'vpc', file])]) {
        expect(mine, `${kind} by ${by}`).toContain(FORMAT_SPECIFIC);
        let head = withoutBlock(mine);
        if (kind === 'differencing') {
          expect(head).toContain('backing file: i-dynamic.vhd\nbacking file format: vpc\n');
          head = head.replace('backing file: i-dynamic.vhd\nbacking file format: vpc\n', '');
        }
        expect(head, `${kind} by ${by}`).toBe(theirs);
      }
    }
  });

  it('json: every key qemu-img prints has qemu-img’s value; img adds format-specific (and a differencing disk’s backing)', () => {
    for (const { file, kind, by } of images) {
      const theirs = JSON.parse(qemuImg(['info', '--output=json', '-f', 'vpc', file]).stdout) as Record<string, unknown>;
      const mine = JSON.parse(imgInfo(['--output=json', file])) as Record<string, unknown>;
      for (const [key, value] of Object.entries(theirs)) expect(mine[key], `${kind} by ${by}: ${key}`).toEqual(value);
      const extra = Object.keys(mine).filter((k) => !(k in theirs));
      expect(extra.sort(), `${kind} by ${by}`).toEqual(kind === 'differencing' ? ['backing-filename', 'backing-filename-format', 'format-specific', 'full-backing-filename'].filter((k) => k in mine).sort() : ['format-specific']);
      expect((mine['format-specific'] as { type: string }).type).toBe('vpc');
      if (kind === 'differencing') expect(mine['backing-filename-format']).toBe('vpc');
    }
  });

  it('probing: a fixed disk is vpc to img, raw (footer counted as data) to qemu-img; dynamic disks are vpc to both', () => {
    for (const { file, kind, by } of images) {
      const theirs = JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as Record<string, unknown>;
      const mine = JSON.parse(imgInfo(['--output=json', file])) as Record<string, unknown>;
      expect(mine.format, `${kind} by ${by}`).toBe('vpc');
      expect(theirs.format, `${kind} by ${by}`).toBe(kind === 'fixed' ? 'raw' : 'vpc');
      expect(theirs['virtual-size'], `${kind} by ${by}`).toBe((mine['virtual-size'] as number) + (kind === 'fixed' ? 512 : 0));
    }
  });
});
