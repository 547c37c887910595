// json: pseudo-filenames and NBD URIs where qemu-img takes them: on the command line, and stored as backing file
// names (libvirt writes json: backing names; `qemu-img create -b nbd://...` makes an overlay of an export). qemu-img is
// the oracle: what it prints for the same images, and the data it reads.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { openImageFile } from './node.js';
import { isJsonName, jsonNameOptions, qemuImageSpec, qemuLocation } from './node/qemu-names.js';
import { bin, run } from './test/cli.js';

const spec = (json: string) => qemuImageSpec(jsonNameOptions(json), json);

describe('json: names', () => {
  it('flatten to the keys --image-opts takes, and say where the image is', () => {
    expect([...jsonNameOptions('json:{"driver":"qcow2","file":{"driver":"file","filename":"a b.qcow2"},"n":[1,true]}')]).toEqual([
      ['driver', 'qcow2'],
      ['file.driver', 'file'],
      ['file.filename', 'a b.qcow2'],
      ['n.0', '1'],
      ['n.1', 'true'],
    ]);
    expect(spec('json:{"driver":"qcow2","file":{"driver":"file","filename":"a.qcow2"}}')).toEqual({ location: 'a.qcow2', format: 'qcow2', secrets: new Map() });
    expect(spec('json:{"file.filename":"a.qcow2"}')).toEqual({ location: 'a.qcow2', secrets: new Map() });
    expect(spec('json:{"driver":"file","filename":"/x/a.img"}')).toEqual({ location: '/x/a.img', protocol: 'file', secrets: new Map() });
    expect(spec('json:{"driver":"qcow2","file.filename":"e.qcow2","encrypt.key-secret":"s0","backing.encrypt.key-secret":"s1"}').secrets).toEqual(
      new Map([
        ['encrypt.key-secret', 's0'],
        ['backing.encrypt.key-secret', 's1'],
      ]),
    );
    expect(spec('json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"/run/a b.sock"},"export":"vm/1"}}').location).toBe('nbd+unix:///vm%2F1?socket=%2Frun%2Fa%20b.sock');
    expect(spec('json:{"driver":"nbd","server":{"type":"inet","host":"::1","port":"10810"}}')).toEqual({ location: 'nbd://[::1]:10810/', protocol: 'nbd', secrets: new Map() });
    expect(spec('json:{"file":{"driver":"nbd","server":{"type":"inet","host":"h"}}}').location).toBe('nbd://h:10809/');
    expect(spec('json:{"driver":"qcow2","file.filename":"e.qcow2","encrypt.format":"luks"}').format).toBe('qcow2');
    expect(isJsonName('json:{}')).toBe(true);
    expect(isJsonName('a.json')).toBe(false);
  });

  it('refuse what img does not read, naming it, and bound what they parse', () => {
    const refusals: Array<[string, RegExp]> = [
      ['json:{bad', /^json: json:\{bad: Could not parse the JSON options: /],
      ['json:[1]', /Invalid JSON object given$/],
      ['json:{"file":{"driver":"file","filename":"a"},"offset":512}', /not "offset"$/],
      ['json:{"driver":"qcow2","file":"node0"}', /file="node0" names a block node/],
      ['json:{"file":{"driver":"gluster","filename":"a"}}', /file\.driver=gluster: img reads files \(file\) and NBD exports \(nbd\)$/],
      ['json:{"driver":"qcow2"}', /file\.filename is missing$/],
      ['json:{"file":{"driver":"nbd","server":{"type":"vsock"}}}', /file\.server\.type is "vsock": img connects to inet and unix servers$/],
      ['json:{"file":{"filename":null}}', /the option file\.filename is null/],
      [`json:${'{"a":'.repeat(40)}1${'}'.repeat(40)}`, /nest deeper than 16 levels$/],
    ];
    for (const [name, message] of refusals) expect(() => spec(name), name).toThrow(message);
  });

  it('a stored name points where qemu opens it: json: from the working directory, a plain name from the image', () => {
    expect(qemuLocation('json:{"file.filename":"b.qcow2"}', '/img/dir/top.qcow2')).toBe('b.qcow2');
    expect(qemuLocation('b.qcow2', '/img/dir/top.qcow2')).toBe('/img/dir/b.qcow2');
    expect(qemuLocation('nbd://h/e', '/img/dir/top.qcow2')).toBe('nbd://h/e');
  });
});

describeQemu('json: and NBD backing names, through the img command', () => {
  const tmp = tempDir('img-qemu-names-');
  afterAll(() => tmp.cleanup());
  const p = (name: string) => join(tmp.path, name);
  const cwd = tmp.path;
  const img = (args: string[]) => run('img', args, { cwd });
  const qemu = (args: string[]) => qemuImg(args, { cwd });
  const absJson = () => `json:{"driver":"qcow2","file":{"driver":"file","filename":"${p('base.qcow2')}"}}`;
  const relJson = 'json:{"driver":"qcow2","file":{"driver":"file","filename":"base.qcow2"}}';
  let server: ChildProcess | undefined;

  beforeAll(async () => {
    qemu(['create', '-q', '-f', 'qcow2', 'base.qcow2', '8M']);
    qemuIo(p('base.qcow2'), 'qcow2', ['write -P 7 0 1M', 'write -P 9 3M 512k']);
    qemu(['create', '-q', '-f', 'qcow2', '-b', absJson(), '-F', 'qcow2', 'abs.qcow2']);
    qemuIo(p('abs.qcow2'), 'qcow2', ['write -P 5 512k 64k']);
    mkdirSync(p('sub'));
    qemu(['create', '-q', '-f', 'qcow2', '-b', relJson, '-F', 'qcow2', '-u', 'sub/rel.qcow2', '8M']);
    // An export of the base, and an overlay of it by URI and by json: name.
    server = spawn(process.execPath, [bin('img'), 'serve', '-k', p('base.sock'), p('base.qcow2')], { stdio: 'ignore' });
    for (let i = 0; i < 100 && img(['info', `nbd+unix:///?socket=${p('base.sock')}`]).status !== 0; i++) await new Promise((r) => setTimeout(r, 50));
    qemu(['create', '-q', '-f', 'qcow2', '-b', `nbd+unix:///?socket=${p('base.sock')}`, '-F', 'raw', '-u', 'uri.qcow2', '8M']);
    qemu(['create', '-q', '-f', 'qcow2', '-b', `json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"${p('base.sock')}"}}}`, '-F', 'raw', '-u', 'jnbd.qcow2', '8M']);
  }, 60_000);
  afterAll(() => server?.kill());

  it('info, --backing-chain, map and measure print what qemu-img prints', () => {
    for (const file of ['abs.qcow2', 'sub/rel.qcow2', 'uri.qcow2', 'jnbd.qcow2']) {
      for (const args of [['info'], ['info', '--output=json'], ['info', '--backing-chain'], ['info', '--backing-chain', '--output=json'], ['map', '--output=json'], ['measure', '-O', 'qcow2']]) {
        const mine = img([...args, file]);
        const theirs = qemu([...args, file]);
        expect([mine.status, mine.stdout], `${args.join(' ')} ${file}`).toEqual([0, theirs.stdout]);
      }
    }
    expect(img(['map', 'abs.qcow2']).stdout).toBe(qemu(['map', 'abs.qcow2']).stdout);
  });

  it('info names an export given "export": "" (or file.export=) with the slash qemu-img writes, and one given none without', () => {
    const server = `"server":{"type":"unix","path":"${p('base.sock')}"}`;
    for (const args of [
      ['info', `json:{"driver":"raw","file":{"driver":"nbd",${server},"export":""}}`],
      ['info', '--output=json', `json:{"driver":"raw","file":{"driver":"nbd",${server},"export":""}}`],
      ['info', `json:{"driver":"raw","file":{"driver":"nbd",${server}}}`],
      ['info', '--image-opts', `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${p('base.sock')},file.export=`],
    ]) {
      const mine = img(args);
      const theirs = qemu(args);
      expect([mine.status, mine.stdout.split('\n').find((l) => /image:|"filename"/.test(l))], args.join(' ')).toEqual([0, theirs.stdout.split('\n').find((l) => /image:|"filename"/.test(l))]);
    }
    expect(img(['info', `json:{"driver":"raw","file":{"driver":"nbd",${server},"export":""}}`]).stdout).toMatch(/^image: nbd\+unix:\/\/\/\?socket=/);
  });

  it('info names an image opened by its protocol driver alone after it (file format: nbd, file), as qemu-img does; raw over it stays raw', () => {
    const sock = p('base.sock');
    const names = [
      ['--image-opts', `driver=nbd,server.type=unix,server.path=${sock}`],
      [`json:{"driver":"nbd","server":{"type":"unix","path":"${sock}"}}`],
      ['--image-opts', `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${sock}`],
      [`json:{"driver":"raw","file":{"driver":"nbd","server":{"type":"unix","path":"${sock}"}}}`],
      ['--image-opts', 'driver=file,filename=other.raw'],
      ['json:{"driver":"file","filename":"other.raw"}'],
    ];
    writeFileSync(p('other.raw'), Buffer.alloc(1 << 20, 1));
    for (const name of names) {
      for (const args of [['info'], ['info', '--output=json']]) {
        const mine = img([...args, ...name]);
        const theirs = qemu([...args, ...name]);
        expect([mine.status, mine.stdout], `${args.join(' ')} ${name.join(' ')}`).toEqual([0, theirs.stdout]);
      }
    }
    expect(img(['info', ...names[0]!]).stdout).toContain('file format: nbd\n');
  });

  it('the data reads through the named backing file: compare, convert, and a json: name on the command line and in the API', async () => {
    for (const file of ['abs.qcow2', 'uri.qcow2', 'jnbd.qcow2']) {
      expect(img(['convert', '-O', 'raw', file, `${file}.raw`]).status, file).toBe(0);
      expect(qemu(['compare', file, `${file}.raw`]).status, file).toBe(0);
    }
    expect(img(['compare', 'uri.qcow2', 'base.qcow2']).status).toBe(0);
    expect(img(['compare', 'sub/rel.qcow2', 'base.qcow2']).status).toBe(0);
    const cli = `json:{"driver":"qcow2","file":{"driver":"file","filename":"abs.qcow2"}}`;
    for (const args of [['info'], ['info', '--backing-chain', '--output=json'], ['map', '--output=json']]) expect(img([...args, cli]).stdout, args.join(' ')).toBe(qemu([...args, cli]).stdout);
    expect(img(['compare', cli, 'abs.qcow2.raw']).status).toBe(0);
    // The API takes the same names.
    const disk = await openImageFile(`json:{"driver":"qcow2","file":{"driver":"file","filename":"${p('abs.qcow2')}"}}`);
    try {
      expect([disk.format, disk.storage.name, disk.backing?.storage.name]).toEqual(['qcow2', p('abs.qcow2'), p('base.qcow2')]);
    } finally {
      await disk.close();
    }
    await expect(openImageFile(`json:{"driver":"qcow2","file.filename":"x","encrypt.key-secret":"s"}`)).rejects.toThrow(/give the passphrase open option instead/);
    const nbd = ['--image-opts', `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${p('base.sock')}`];
    expect(img(['compare', ...nbd, 'driver=qcow2,file.filename=base.qcow2']).status).toBe(0);
  });

  it('create -b json: stores the name as given and prints the Formatting line qemu-img prints; commit and rebase work through it', () => {
    // A base of its own: the server holds base.qcow2 (a commit into it is refused by its lock, as qemu-img's would be).
    qemu(['convert', '-O', 'qcow2', 'base.qcow2', 'cbase.qcow2']);
    const json = `json:{"driver":"qcow2","file":{"driver":"file","filename":"${p('cbase.qcow2')}"}}`;
    const mine = img(['create', '-f', 'qcow2', '-b', json, '-F', 'qcow2', 'made.qcow2']);
    const theirs = qemu(['create', '-f', 'qcow2', '-b', json, '-F', 'qcow2', 'qmade.qcow2']);
    expect([mine.status, mine.stdout.replace('made.qcow2', 'X')]).toEqual([0, theirs.stdout.replace('qmade.qcow2', 'X')]);
    expect(
      img(['info', '--output=json', 'made.qcow2'])
        .stdout.replace(/made\.qcow2/g, 'X')
        .replace(/"actual-size": \d+/, ''),
    ).toBe(
      qemu(['info', '--output=json', 'qmade.qcow2'])
        .stdout.replace(/qmade\.qcow2/g, 'X')
        .replace(/"actual-size": \d+/, ''),
    );
    qemuIo(p('made.qcow2'), 'qcow2', ['write -P 3 0 64k']);
    expect(img(['commit', 'made.qcow2']).status).toBe(0);
    expect(qemuIo(p('cbase.qcow2'), 'qcow2', ['read -P 3 0 64k'])).toContain('read 65536/65536');
    expect(img(['commit', 'uri.qcow2']).stderr).toMatch(/^img commit: ERR_IMG_READ_ONLY: nbd: /); // the export is read-only
    writeFileSync(p('other.raw'), Buffer.alloc(8 << 20, 1));
    expect(img(['rebase', '-b', 'other.raw', '-F', 'raw', 'abs.qcow2']).status).toBe(0);
    expect(qemu(['compare', 'abs.qcow2', 'abs.qcow2.raw']).status).not.toBe(2);
    expect(img(['rebase', '-u', '-b', relJson, '-F', 'qcow2', 'abs.qcow2']).status).toBe(0);
    expect(qemu(['info', '--output=json', 'abs.qcow2']).stdout).toContain('"backing-filename": "json:{\\"driver\\":\\"qcow2\\",\\"file\\":{\\"driver\\":\\"file\\",\\"filename\\":\\"base.qcow2\\"}}"');
  });

  it('refusals are one line, exit 1; an untrusted open names the json: backing file and opens nothing', () => {
    for (const [args, line] of [
      [['info', 'json:{bad'], /^img info: json:\{bad: Could not parse the JSON options: /],
      [['info', 'json:{"file":{"driver":"file","filename":"base.qcow2"},"offset":1}'], /^img info: json:.*: img reads driver, .* not "offset"$/],
      [['info', '--untrusted', 'sub/rel.qcow2'], /^img info: ERR_IMG_UNSAFE: .*backing file "json:\{/],
    ] as Array<[string[], RegExp]>) {
      const r = img(args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr.trimEnd().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr.trimEnd(), args.join(' ')).toMatch(line);
    }
  });

  it('"backing": null and backing= read the image alone, as qemu-img does: convert, map, measure, info, compare, the API; the same file named twice is refused', async () => {
    // 64 KiB at 512 KiB over the base (1 MiB at 0, 512 KiB at 3 MiB), named by a json: name.
    qemu(['create', '-q', '-f', 'qcow2', '-b', absJson(), '-F', 'qcow2', 'lone.qcow2', '8M']);
    qemuIo(p('lone.qcow2'), 'qcow2', ['write -P 5 512k 64k']);
    const alone = `json:{"driver":"qcow2","file":{"driver":"file","filename":"lone.qcow2"},"backing":null}`;
    const opts = ['--image-opts', 'driver=qcow2,file.filename=lone.qcow2,backing='];
    for (const args of [
      ['map', '--output=json', alone],
      ['measure', '-O', 'qcow2', alone],
      ['info', alone],
      ['map', ...opts],
    ]) {
      const mine = img(args);
      expect([mine.status, mine.stdout], args.join(' ')).toEqual([0, qemu(args).stdout]);
    }
    for (const [name, args] of [
      ['json', [alone]],
      ['opts', opts],
    ] as const) {
      expect(img(['convert', '-O', 'raw', ...args, `alone-${name}.raw`]).status).toBe(0);
      expect(qemu(['convert', '-O', 'raw', ...args, `q-alone-${name}.raw`]).status).toBe(0);
      expect(qemu(['compare', '-f', 'raw', '-F', 'raw', `alone-${name}.raw`, `q-alone-${name}.raw`]).status, name).toBe(0);
    }
    // Only the overlay's own 64 KiB: the base's data is not there.
    expect(qemuIo(p('alone-json.raw'), 'raw', ['read -P 0 0 512k', 'read -P 5 512k 64k', 'read -P 0 576k 7616k'])).not.toMatch(/fail/i);
    expect(img(['compare', alone, 'alone-json.raw'])).toMatchObject({ status: 0, stdout: 'Images are identical.\n' });
    expect(img(['compare', alone, 'lone.qcow2'])).toMatchObject({ status: 1, stderr: 'img compare: lone.qcow2 is named twice, once without its backing file (backing=, "backing": null): give it once\n' });
    // The API: openImageFile takes the same name (file names from the working directory: given whole here).
    const disk = await openImageFile(`json:{"driver":"qcow2","file":{"driver":"file","filename":"${p('lone.qcow2')}"},"backing":null}`);
    try {
      expect(disk.backing).toBeUndefined();
      expect(await disk.read(0, 4)).toEqual(new Uint8Array(4));
      expect(await disk.read(512 * 1024, 4)).toEqual(new Uint8Array(4).fill(5));
    } finally {
      await disk.close();
    }
    const node = img(['info', 'json:{"driver":"qcow2","file":{"driver":"file","filename":"lone.qcow2"},"backing":"node0"}']);
    expect(node.status).toBe(1);
    expect(node.stderr).toMatch(/backing="node0" names a block node, which img has not/);
  });
});
