// Where qemu-img and img met encrypted images differently (interop campaign seed 11): info with a wrong passphrase
// (qemu-img info opens without I/O and does not try it), check with a wrong one (qemu-img fails it), compare without
// one (qemu-img does not open the image: status 2; nor for map, measure, snapshot -l or bench: status 1), and
// encrypt.ivgen-hash-alg with plain64 (written into the cipher mode, as qemu-img writes it).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuImgLuks, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

/** The backing file fields of qemu-img info's JSON. */
function qemuInfoBacking(file: string): Record<string, unknown> {
  const info = JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as Record<string, unknown>;
  return { 'backing-filename': info['backing-filename'], 'backing-filename-format': info['backing-filename-format'], 'virtual-size': info['virtual-size'] };
}

describeQemu('encrypted images: the statuses and lines qemu-img gives', () => {
  const tmp = tempDir('img-enc-parity-');
  const p = (n: string) => join(tmp.path, n);
  const right = ['--object', 'secret,id=s,data=right one'];
  const wrong = ['--object', 'secret,id=s,data=wrong one'];
  const opts = (file: string) => `driver=qcow2,file.filename=${file},encrypt.key-secret=s`;
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'raw', p('plain.raw'), '4M']);
    const made = run('img', ['create', '-q', '-f', 'qcow2', ...right, '-o', 'encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=20', p('enc.qcow2'), '4M']);
    expect(made.status, made.stderr).toBe(0);
  });
  afterAll(() => tmp.cleanup());

  it('info with a wrong passphrase: the image described, status 0, as qemu-img info', () => {
    const ours = run('img', ['info', '--output=json', ...wrong, '--image-opts', opts(p('enc.qcow2'))]);
    const theirs = qemuImg(['info', '--output=json', ...wrong, '--image-opts', opts(p('enc.qcow2'))]);
    expect(ours.status).toBe(0);
    // qemu-img names an image given by options with a json: pseudo-file name, img by its file name.
    const strip = (text: string) => ({ ...(JSON.parse(text) as Record<string, unknown>), filename: undefined });
    expect(strip(ours.stdout)).toEqual(strip(theirs.stdout));
  });

  it('check with a wrong passphrase fails (status 1) as qemu-img check does; with the right one it checks', () => {
    const theirs = qemuImg(['check', ...wrong, '--image-opts', opts(p('enc.qcow2'))], { allowFail: true });
    const ours = run('img', ['check', ...wrong, '--image-opts', opts(p('enc.qcow2'))]);
    expect(ours.status).toBe(theirs.status);
    expect(ours.status).toBe(1);
    expect(ours.stderr).toMatch(/^img check: ERR_IMG_INVALID_ARG: qcow2: .*enc\.qcow2: the passphrase unlocks none of the image's 1 active LUKS key slot/);
    expect(ours.stdout).toBe('');
    expect(run('img', ['check', ...right, '--image-opts', opts(p('enc.qcow2'))]).stdout).toMatch(/^No errors were found on the image\./);
  });

  it('check without the passphrase: the image does not open, status 1, as in qemu-img check (it checked the metadata: 0)', () => {
    // qemu's old AES method too (qemu-img 7.2 still creates it).
    qemuImg(['create', '-q', '-f', 'qcow2', ...right, '-o', 'encrypt.format=aes,encrypt.key-secret=s', p('aes.qcow2'), '1M']);
    for (const file of [p('enc.qcow2'), p('aes.qcow2')]) {
      for (const args of [['check'], ['check', '--output=json'], ['check', '-f', 'qcow2'], ['check', '-r', 'leaks']]) {
        const what = `${args.join(' ')} ${file}`;
        const theirs = qemuImg([...args, file], { allowFail: true });
        const ours = run('img', [...args, file]);
        expect(theirs.stderr, what).toContain("Parameter 'encrypt.key-secret' is required for cipher");
        expect([ours.status, ours.stdout], what).toEqual([theirs.status, theirs.stdout]);
        expect(ours.status, what).toBe(1);
        expect(ours.stderr, what).toBe(`img check: ERR_IMG_INVALID_ARG: qcow2: ${file}: Parameter 'encrypt.key-secret' is required for cipher (give its passphrase: --object secret,id=ID,data=... with --image-opts)\n`);
      }
    }
    // An image that is not encrypted is checked as before.
    expect(run('img', ['check', p('plain.raw')]).status).toBe(qemuImg(['check', p('plain.raw')], { allowFail: true }).status);
  });

  it('compare without the passphrase: the image does not open, status 2, in qemu-img words', () => {
    const theirs = qemuImg(['compare', '-f', 'qcow2', '-F', 'raw', p('enc.qcow2'), p('plain.raw')], { allowFail: true });
    const ours = run('img', ['compare', '-f', 'qcow2', '-F', 'raw', p('enc.qcow2'), p('plain.raw')]);
    expect(ours.status).toBe(theirs.status);
    expect(ours.status).toBe(2);
    expect(ours.stderr).toBe(`img compare: ERR_IMG_INVALID_ARG: qcow2: ${p('enc.qcow2')}: Parameter 'encrypt.key-secret' is required for cipher (give its passphrase: --object secret,id=ID,data=... with --image-opts)\n`);
    expect(run('img', ['compare', ...right, '--image-opts', opts(p('enc.qcow2')), `driver=raw,file.filename=${p('plain.raw')}`]).stdout).toBe('Images are identical.\n');
  });

  it('map, measure, snapshot -l, bench and compare without the passphrase: the image, or its encrypted backing file, does not open, as in qemu-img; info describes it', () => {
    // Made by qemu-img, nothing written: img answered map and measure from the metadata alone.
    qemuImgLuks(['create', '-q', '-f', 'luks', ...right, '-o', 'key-secret=s', p('vol.luks'), '4M']);
    qemuImgLuks(['create', '-q', '-f', 'qcow2', ...right, '-o', 'encrypt.format=luks,encrypt.key-secret=s', p('qenc.qcow2'), '4M'], { timeKey: 'encrypt.iter-time' });
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', p('qenc.qcow2'), '-F', 'qcow2', '-u', p('over.qcow2'), '4M']);
    const key = { 'vol.luks': 'key-secret', 'qenc.qcow2': 'encrypt.key-secret', 'over.qcow2': 'encrypt.key-secret' } as const;
    for (const [name, param] of Object.entries(key)) {
      const file = p(name);
      for (const args of [['map'], ['map', '--output=json'], ['measure', '-O', 'qcow2'], ['snapshot', '-l'], ['bench', '-c', '1'], ['compare', file]]) {
        const what = `${args.join(' ')} ${name}`;
        const theirs = qemuImg([...args, file], { allowFail: true });
        const ours = run('img', [...args, file]);
        expect(theirs.stderr, what).toContain(`Parameter '${param}' is required for cipher`);
        expect([ours.status, ours.stdout], what).toEqual([theirs.status, theirs.stdout]);
        expect(ours.status, what).toBe(args[0] === 'compare' ? 2 : 1);
        const whose = name === 'over.qcow2' ? `${file}: Could not open backing file ${p('qenc.qcow2')}: ` : `${file}: `;
        expect(ours.stderr, what).toBe(
          `img ${args[0]}: ERR_IMG_INVALID_ARG: ${name.endsWith('.luks') ? 'luks' : 'qcow2'}: ${whose}Parameter '${param}' is required for cipher (give its passphrase: --object secret,id=ID,data=... with --image-opts${name === 'over.qcow2' ? ` backing.${param}=ID` : ''})\n`,
        );
      }
      expect(run('img', ['info', file]).status, name).toBe(qemuImg(['info', file]).status);
    }
    // With the passphrases, as qemu-img: the same map.
    for (const opened of [`driver=luks,file.filename=${p('vol.luks')},key-secret=s`, opts(p('qenc.qcow2')), `driver=qcow2,file.filename=${p('over.qcow2')},backing.encrypt.key-secret=s`]) {
      const args = ['map', '--output=json', ...right, '--image-opts', opened];
      expect(run('img', args).stdout, opened).toBe(qemuImg(args).stdout);
    }
  });

  it('convert, dd, amend, snapshot and check without the passphrase, or over a missing backing file: refused (status 1) with nothing written, as qemu-img', () => {
    qemuImgLuks(['create', '-q', '-f', 'qcow2', ...right, '-o', 'encrypt.format=luks,encrypt.key-secret=s', p('e2.qcow2'), '4M'], { timeKey: 'encrypt.iter-time' });
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', p('e2.qcow2'), '-F', 'qcow2', '-u', p('over2.qcow2'), '4M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', p('gone.qcow2'), '-F', 'qcow2', '-u', p('orphan.qcow2'), '4M']);
    // Nothing is allocated in any of them: img converted, dd-copied and amended them (status 0), and checked the overlays.
    const cases: [string, string[], RegExp][] = [];
    for (const name of ['e2.qcow2', 'over2.qcow2']) {
      const secret = name === 'e2.qcow2' ? /Parameter 'encrypt.key-secret' is required for cipher/ : /Could not open backing file .*e2\.qcow2: Parameter 'encrypt.key-secret' is required/;
      cases.push([name, ['convert', '-O', 'raw', p(name), p('out.raw')], secret]);
      cases.push([name, ['convert', '-O', 'qcow2', p(name), p('out.raw')], secret]);
      cases.push([name, ['dd', `if=${p(name)}`, `of=${p('out.raw')}`, 'bs=1M', 'count=1'], secret]);
      cases.push([name, ['amend', '-o', 'lazy_refcounts=on', p(name)], secret]);
    }
    for (const name of ['over2.qcow2', 'orphan.qcow2']) {
      const why = name === 'orphan.qcow2' ? /ERR_IMG_NOT_FOUND: .*gone\.qcow2/ : /Could not open backing file .*e2\.qcow2: Parameter 'encrypt.key-secret' is required/;
      cases.push([name, ['check', p(name)], why]);
      cases.push([name, ['check', '--output=json', p(name)], why]);
      cases.push([name, ['snapshot', '-l', p(name)], why]);
      cases.push([name, ['snapshot', '-c', 'one', p(name)], why]);
    }
    for (const [name, args, why] of cases) {
      const what = `${args.join(' ')}`;
      const before = readFileSync(p(name));
      const theirs = qemuImg(args, { allowFail: true });
      expect(existsSync(p('out.raw')), what).toBe(false);
      const ours = run('img', args);
      expect([ours.status, ours.stdout], what).toEqual([theirs.status, theirs.stdout]);
      expect(ours.status, what).toBe(1);
      expect(ours.stderr, what).toMatch(why);
      expect(existsSync(p('out.raw')), what).toBe(false);
      expect(readFileSync(p(name)).equals(before), what).toBe(true);
    }
    // With the passphrase each of them works.
    const keyed = ['--image-opts', `driver=qcow2,file.filename=${p('over2.qcow2')},backing.encrypt.key-secret=s`];
    expect(run('img', ['check', ...right, ...keyed]).status).toBe(0);
    expect(run('img', ['snapshot', '-l', ...right, ...keyed]).status).toBe(0);
    const copied = run('img', ['convert', ...right, '-O', 'raw', ...keyed, p('out.raw')]);
    expect(copied.status, copied.stderr).toBe(0);
    expect(readFileSync(p('out.raw')).equals(Buffer.alloc(4 << 20))).toBe(true);
  });

  it('a luks volume as a backing file (-F luks), its passphrase given as backing.key-secret: created, read and converted as qemu-img does', () => {
    qemuImgLuks(['create', '-q', '-f', 'luks', ...right, '-o', 'key-secret=s', p('b.luks'), '4M']);
    execFileSync('qemu-io', [...right, '--image-opts', '-c', 'write -P 0x5a 1M 64k', `driver=luks,file.filename=${p('b.luks')},key-secret=s`]);
    const made = run('img', ['create', '-q', '-f', 'qcow2', '-b', p('b.luks'), '-F', 'luks', p('over-luks.qcow2')]);
    expect(made.status, made.stderr).toBe(0);
    expect(qemuInfoBacking(p('over-luks.qcow2'))).toEqual({ 'backing-filename': p('b.luks'), 'backing-filename-format': 'luks', 'virtual-size': 4 << 20 });
    const keyed = ['--image-opts', `driver=qcow2,file.filename=${p('over-luks.qcow2')},backing.key-secret=s`];
    for (const tool of ['img', 'qemu'] as const) {
      const args = ['convert', ...right, '-O', 'raw', ...keyed, p(`from-luks-${tool}.raw`)];
      const r = tool === 'img' ? run('img', args) : qemuImg(args);
      expect(r.status, r.stderr).toBe(0);
    }
    const ours = readFileSync(p('from-luks-img.raw'));
    expect(ours.equals(readFileSync(p('from-luks-qemu.raw')))).toBe(true);
    expect(ours.subarray(1 << 20, (1 << 20) + 65536).equals(Buffer.alloc(65536, 0x5a))).toBe(true);
    // Without it, refused by both.
    const theirs = qemuImg(['convert', '-O', 'raw', p('over-luks.qcow2'), p('nokey.raw')], { allowFail: true });
    const refused = run('img', ['convert', '-O', 'raw', p('over-luks.qcow2'), p('nokey.raw')]);
    expect([refused.status, theirs.status]).toEqual([1, 1]);
    expect(refused.stderr).toMatch(/Could not open backing file .*b\.luks: Parameter 'key-secret' is required for cipher .*backing\.key-secret=ID/);
  });

  it('LUKS with an external data file, as qemu-img writes it: the data file holds ciphertext, qemu-img reads and checks it; a raw data file is refused', () => {
    qemuImg(['create', '-q', '-f', 'raw', p('src8.raw'), '8M']);
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 1M', '-c', 'write -P 0x62 5M 3M', p('src8.raw')]);
    const r = run('img', ['convert', ...right, '-O', 'qcow2', '-o', `encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=20,data_file=${p('df.bin')}`, p('src8.raw'), p('df.qcow2')]);
    expect(r.stderr).toBe('');
    expect(qemuImg(['check', ...right, '--image-opts', opts(p('df.qcow2'))]).status).toBe(0);
    expect(qemuImg(['compare', ...right, '--image-opts', opts(p('df.qcow2')), `driver=raw,file.filename=${p('src8.raw')}`]).stdout).toBe('Images are identical.\n');
    expect(readFileSync(p('df.bin')).subarray(0, 4096).equals(Buffer.alloc(4096, 0x61))).toBe(false);
    // data_file_raw maps every cluster: those not written would decrypt from zeros (qemu-img marks them zero instead).
    const refused = run('img', ['convert', ...right, '-O', 'qcow2', '-o', `encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=20,data_file=${p('dfr.bin')},data_file_raw=on`, p('src8.raw'), p('dfr.qcow2')]);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/encryption with a raw external data file \(data_file_raw=on\) is not supported/);
    expect(existsSync(p('dfr.qcow2')) || existsSync(p('dfr.bin'))).toBe(false);
  });

  it('encrypt.ivgen-hash-alg with plain64: in the cipher mode ("xts-plain64:sha256"), described without it, as qemu-img does both', () => {
    const o = 'encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=20,encrypt.ivgen-alg=plain64,encrypt.ivgen-hash-alg=sha256';
    const made = run('img', ['create', '-q', '-f', 'qcow2', ...right, '-o', o, p('p64.qcow2'), '1M']);
    expect(made.status, made.stderr).toBe(0);
    const bytes = readFileSync(p('p64.qcow2'));
    const at = bytes.indexOf(Buffer.from('LUKS\xba\xbe', 'latin1'));
    expect(
      bytes
        .subarray(at + 40, at + 72)
        .toString('latin1')
        .replace(/\0+$/, ''),
    ).toBe('xts-plain64:sha256');
    const info = (tool: 'img' | 'qemu') => {
      const args = ['info', '--output=json', p('p64.qcow2')];
      const data = JSON.parse(tool === 'img' ? run('img', args).stdout : qemuImg(args).stdout) as { 'format-specific': { data: { encrypt: Record<string, unknown> } } };
      return data['format-specific'].data.encrypt;
    };
    expect(info('img')).toEqual(info('qemu'));
    expect(info('img')['ivgen-hash-alg']).toBeUndefined();
    expect(qemuImg(['check', ...right, '--image-opts', opts(p('p64.qcow2'))]).status).toBe(0);
  });
});
