// luks images (qemu's luks format: a LUKS1 header, then the encrypted disk) through the bins, against qemu-img 7.2:
// info without the key (lines and JSON equal to qemu-img's), create's Formatting line, convert both ways with
// --object secret and --image-opts driver=luks,...,key-secret= (qemu-img's decryption and compare as the oracle),
// map, check, measure and resize as qemu-img answers them, and the refusals without the key.
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, seededBytes, tempDir, qemuImgLuks } from '@img/testkit';
import { run } from './test/cli.js';

/** qemu-img with LUKS options, tried again while it fails to time PBKDF2 (see qemuImgLuks). */
const qemuLuks = (args: string[]) => qemuImgLuks(args);

describeQemu('luks images on the command line', () => {
  const tmp = tempDir('img-luks-cli-');
  const p = (n: string) => join(tmp.path, n);
  const secret = ['--object', 'secret,id=sec0,data=correct horse'];
  const opts = (file: string) => `driver=luks,file.filename=${file},key-secret=sec0`;
  beforeAll(() => {
    const src = new Uint8Array(12 << 20);
    src.set(seededBytes(1 << 20, 4), 0);
    src.set(seededBytes(300 * 1024 + 3, 5), 7 << 20);
    writeFileSync(p('src.raw'), src);
    qemuLuks(['convert', ...secret, '-f', 'raw', '-O', 'luks', '-o', 'key-secret=sec0', p('src.raw'), p('q.luks')]);
    qemuLuks(['convert', ...secret, '-f', 'raw', '-O', 'luks', '-o', 'key-secret=sec0,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv', p('src.raw'), p('q-cbc.luks')]);
    // qemu-img times PBKDF2 for each image (and again where it fails to): minutes on a loaded machine.
  }, 300_000);
  afterAll(() => tmp.cleanup());

  it("img info: qemu-img's lines and JSON, without the passphrase, of images either tool made", () => {
    const made = run('img', ['convert', ...secret, '-O', 'luks', '-o', 'key-secret=sec0,iter-time=10,cipher-mode=cbc,ivgen-alg=plain', p('src.raw'), p('i.luks')]);
    expect(made.stderr).toBe('');
    for (const f of ['q.luks', 'q-cbc.luks', 'i.luks']) {
      for (const output of ['human', 'json']) {
        const ours = run('img', ['info', `--output=${output}`, p(f)]);
        expect(ours.stderr).toBe('');
        expect(ours.stdout, `${f} ${output}`).toBe(qemuImg(['info', `--output=${output}`, p(f)]).stdout);
      }
    }
    expect(run('img', ['info', p('q.luks')]).stdout).toMatch(/^file format: luks\n[^]*^encrypted: yes\n[^]*^Format specific information:\n {4}ivgen alg: plain64\n/m);
  });

  it('img convert from and to luks with --object secret and --image-opts, as qemu-img decrypts and compares', () => {
    for (const f of ['q.luks', 'q-cbc.luks']) {
      const r = run('img', ['convert', ...secret, '--image-opts', '-O', 'raw', opts(p(f)), p(`${f}.raw`)]);
      expect(r.stderr).toBe('');
      expect(readFileSync(p(`${f}.raw`)).equals(readFileSync(p('src.raw')))).toBe(true);
      const c = run('img', ['compare', ...secret, '--image-opts', opts(p(f)), `driver=raw,file.filename=${p('src.raw')}`]);
      expect(c.stdout).toBe('Images are identical.\n');
    }
    // -O luks (the img-convert spelling too): qemu-img reads it back as the source, holes included.
    for (const [bin, args] of [
      ['img', ['convert', ...secret, '-O', 'luks', '-o', 'key-secret=sec0,iter-time=10', p('src.raw'), p('o1.luks')]],
      ['img-convert', ['-O', 'luks', ...secret, '-o', 'key-secret=sec0,iter-time=10,cipher-alg=aes-128', p('src.raw'), p('o2.luks')]],
    ] as const) {
      const r = run(bin, [...args]);
      // img-convert says what it did on stderr; img convert says nothing.
      expect(r.stderr).toMatch(bin === 'img' ? /^$/ : /^img-convert: converted raw .* -> luks /);
      expect(r.status).toBe(0);
    }
    for (const f of ['o1.luks', 'o2.luks']) {
      expect(qemuImg(['compare', ...secret, '--image-opts', opts(p(f)), `driver=raw,file.filename=${p('src.raw')}`]).stdout).toBe('Images are identical.\n');
    }
    // luks to luks, through qcow2 and back.
    expect(run('img', ['convert', ...secret, '--image-opts', '-O', 'qcow2', opts(p('q.luks')), p('q.qcow2')]).status).toBe(0);
    expect(qemuImg(['compare', p('q.qcow2'), p('src.raw')]).stdout).toBe('Images are identical.\n');
  });

  it("img create -f luks prints qemu-img's Formatting line and makes an image qemu-img opens with the secret", () => {
    for (const [o, size] of [
      ['key-secret=sec0,iter-time=10', '4M'],
      ['key-secret=sec0,cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256,hash-alg=sha1,iter-time=20', '1000'],
    ] as const) {
      const ours = run('img', ['create', '-f', 'luks', ...secret, '-o', o, p('c.luks'), size]);
      expect(ours.stderr).toBe('');
      // qemu-img's line for the same options (its run may fail to time PBKDF2: only the line is compared).
      const theirs = qemuImg(['create', '-f', 'luks', ...secret, '-o', o, p('cq.luks'), size], { allowFail: true });
      expect(ours.stdout).toBe(theirs.stdout.replace(p('cq.luks'), p('c.luks')));
      const info = JSON.parse(qemuImg(['info', '--output=json', ...secret, '--image-opts', opts(p('c.luks'))]).stdout) as { format: string; 'virtual-size': number };
      expect(info.format).toBe('luks');
      expect(info['virtual-size']).toBe(size === '4M' ? 4 << 20 : 1024);
    }
    const missing = run('img', ['create', '-f', 'luks', p('n.luks'), '1M']);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/^img create: .*Parameter 'key-secret' is required for cipher/);
  }, 300_000);

  it('the ciphers besides AES, in luks and in qcow2, from the command line: qemu-img decrypts what img wrote, and info says what qemu-img says', () => {
    const qopts = (file: string) => `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`;
    for (const [fmt, o] of [
      ['luks', 'key-secret=sec0,iter-time=10,cipher-alg=serpent-256'],
      ['luks', 'key-secret=sec0,iter-time=10,cipher-alg=cast5-128,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=md5'],
      ['qcow2', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-alg=twofish-128,encrypt.cipher-mode=ctr'],
      ['qcow2', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,encrypt.cipher-alg=serpent-192,encrypt.ivgen-alg=plain'],
    ] as const) {
      const out = p(`ciph.${fmt}`);
      const made = run('img', ['convert', ...secret, '-O', fmt, '-o', o, p('src.raw'), out]);
      expect([made.status, made.stderr], o).toEqual([0, '']);
      const image = fmt === 'luks' ? opts(out) : qopts(out);
      expect(qemuImg(['compare', ...secret, '--image-opts', image, `driver=raw,file.filename=${p('src.raw')}`]).stdout, o).toBe('Images are identical.\n');
      for (const output of ['human', 'json']) expect(run('img', ['info', `--output=${output}`, out]).stdout, `${o} ${output}`).toBe(qemuImg(['info', `--output=${output}`, out]).stdout);
      // And back: img reads what it wrote, through --image-opts.
      const back = run('img', ['compare', ...secret, '--image-opts', image, `driver=raw,file.filename=${p('src.raw')}`]);
      expect(back.stdout, o).toBe('Images are identical.\n');
    }
  }, 300_000);

  it("img map, check, measure and resize answer as qemu-img's", () => {
    const io = ['--image-opts', opts(p('q.luks'))];
    const m = run('img', ['map', '--output=json', ...secret, ...io]);
    expect(m.stdout).toBe(qemuImg(['map', '--output=json', ...secret, ...io]).stdout);
    // The human form has no file offset to show: both print the header line and fail.
    const human = run('img', ['map', ...secret, ...io]);
    const theirs = qemuImg(['map', ...secret, ...io], { allowFail: true });
    expect([human.status, human.stdout]).toEqual([theirs.status, theirs.stdout]);
    expect(theirs.status).toBe(1);
    // check: the format has none (status 63).
    const c = run('img', ['check', ...secret, ...io]);
    expect(c.status).toBe(qemuImg(['check', ...secret, ...io], { allowFail: true }).status);
    expect(c.status).toBe(63);
    expect(c.stderr).toMatch(/does not support checks/);
    // Without the secret the volume does not open, in qemu-img as in img: status 1.
    const locked = run('img', ['check', p('q.luks')]);
    expect([locked.status, qemuImg(['check', p('q.luks')], { allowFail: true }).status]).toEqual([1, 1]);
    expect(locked.stderr).toMatch(/^img check: ERR_IMG_INVALID_ARG: luks: .*q\.luks: Parameter 'key-secret' is required for cipher/);
    for (const args of [
      ['-O', 'luks', '-o', 'key-secret=sec0', '--size', '1G'],
      ['-O', 'luks', '-o', 'key-secret=sec0,cipher-alg=aes-128,cipher-mode=cbc', '--size', '1000'],
      ['--output=json', '-O', 'luks', '-o', 'key-secret=sec0,cipher-alg=aes-192', '-f', 'raw', p('src.raw')],
    ]) {
      expect(run('img', ['measure', ...secret, ...args]).stdout, args.join(' ')).toBe(qemuLuks(['measure', ...secret, ...args]).stdout);
    }
    expect(run('img', ['measure', '-O', 'luks', '--size', '1G']).status).toBe(1);
    // resize: the same bytes as qemu-img resize of a copy.
    copyFileSync(p('q.luks'), p('r-ours.luks'));
    copyFileSync(p('q.luks'), p('r-theirs.luks'));
    for (const size of ['+3M', '--shrink 5M']) {
      const words = size.split(' ');
      const r = run('img', ['resize', ...secret, ...words.slice(0, -1), '--image-opts', opts(p('r-ours.luks')), words.at(-1)!]);
      expect(r.stdout).toBe('Image resized.\n');
      qemuImg(['resize', ...secret, ...words.slice(0, -1), '--image-opts', opts(p('r-theirs.luks')), words.at(-1)!]);
      expect(readFileSync(p('r-ours.luks')).equals(readFileSync(p('r-theirs.luks'))), size).toBe(true);
    }
  }, 300_000);

  it('refusals without the key: one line naming the file, exit 1, nothing written', () => {
    const r = run('img', ['convert', '-O', 'raw', p('q.luks'), p('nokey.raw')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^img convert: ERR_IMG_INVALID_ARG: luks: ${p('q.luks').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: Parameter 'key-secret' is required for cipher \\(give its passphrase: .*\n$`));
    const w = run('img', ['resize', p('q.luks'), '20M']);
    expect(w.status).toBe(1);
    expect(w.stderr).toMatch(/writing into it needs its passphrase/);
    const wrong = run('img', ['convert', '--object', 'secret,id=sec0,data=nope', '--image-opts', '-O', 'raw', opts(p('q.luks')), p('wrong.raw')]);
    expect(wrong.status).toBe(1);
    expect(wrong.stderr).toMatch(/the passphrase unlocks none/);
    expect(run('img', ['info', ...secret, '--image-opts', `driver=qcow2,file.filename=${p('q.luks')},key-secret=sec0`]).stderr).toMatch(/key-secret is the secret of driver=luks/);
  });
});
