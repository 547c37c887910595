// Encrypted qcow2 inputs through the bins, as qemu-img is used on them: info without the key (lines and JSON equal
// to qemu-img's), and --object secret with --image-opts for the commands that read data (convert, compare, dd,
// map), checked against qemu-img's own decryption; the refusals a user meets (no key, a wrong key, a secret that
// is not there) are one line, exit 1, and leave no output behind.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuImgLuks, qemuIo, tempDir } from '@img/testkit';
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
    ] as const) {
      for (const ms of [100, 200, 100, 500, 200, 1000, 100, 500]) {
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

  it('img create and img convert -O qcow2 with -o encrypt.*: LUKS images qemu-img reads, checks clean and compares equal', () => {
    const o = 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=20';
    const made = run('img', ['create', '-f', 'qcow2', ...secret, '-o', `${o},encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv`, p('new.qcow2'), '16M']);
    expect(made.status).toBe(0);
    expect(made.stdout).toBe(
      `Formatting '${p('new.qcow2')}', fmt=qcow2 encrypt.format=luks encrypt.key-secret=sec0 encrypt.cipher-mode=cbc encrypt.ivgen-alg=essiv encrypt.iter-time=20 cluster_size=65536 extended_l2=off compression_type=zlib size=16777216 lazy_refcounts=off refcount_bits=16\n`,
    );
    expect(qemuImg(['check', ...secret, '--image-opts', opts(p('new.qcow2'))]).status).toBe(0);
    const info = JSON.parse(qemuImg(['info', '--output=json', p('new.qcow2')]).stdout) as { encrypted: boolean; 'format-specific': { data: { encrypt: Record<string, unknown> } } };
    expect(info.encrypted).toBe(true);
    expect(info['format-specific'].data.encrypt).toMatchObject({ format: 'luks', 'cipher-alg': 'aes-256', 'cipher-mode': 'cbc', 'ivgen-alg': 'essiv', 'ivgen-hash-alg': 'sha256', 'hash-alg': 'sha256' });
    // A conversion into a new LUKS image (the general writer: the one-pass writer does not encrypt).
    const c = run('img', ['convert', ...secret, '-O', 'qcow2', '-o', o, p('src.raw'), p('conv.qcow2')]);
    expect(c.stderr).toBe('');
    expect(qemuImg(['compare', ...secret, '--image-opts', opts(p('conv.qcow2')), `driver=raw,file.filename=${p('src.raw')}`]).status).toBe(0);
    expect(qemuImg(['check', ...secret, '--image-opts', opts(p('conv.qcow2'))]).status).toBe(0);
    // Commands that write into it take the passphrase the same way.
    expect(run('img', ['snapshot', ...secret, '--image-opts', '-c', 'one', opts(p('conv.qcow2'))]).status).toBe(0);
    expect(run('img', ['resize', ...secret, '--image-opts', opts(p('conv.qcow2')), '+1M']).stdout).toBe('Image resized.\n');
    expect(qemuImg(['check', ...secret, '--image-opts', opts(p('conv.qcow2'))]).status).toBe(0);
    // 1 MiB longer now, of zeros: identical, as qemu-img compare says without --strict.
    expect(run('img', ['compare', ...secret, '--image-opts', opts(p('conv.qcow2')), `driver=raw,file.filename=${p('src.raw')}`]).stdout).toBe('Warning: Image size mismatch!\nImages are identical.\n');
    // What is refused: compression, a missing secret, aes.
    for (const [args, line] of [
      [['convert', ...secret, '-c', '-O', 'qcow2', '-o', o, p('src.raw'), p('cc.qcow2')], /Compression and encryption not supported/],
      [['create', '-f', 'qcow2', '-o', 'encrypt.format=luks', p('cc.qcow2'), '1M'], /encrypt.format=luks needs a passphrase/],
      [['create', '-f', 'qcow2', ...secret, '-o', 'encrypt.format=aes,encrypt.key-secret=sec0', p('cc.qcow2'), '1M'], /encrypt.format=aes \(qemu's old method\) is read but not written by img/],
      [['create', '-f', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=nope', p('cc.qcow2'), '1M'], /^img create: No secret with id 'nope'$/],
    ] as const) {
      const r = run('img', [...args]);
      expect(r.status, args.join(' ')).toBe(1);
      expect(
        r.stderr
          .trimEnd()
          .split('\n')
          .filter((l) => !l.startsWith('Formatting')),
      ).toHaveLength(1);
      expect(r.stderr.trimEnd(), args.join(' ')).toMatch(line);
    }
    expect(existsSync(p('cc.qcow2'))).toBe(false);
  });

  it('img convert -n --target-image-opts writes into an existing LUKS image, as qemu-img convert does', () => {
    // The target: a LUKS image qemu-img made (the luks.qcow2 of beforeAll holds src.raw; overwritten with other data).
    const other = p('other.raw');
    qemuImg(['create', '-q', '-f', 'raw', other, '32M']);
    qemuIo(other, 'raw', ['write -P 0x77 4M 2M', 'write -P 0x01 31M 64k']);
    const target = p('target.qcow2');
    writeFileSync(target, readFileSync(p('luks.qcow2')));
    const r = run('img', ['convert', '-n', ...secret, '--target-image-opts', other, opts(target)]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(qemuImg(['compare', ...secret, '--image-opts', opts(target), `driver=raw,file.filename=${other}`]).stdout).toBe('Images are identical.\n');
    expect(qemuImg(['check', ...secret, '--image-opts', opts(target)]).status).toBe(0);
    // From an encrypted input into it (both option strings), the driver probed when the string names none.
    const again = run('img', ['convert', '-n', ...secret, '--image-opts', '--target-image-opts', opts(p('luks.qcow2')), `file.filename=${target},encrypt.key-secret=sec0`]);
    expect(again.stderr).toBe('');
    expect(qemuImg(['compare', ...secret, '--image-opts', opts(target), `driver=raw,file.filename=${p('src.raw')}`]).stdout).toBe('Images are identical.\n');
    // Refused as qemu-img refuses: without -n; and without the passphrase, img says how to give it.
    const noN = run('img', ['convert', ...secret, '--target-image-opts', other, opts(target)]);
    expect([noN.status, noN.stderr.split('\n')[0]]).toEqual([1, 'img convert: --target-image-opts requires use of -n flag']);
    const noKey = run('img', ['convert', '-n', '-O', 'qcow2', other, target]);
    expect(noKey.status).toBe(1);
    expect(noKey.stderr).toMatch(/is encrypted \(LUKS\): writing into it needs its passphrase .*--target-image-opts/);
    expect(qemuImg(['compare', ...secret, '--image-opts', opts(target), `driver=raw,file.filename=${p('src.raw')}`]).status).toBe(0);
  });

  it('a chain whose files have their own passphrases: backing.encrypt.key-secret (nested for deeper files), as qemu-img takes them', () => {
    const objects = ['s1', 's2', 's3'].flatMap((id) => ['--object', `secret,id=${id},data=pass-${id}`]);
    // qemu-img times PBKDF2 for the iter-time and now and then fails on a loaded machine: @img/testkit retries it.
    const luks = (id: string, args: string[]) => void qemuImgLuks(['create', '-q', '-f', 'qcow2', ...objects, '-o', `encrypt.format=luks,encrypt.key-secret=${id}`, ...args, '8M'], { timeKey: 'encrypt.iter-time' });
    luks('s1', [p('c-base.qcow2')]);
    luks('s2', ['-u', '-b', p('c-base.qcow2'), '-F', 'qcow2', p('c-mid.qcow2')]);
    luks('s3', ['-u', '-b', p('c-mid.qcow2'), '-F', 'qcow2', p('c-top.qcow2')]);
    const chainOpts = `driver=qcow2,file.filename=${p('c-top.qcow2')},encrypt.key-secret=s3,backing.encrypt.key-secret=s2,backing.backing.encrypt.key-secret=s1`;
    const write = (options: string, command: string) => execFileSync('qemu-io', [...objects, '--image-opts', '-c', command, options], { encoding: 'utf8' });
    write(`driver=qcow2,file.filename=${p('c-base.qcow2')},encrypt.key-secret=s1`, 'write -P 0x61 0 4M');
    write(chainOpts, 'write -P 0x63 3M 64k');
    qemuImg(['convert', ...objects, '--image-opts', chainOpts, '-O', 'raw', p('c-qemu.raw')]);
    const r = run('img', ['convert', ...objects, '--image-opts', chainOpts, '-O', 'raw', p('c-img.raw')]);
    expect(r.stderr).toBe('');
    expect(readFileSync(p('c-img.raw')).equals(readFileSync(p('c-qemu.raw')))).toBe(true);
    expect(run('img', ['compare', ...objects, '--image-opts', chainOpts, `driver=raw,file.filename=${p('c-qemu.raw')}`]).stdout).toBe('Images are identical.\n');
    // Without the base's secret the base is tried with its overlay's passphrase, which does not unlock it: one line naming the base.
    const short = run('img', ['convert', ...objects, '--image-opts', chainOpts.replace(',backing.backing.encrypt.key-secret=s1', ''), '-O', 'raw', p('c-short.raw')]);
    expect(short.status).toBe(1);
    expect(short.stderr).toMatch(/^img convert: ERR_IMG_INVALID_ARG: qcow2: .*c-base\.qcow2: the passphrase unlocks none of the image's 1 active LUKS key slot/);
    expect(existsSync(p('c-short.raw'))).toBe(false);
  });

  it('img amend adds and erases LUKS passphrases, as qemu-img amend does', () => {
    const file = p('slots.qcow2');
    expect(run('img', ['convert', ...secret, '-O', 'qcow2', '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=20', p('src.raw'), file]).status).toBe(0);
    const add = run('img', ['amend', ...secret, '--object', 'secret,id=new,data=battery staple', '--image-opts', '-o', 'encrypt.state=active,encrypt.new-secret=new,encrypt.iter-time=20', opts(file)]);
    expect(add.stderr).toBe('');
    const opensWith = (pass: string) => qemuImg(['compare', '--object', `secret,id=k,data=${pass}`, '--image-opts', opts(file, 'k'), `driver=raw,file.filename=${p('src.raw')}`], { allowFail: true }).status;
    expect(opensWith('battery staple')).toBe(0);
    expect(run('img', ['amend', '--object', 'secret,id=old,data=correct horse', '-o', 'encrypt.state=inactive,encrypt.old-secret=old', file]).status).toBe(0);
    expect(opensWith('correct horse')).not.toBe(0);
    expect(opensWith('battery staple')).toBe(0);
    const last = run('img', ['amend', '-o', 'encrypt.state=inactive,encrypt.keyslot=1', file]);
    expect(last.status).toBe(1);
    expect(last.stderr).toBe('img amend: ERR_IMG_INVALID_ARG: qcow2: Attempt to erase the only active keyslot 1 which will erase all the data in the image irreversibly - refusing operation\n');
    expect(opensWith('battery staple')).toBe(0);
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
      [['convert', '-O', 'raw', p('luks.qcow2'), p('x.raw')], /^img convert: ERR_IMG_INVALID_ARG: qcow2: .*luks\.qcow2: Parameter 'encrypt\.key-secret' is required for cipher \(give its passphrase/],
      [['convert', '--object', 'secret,id=sec0,data=wrong', '--image-opts', '-O', 'raw', opts(p('luks.qcow2')), p('x.raw')], /^img convert: ERR_IMG_INVALID_ARG: qcow2: .*the passphrase unlocks none of the image's 1 active LUKS key slot/],
      [['convert', ...secret, '--image-opts', '-O', 'raw', opts(p('luks.qcow2'), 'other'), p('x.raw')], /^img convert: No secret with id 'other'$/],
      [['compare', ...secret, '--image-opts', `${opts(p('luks.qcow2'))},cache.direct=on`, p('src.raw')], /^img compare: --image-opts .*: img reads driver, file.driver \(file or nbd\), file.filename, file.server.\*, file.export and the key-secret options, not "cache.direct"$/],
      [['info', '--object', 'secret,id=a', p('luks.qcow2')], /^img info: --object secret,id=a: give the secret's value as data= or file=, one of them$/],
      [['convert', ...secret, '--image-opts', '-f', 'raw', '-O', 'raw', opts(p('luks.qcow2')), p('x.raw')], /^img convert: -f raw and --image-opts driver=qcow2 disagree about /],
      [['convert', '-n', ...secret, '-O', 'raw', p('src.raw'), '--target-image-opts', opts(p('luks.qcow2'))], /^img convert: -O raw and --target-image-opts driver=qcow2 disagree about /],
      [['resize', ...secret, '--image-opts', opts(p('aes.qcow2')), '+1M'], /^img resize: ERR_IMG_UNSUPPORTED: qcow2: .*aes\.qcow2 is encrypted with qemu's old AES method, which img reads \(with the passphrase\) but does not write/],
      [['resize', p('luks.qcow2'), '+1M'], /^img resize: ERR_IMG_INVALID_ARG: qcow2: .*luks\.qcow2 is encrypted \(LUKS\): writing into it needs its passphrase/],
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
