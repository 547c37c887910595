// A FIFO where an image, a backing file or a parent should be (directly or through a symlink) is refused at once by
// every command and by the API, never waited on: each call here must end, and one that blocks fails the test.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageError } from '@img/block';
import { describeQemu, makeFifo, qemuImg, settleWithin, tempDir, testImagesDir } from '@img/testkit';
import { convertFile, openImageFile } from './node.js';

const bin = (name: string) => fileURLToPath(new URL(`../dist/bin/${name}.js`, import.meta.url));
const dir = tempDir('img-fifo-');
const p = (name: string) => join(dir.path, name);
afterAll(() => dir.cleanup());

/** Runs a bin; a call that has not ended after 20 s is killed and reported as `hung`. */
function run(name: 'img' | 'img-convert', args: string[]): { status: number | 'hung'; stderr: string } {
  const r = spawnSync(process.execPath, [bin(name), ...args], { cwd: dir.path, encoding: 'utf8', timeout: 20_000 });
  return { status: r.status ?? 'hung', stderr: r.stderr };
}

const FIFO_MESSAGE = /is a FIFO, not an image file/;
const fifos: string[] = [];

describeQemu('FIFOs are refused, never waited on', () => {
  beforeAll(() => {
    fifos.push(makeFifo(p('top.img')), makeFifo(p('pipe')));
    // A qcow2 whose backing file is a FIFO (the backing file was a real image when the qcow2 was made).
    qemuImg(['create', '-f', 'qcow2', p('base.qcow2'), '16M']);
    qemuImg(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', p('over-fifo.qcow2')]);
    rmSync(p('base.qcow2'));
    fifos.push(makeFifo(p('base.qcow2')));
    // A differencing VHD whose parent is a symlink to a FIFO.
    copyFileSync(join(testImagesDir, 'vhd', 'dynamic-default.vhd'), p('parent.vhd'));
    expect(run('img', ['create', '-f', 'vhd', '-b', 'parent.vhd', 'child.vhd']).status).toBe(0);
    renameSync(p('parent.vhd'), p('parent-was.vhd'));
    symlinkSync('pipe', p('parent.vhd'));
  });

  it('the qcow2 really names the FIFO as its backing file', () => {
    expect(JSON.parse(qemuImg(['info', '--output=json', '-U', p('over-fifo.qcow2')], { allowFail: true }).stdout || '{}')['backing-filename']).toBe('base.qcow2');
  });

  for (const [label, image, format] of [
    ['the image itself', 'top.img', 'raw'],
    ['a qcow2 backing file', 'over-fifo.qcow2', 'qcow2'],
    ['a VHD parent, through a symlink', 'child.vhd', 'vhd'],
  ] as const) {
    describe(label, () => {
      it('img map ends with one refusal; img info ends too', () => {
        const map = run('img', ['map', image]);
        expect(map.status).toBe(1);
        expect(map.stderr).toMatch(FIFO_MESSAGE);
        expect(map.stderr.trim().split('\n')).toHaveLength(1);
        // info describes the image it is given; a backing file it cannot open is not its error (qemu-img info: 0 too).
        const info = run('img', ['info', image]);
        if (image === 'top.img') {
          expect(info.status).toBe(1);
          expect(info.stderr).toMatch(FIFO_MESSAGE);
        } else {
          expect(info.status, info.stderr).toBe(0);
        }
      });

      it('img-convert ends with one refusal and leaves no output', () => {
        const r = run('img-convert', [format, 'raw', image, `${image}.out`]);
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(FIFO_MESSAGE);
        expect(existsSync(p(`${image}.out`))).toBe(false);
      });

      it('the API refuses it (openImageFile, convertFile)', async () => {
        for (const work of [() => openImageFile(p(image)).then((d) => d.close()), () => convertFile({ srcFormat: format, dstFormat: 'raw', input: p(image), output: p(`${image}.api`) }).then(() => undefined)]) {
          const e = await settleWithin(work(), 10_000, fifos).then(
            () => undefined,
            (err: unknown) => err,
          );
          expect(ImageError.isInstance(e), String(e)).toBe(true);
          expect((e as ImageError).message).toMatch(FIFO_MESSAGE);
        }
      });
    });
  }

  it('img check: a FIFO image is refused, and so is a qcow2 over a FIFO (check opens its chain, as qemu-img check); a VHD child is checked alone', () => {
    const top = run('img', ['check', 'top.img']);
    expect(top.status).toBe(1);
    expect(top.stderr).toMatch(FIFO_MESSAGE);
    // qemu-img 7.2's check opens the backing chain too: on over-fifo.qcow2 it blocks until a writer opens the FIFO.
    const over = run('img', ['check', 'over-fifo.qcow2']);
    expect(over.status, over.stderr).toBe(1);
    expect(over.stderr).toMatch(FIFO_MESSAGE);
    // qemu-img reads no VHD chain: the child's own file is checked, its parent (the FIFO) never opened.
    const child = run('img', ['check', 'child.vhd']);
    expect(child.status, child.stderr).toBe(0);
  });

  // A conversion writes into a FIFO front to back, as into "-", once something reads it (pipe-output.test.ts); an
  // image made in place needs a file.
  it('img create and convert -n refuse a FIFO as output', () => {
    const c = run('img', ['convert', '-n', '-f', 'raw', '-O', 'raw', join(testImagesDir, 'raw', 'demo.img'), 'pipe']);
    expect(c.status).toBe(1);
    expect(c.stderr).toMatch(FIFO_MESSAGE);
    const k = run('img', ['create', '-f', 'qcow2', 'pipe', '1M']);
    expect(k.status).toBe(1);
    expect(k.stderr).toMatch(FIFO_MESSAGE);
  });
});
