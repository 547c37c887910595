// Command lines from the CLI audit against qemu-img 7.2: each refused or accepted as qemu-img does it,
// with qemu-img's words and exit status (qemu-img is the oracle where it is installed).
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeQemu, qemuImg, tempDir } from '@img/testkit';
import { bin, run } from './test/cli.js';

const tmp = tempDir('img-cli-audit-');
afterAll(() => tmp.cleanup());
const p = (name: string) => join(tmp.path, name);

/** qemu-img's stderr without its "qemu-img: " prefix, and its status. */
function qemu(args: string[]): { status: number; message: string; stdout: string } {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  return { status: r.status ?? -1, message: r.stderr.replace(/^qemu-img: /, '').trimEnd(), stdout: r.stdout };
}

describeQemu('create: the size once', () => {
  it.each(['qcow2', 'raw', 'vpc', 'vmdk'])('-f %s -o size=1M <file> 2M is refused, and no file is created', (fmt) => {
    const ours = p(`twice-img.${fmt}`);
    const theirs = p(`twice-qemu.${fmt}`);
    const r = run('img', ['create', '-f', fmt, '-o', 'size=1M', ours, '2M']);
    const q = qemu(['create', '-f', fmt, '-o', 'size=1M', theirs, '2M']);
    expect(r.status).toBe(q.status);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`img create: ERR_IMG_INVALID_ARG: ${q.message.replace(theirs, ours)}\n`);
    expect(existsSync(ours)).toBe(false);
    expect(existsSync(theirs)).toBe(false);
  });

  it('-o size= alone still sets the size', () => {
    const r = run('img', ['create', '-q', '-f', 'qcow2', '-o', 'size=3M', p('once.qcow2')]);
    expect(r.status, r.stderr).toBe(0);
    expect(qemuImg(['info', '--output=json', p('once.qcow2')]).stdout).toContain('"virtual-size": 3145728');
  });
});

describeQemu('compare --strict compares block status as qemu-img does', () => {
  const io = (file: string, fmt: string, ...cmds: string[]) => spawnSync('qemu-io', ['-f', fmt, ...cmds.flatMap((c) => ['-c', c]), file], { encoding: 'utf8' });
  const make = () => {
    const q = (...args: string[]) => qemuImg(args);
    q('create', '-q', '-f', 'qcow2', p('z.qcow2'), '8M');
    io(p('z.qcow2'), 'qcow2', 'write -z 0 1M');
    q('create', '-q', '-f', 'raw', p('e.raw'), '8M');
    q('create', '-q', '-f', 'qcow2', p('a.qcow2'), '8M');
    io(p('a.qcow2'), 'qcow2', 'write -P 1 0 1M');
    q('convert', '-O', 'raw', p('a.qcow2'), p('a.raw'));
    q('convert', '-O', 'qcow2', p('a.qcow2'), p('a2.qcow2'));
    q('convert', '-O', 'vmdk', p('a.qcow2'), p('a.vmdk'));
    q('convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', p('a.qcow2'), p('s.vmdk'));
    // The same data, laid out backwards in the file: two answers where the other image gives one.
    q('create', '-q', '-f', 'qcow2', p('r.qcow2'), '8M');
    io(p('r.qcow2'), 'qcow2', 'write -P 1 4M 4M', 'write -P 1 0 4M');
    q('create', '-q', '-f', 'qcow2', p('f.qcow2'), '8M');
    io(p('f.qcow2'), 'qcow2', 'write -P 1 0 8M');
    q('convert', '-O', 'raw', p('f.qcow2'), p('f.raw'));
    q('convert', '-c', '-O', 'qcow2', p('f.qcow2'), p('c.qcow2'));
    q('create', '-q', '-f', 'qcow2', p('u.qcow2'), '8M');
    q('create', '-q', '-f', 'qcow2', p('zz.qcow2'), '8M');
    io(p('zz.qcow2'), 'qcow2', 'write -z 0 8M');
    q('create', '-q', '-f', 'qcow2', p('b.qcow2'), '8M');
    io(p('b.qcow2'), 'qcow2', 'write -P 2 0 1M');
    q('create', '-q', '-f', 'qcow2', '-b', p('a.qcow2'), '-F', 'qcow2', p('t.qcow2'));
    q('create', '-q', '-f', 'qcow2', '-b', p('f.qcow2'), '-F', 'qcow2', p('tf.qcow2'));
    io(p('tf.qcow2'), 'qcow2', 'write -P 1 2M 64k');
    q('create', '-q', '-f', 'vpc', '-o', 'force_size=on', p('v.vhd'), '8M');
    io(p('v.vhd'), 'vpc', 'write -P 1 0 1M');
    q('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', p('fl.vmdk'), '8M');
    q('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=64k', p('c64.qcow2'), '2G');
    q('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M', p('c2m.qcow2'), '2G');
    q('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', p('x.qcow2'), '8M');
    io(p('x.qcow2'), 'qcow2', 'write -P 1 0 4k');
    q('create', '-q', '-f', 'qcow2', p('y.qcow2'), '8M');
    io(p('y.qcow2'), 'qcow2', 'write -P 1 0 4k');
    q('convert', '-O', 'raw', p('a.qcow2'), p('d.raw'));
    io(p('d.raw'), 'raw', 'write -P 3 512k 4k');
  };

  beforeAll(make);

  const pairs: Array<[string, string]> = [
    ['z.qcow2', 'e.raw'], // zero clusters against a raw hole (qemu: status mismatch at 0)
    ['a.qcow2', 'a.raw'], // unallocated against a raw hole (at 1 MiB)
    ['a.qcow2', 'a2.qcow2'],
    ['a.qcow2', 'a.vmdk'], // a sparse VMDK answers grain by grain
    ['s.vmdk', 'a.vmdk'],
    ['r.qcow2', 'f.qcow2'],
    ['f.qcow2', 'f.raw'],
    ['c.qcow2', 'f.qcow2'],
    ['c.qcow2', 'c.qcow2'],
    ['u.qcow2', 'zz.qcow2'],
    ['u.qcow2', 'e.raw'],
    ['zz.qcow2', 'z.qcow2'],
    ['a.qcow2', 'b.qcow2'], // same status, different data: a content mismatch
    ['a.qcow2', 'd.raw'], // a content mismatch before the first status mismatch comes first
    ['a.qcow2', 't.qcow2'],
    ['tf.qcow2', 'f.qcow2'],
    ['v.vhd', 'a.qcow2'],
    ['v.vhd', 'v.vhd'],
    ['fl.vmdk', 'e.raw'],
    ['fl.vmdk', 'u.qcow2'],
    ['c64.qcow2', 'c2m.qcow2'], // one L2 table per answer: 512 MiB against 2 GiB
    ['x.qcow2', 'y.qcow2'],
  ];

  it.each(pairs)('compare -s %s %s', (x, y) => {
    const q = qemu(['compare', '-s', p(x), p(y)]);
    const r = run('img', ['compare', '-s', p(x), p(y)]);
    expect({ status: r.status, out: r.stdout, err: r.stderr }).toEqual({ status: q.status, out: q.stdout, err: '' });
    // Without -s only the contents count.
    const loose = qemu(['compare', p(x), p(y)]);
    expect(run('img', ['compare', p(x), p(y)]).stdout).toBe(loose.stdout);
  });
});

describeQemu('-T on check and compare, -S on convert, values that start with a dash', () => {
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'qcow2', p('t.qcow2'), '1M']);
  });

  it.each([
    ['check', '-T', 'none', 'IMG'],
    ['check', '-T', 'bogus', 'IMG'],
    ['compare', '-T', 'writeback', 'IMG', 'IMG'],
    ['compare', '-T', 'bogus', 'IMG', 'IMG'],
  ])('%s %s %s', (...args) => {
    const argv = args.map((a) => (a === 'IMG' ? p('t.qcow2') : a));
    const q = qemu(argv);
    const r = run('img', argv);
    expect(r.status).toBe(q.status);
    expect(r.stdout).toBe(q.stdout);
    if (q.status !== 0) expect(r.stderr.split('\n')[0]).toBe(`img ${args[0]}: ${q.message}`);
  });

  it.each(['1000', '-1', '17M', '16M', '1.5k', '0', 'foo', '511'])('convert -S %s', (size) => {
    const argv = ['convert', '-S', size, '-O', 'qcow2', p('t.qcow2')];
    const q = qemu([...argv, p(`s-qemu-${size}.qcow2`)]);
    const r = run('img', [...argv, p(`s-img-${size}.qcow2`)]);
    expect(r.status).toBe(q.status);
    // qemu-img breaks its suffix advice over two lines: img says it in one.
    if (q.status !== 0) expect(r.stderr.split('\n')[0]).toBe(`img convert: ${q.message.replace('\nqemu-img: ', ' ')}`);
    expect(existsSync(p(`s-img-${size}.qcow2`))).toBe(q.status === 0);
  });

  it('an option takes a value that starts with a dash, as getopt gives it (no "ambiguous" advice)', () => {
    const r = run('img', ['rebase', '-b', '-u', p('t.qcow2')]);
    expect(r.stderr).not.toMatch(/ambiguous/);
    expect(r.stderr).toMatch(/-u/);
    const m = run('img', ['measure', '-O', 'qcow2', '--size', '-1']);
    expect(m.status).toBe(1);
    expect(m.stderr).not.toMatch(/ambiguous|--size=-XYZ/);
  });
});

describeQemu('messages from the audit', () => {
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'qcow2', p('m.qcow2'), '1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', p('mb.qcow2'), '1M']);
  });

  it("convert -O raw -B says qemu-img's sentence, with no API names", () => {
    const argv = ['convert', '-O', 'raw', '-B', p('mb.qcow2'), '-F', 'qcow2', p('m.qcow2')];
    const q = qemu([...argv, p('mq.raw')]);
    const r = run('img', [...argv, p('mi.raw')]);
    expect(r.status).toBe(q.status);
    expect(r.stderr).toBe(`img convert: ERR_IMG_UNSUPPORTED: raw: ${p('mi.raw')}: ${q.message}\n`);
    expect(existsSync(p('mi.raw'))).toBe(false);
  });

  it.each(['info', 'map', 'check', 'snapshot', 'measure', 'amend', 'resize', 'bitmap', 'compare', 'create', 'convert', 'commit', 'rebase'])(
    '%s refuses --target-image-opts (convert: naming no output), other --object types and an --image-opts naming no image in one line',
    (cmd) => {
      for (const [args, line] of [
        [['--target-image-opts'], cmd === 'convert' ? '--target-image-opts: give the output as driver=FORMAT,file.filename=PATH[,encrypt.key-secret=ID]' : '--target-image-opts is an option of convert only'],
        [['--object', 'tls-creds-x509,id=t0'], '--object tls-creds-x509: img takes secret objects only (the passphrase of an encrypted image)'],
        [['--image-opts'], `--image-opts names no image: give it as driver=FORMAT,file.filename=PATH[,encrypt.key-secret=ID]`],
      ] as const) {
        const r = run('img', [cmd, ...args, p('m.qcow2')]);
        expect(r.status, `${cmd} ${args[0]}`).toBe(1);
        expect(r.stderr, `${cmd} ${args[0]}`).toBe(`img ${cmd}: ${line}\n`);
      }
    },
  );

  it("img --help's sparsify and compact lines name qcow2, and the suffixes include P and E", () => {
    const r = run('img', ['--help']);
    expect(r.stdout).toMatch(/sparsify .*\(VHD, qcow2\)/);
    expect(r.stdout).toMatch(/compact .*\(VHD, qcow2\)/);
    expect(r.stdout).toContain('k, M, G, T, P, E suffixes');
  });
});

describeQemu('convert with several inputs', () => {
  it('is refused in one sentence, and no output is created (qemu-img concatenates them)', () => {
    for (const i of [1, 2, 3]) qemuImg(['create', '-q', '-f', 'raw', p(`in${i}.raw`), '1M']);
    for (const args of [
      ['-O', 'raw', p('in1.raw'), p('in2.raw'), p('in3.raw'), p('cat.raw')],
      [p('in1.raw'), p('in2.raw'), p('cat.raw')],
    ]) {
      const r = run('img', ['convert', ...args]);
      expect(r.status).toBe(1);
      expect(r.stderr.split('\n')[0]).toMatch(/^img convert: .*several inputs, which qemu-img convert concatenates, are not supported/);
      expect(existsSync(p('cat.raw'))).toBe(false);
    }
  });
});

describeQemu('check prints each problem on stderr in every output mode', () => {
  /** A qemu-img qcow2 with one data cluster, 11 clusters long: cluster 10 gets refcount 1 (a leak), and with `corrupt` the data cluster (5) refcount 0. */
  const make = (name: string, corrupt: boolean) => {
    qemuImg(['create', '-q', '-f', 'qcow2', p(name), '1M']);
    spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 64k', p(name)]);
    const bytes = new Uint8Array(11 * 65536);
    bytes.set(readFileSync(p(name)));
    const view = new DataView(bytes.buffer);
    const refcountBlock = Number(view.getBigUint64(Number(view.getBigUint64(48))));
    view.setUint16(refcountBlock + 10 * 2, 1);
    if (corrupt) view.setUint16(refcountBlock + 5 * 2, 0);
    writeFileSync(p(name), bytes);
  };
  beforeAll(() => {
    make('leak.qcow2', false);
    make('corrupt.qcow2', true);
  });

  it.each([
    ['leak.qcow2', []],
    ['leak.qcow2', ['-q']],
    ['leak.qcow2', ['--output=json']],
    ['leak.qcow2', ['-q', '--output=json']],
    ['corrupt.qcow2', []],
    ['corrupt.qcow2', ['-q']],
    ['corrupt.qcow2', ['--output=json']],
    ['corrupt.qcow2', ['-q', '--output=json']],
  ])('check %s %j', (name, flags) => {
    const q = spawnSync('qemu-img', ['check', ...flags, p(name)], { encoding: 'utf8' });
    const r = run('img', ['check', ...flags, p(name)]);
    expect(q.stderr).toMatch(/^Leaked cluster 10 refcount=1 reference=0$/m);
    expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ status: q.status, stdout: q.stdout, stderr: q.stderr });
  });
});

// As root, the commands run again as nobody (setpriv), writing into a directory nobody may not enter.
const asNobody = process.getuid?.() === 0 && spawnSync('sh', ['-c', 'command -v setpriv'], { stdio: 'ignore' }).status === 0;
const describeAsNobody = asNobody ? describeQemu : (name: string, fn: () => void) => describe.skip(`${name} (skipped: not root, or no setpriv)`, fn);

describeAsNobody('an output nobody may create: one ERR_IMG_IO line, as the other failures', () => {
  const nobody = (cmd: string, args: string[]) => spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...args], { encoding: 'utf8', cwd: tmp.path });
  beforeAll(() => {
    chmodSync(tmp.path, 0o755);
    qemuImg(['create', '-q', '-f', 'qcow2', p('open.qcow2'), '1M']);
    chmodSync(p('open.qcow2'), 0o644);
    mkdirSync(p('locked'), { mode: 0o700 });
  });

  it.each([
    ['x.qcow2', 'convert', '-O', 'qcow2', 'IN', 'OUT'],
    ['x.raw', 'convert', '-O', 'raw', 'IN', 'OUT'],
    ['x.vmdk', 'convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', 'IN', 'OUT'],
    ['x.qcow2', 'create', '-f', 'qcow2', 'OUT', '1M'],
  ])('%s: %s %s %s ...', (name, ...args) => {
    const out = p(`locked/${name}`);
    const argv = args.map((a) => (a === 'IN' ? p('open.qcow2') : a === 'OUT' ? out : a));
    const q = nobody('qemu-img', argv);
    const r = nobody(process.execPath, [bin('img'), ...argv]);
    expect(q.stderr).toContain(`Could not create '${out}': Permission denied`);
    expect(r.status).toBe(q.status);
    expect(r.stderr).toBe(`img ${args[0]}: ERR_IMG_IO: ${out}: create failed: permission denied (EACCES)\n`);
  });
});
