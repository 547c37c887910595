// Encrypted qcow2 inputs through the bins, as qemu-img is used on them: info without the key (lines and JSON equal
// to qemu-img's), and --object secret with --image-opts for the commands that read data (convert, compare, dd,
// map), checked against qemu-img's own decryption; the refusals a user meets (no key, a wrong key, a secret that
// is not there) are one line, exit 1, and leave no output behind.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

describeQemu('encrypted qcow2 inputs on the command line', () => {
  const tmp = tempDir('img-enc-cli-');
  const p = (n: string) => join(tmp.path, n);
  const secret = ['--object', 'secret,id=sec0,data=correct horse'];
  const opts = (file: string, id = 'sec0') => `driver=qcow2,file.filename=${file},encrypt.key-secret=${id}`;
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'raw', p('src.raw'), '32M']);
    qemuIo(p('src.raw'), 'raw', ['write -P 0x5a 0 1M', 'write -P 0xc3 17M 300k', 'write -P 0x11 33553920 512']);
    for (const [name, o] of [
      ['luks.qcow2', 'encrypt.format=luks'],
      ['aes.qcow2', 'encrypt.format=aes'],
    ]) {
      for (const ms of [20, 50, 100, 200, 400]) {
        const r = qemuImg(['convert', ...secret, '-O', 'qcow2', '-o', `${o},encrypt.key-secret=sec0${o.includes('luks') ? `,encrypt.iter-time=${ms}` : ''}`, p('src.raw'), p(name!)], { allowFail: true });
        if (r.status === 0) break;
        if (!/accurate CPU usage/.test(r.stderr)) throw new Error(r.stderr);
      }
    }
  });
  afterAll(() => tmp.cleanup());

  it("img info: qemu-img's lines and JSON, without the passphrase", () => {
    for (const f of ['luks.qcow2', 'aes.qcow2']) {
      for (const output of ['human', 'json']) {
        const ours = run('img', ['info', `--output=${output}`, p(f)]);
        expect(ours.status).toBe(0);
        expect(ours.stdout, `${f} ${output}`).toBe(qemuImg(['info', `--output=${output}`, p(f)]).stdout);
      }
      // With --image-opts too (the secret is not needed, and does no harm); qemu-img names the image by its options
      // as a json: pseudo-file name, img by its file name.
      const rest = (text: string) => text.split('\n').slice(1).join('\n');
      expect(rest(run('img', ['info', ...secret, '--image-opts', opts(p(f))]).stdout)).toBe(rest(qemuImg(['info', ...secret, '--image-opts', opts(p(f))]).stdout));
    }
  });

  it('img convert, compare, dd and map with --object secret and --image-opts, as qemu-img decrypts', () => {
    for (const f of ['luks.qcow2', 'aes.qcow2']) {
      const out = p(`${f}.raw`);
      const r = run('img', ['convert', ...secret, '--image-opts', '-O', 'raw', opts(p(f)), out]);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(readFileSync(out).equals(readFileSync(p('src.raw')))).toBe(true);
      // qemu-img compare of the two decryptions, and img compare of the encrypted image with the raw one.
      expect(qemuImg(['compare', ...secret, '--image-opts', opts(p(f)), `driver=raw,file.filename=${out}`]).status).toBe(0);
      const c = run('img', ['compare', ...secret, '--image-opts', opts(p(f)), `driver=raw,file.filename=${p('src.raw')}`]);
      expect(c.stdout).toBe('Images are identical.\n');
      // A qcow2 output (img-convert spelling too), checked by qemu-img.
      const q = p(`${f}.plain.qcow2`);
      expect(run('img-convert', ['-f', 'qcow2', '-O', 'qcow2', ...secret, '--image-opts', opts(p(f)), q]).status).toBe(0);
      expect(qemuImg(['compare', q, p('src.raw')]).status).toBe(0);
      expect(qemuImg(['check', q]).status).toBe(0);
      // dd of a range.
      const d = run('img', ['dd', ...secret, '--image-opts', '-O', 'raw', 'bs=1M', 'skip=17', 'count=18', `if=${opts(p(f))}`, `of=${p('dd.raw')}`]);
      expect(d.stderr).toBe('');
      expect(readFileSync(p('dd.raw')).equals(readFileSync(p('src.raw')).subarray(17 << 20, 18 << 20))).toBe(true);
      // map: JSON as qemu-img's (no offsets: the file's bytes are not the guest's).
      const m = run('img', ['map', '--output=json', ...secret, '--image-opts', opts(p(f))]);
      expect(m.stdout).toBe(qemuImg(['map', '--output=json', ...secret, '--image-opts', opts(p(f))]).stdout);
    }
  });

  it('a passphrase in a file, and base64', () => {
    writeFileSync(p('pass.txt'), 'correct horse');
    const fromFile = run('img', ['convert', '--object', `secret,id=k,file=${p('pass.txt')}`, '--image-opts', '-O', 'raw', opts(p('luks.qcow2'), 'k'), p('f.raw')]);
    expect(fromFile.status).toBe(0);
    expect(readFileSync(p('f.raw')).equals(readFileSync(p('src.raw')))).toBe(true);
    const b64 = Buffer.from('correct horse').toString('base64');
    expect(run('img', ['compare', '--object', `secret,id=k,data=${b64},format=base64`, '--image-opts', opts(p('luks.qcow2'), 'k'), `driver=raw,file.filename=${p('src.raw')}`]).status).toBe(0);
  });

  it('refusals are one line, exit 1, with no output left', () => {
    const cases: Array<[string[], RegExp]> = [
      [['convert', '-O', 'raw', p('luks.qcow2'), p('x.raw')], /^img convert: ERR_IMG_INVALID_ARG: qcow2: .*luks\.qcow2 is encrypted \(LUKS\): its data reads only with the passphrase/],
      [['convert', '--object', 'secret,id=sec0,data=wrong', '--image-opts', '-O', 'raw', opts(p('luks.qcow2')), p('x.raw')], /^img convert: ERR_IMG_INVALID_ARG: qcow2: .*the passphrase unlocks none of the image's 1 active LUKS key slot/],
      [['convert', ...secret, '--image-opts', '-O', 'raw', opts(p('luks.qcow2'), 'other'), p('x.raw')], /^img convert: No secret with id 'other'$/],
      [['compare', ...secret, '--image-opts', `${opts(p('luks.qcow2'))},cache.direct=on`, p('src.raw')], /^img compare: --image-opts .*: img reads driver, file.filename, file.driver and encrypt.key-secret, not "cache.direct"$/],
      [['info', '--object', 'secret,id=a', p('luks.qcow2')], /^img info: --object secret,id=a: give the secret's value as data= or file=, one of them$/],
      [['convert', ...secret, '--image-opts', '-f', 'raw', '-O', 'raw', opts(p('luks.qcow2')), p('x.raw')], /^img convert: -f raw and --image-opts driver=qcow2 disagree about /],
      [['resize', ...secret, '--image-opts', opts(p('luks.qcow2')), '+1M'], /^img resize: ERR_IMG_UNSUPPORTED: qcow2: .*luks\.qcow2 is encrypted \(LUKS\): img reads encrypted images \(with their passphrase\) but does not write into them/],
    ];
    for (const [args, line] of cases) {
      const r = run('img', args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr.trimEnd().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr.trimEnd(), args.join(' ')).toMatch(line);
    }
    expect(existsSync(p('x.raw'))).toBe(false);
    // The image is as it was.
    expect(qemuImg(['compare', ...secret, '--image-opts', opts(p('luks.qcow2')), `driver=raw,file.filename=${p('src.raw')}`]).status).toBe(0);
  });
});
