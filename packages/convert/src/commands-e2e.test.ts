// The maintenance commands (create, snapshot, amend, commit, rebase, measure) used as a user uses them,
// through the built bin and beside qemu-img 7.2 on the same command line: what a script would notice
// (exit status, which stream, the words of human output, the image left behind) must agree.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { describeQemu, holdWithQemuIo, qemuBitmapList, qemuDirtyBitmap, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { run } from './test/cli.js';

const tmp = tempDir('img-commands-e2e-');
afterAll(() => tmp.cleanup());

/** A qcow2 chain base <- top in a fresh directory, base with data; returns the directory. */
function chain(): string {
  const d = mkdtempSync(join(tmp.path, 'chain-'));
  qemuImg(['create', '-q', '-f', 'qcow2', join(d, 'base.qcow2'), '64M']);
  qemuIo(join(d, 'base.qcow2'), 'qcow2', ['write -P 1 0 2M']);
  qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'top.qcow2')]);
  qemuIo(join(d, 'top.qcow2'), 'qcow2', ['write -P 3 1M 2M']);
  return d;
}

describeQemu('img create beside qemu-img create', () => {
  it('makes an overlay of an image a running qemu holds for writing, as qemu-img does (the backing file is only read)', async () => {
    const d = chain();
    const holder = await holdWithQemuIo(join(d, 'top.qcow2'), { format: 'qcow2' });
    try {
      const ours = run('img', ['create', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', 'ours.qcow2'], { cwd: d });
      const theirs = qemuImg(['create', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', 'theirs.qcow2'], { cwd: d, allowFail: true });
      expect(theirs.status).toBe(0);
      expect(ours.stderr).toBe('');
      expect(ours.status).toBe(0);
      expect(ours.stdout).toBe(theirs.stdout.replace('theirs.qcow2', 'ours.qcow2'));
    } finally {
      await holder.stop();
    }
    expect(qemuImg(['compare', join(d, 'ours.qcow2'), join(d, 'top.qcow2')]).status).toBe(0);
  });
});

/** Runs img and qemu-img with the same arguments in `cwd`; qemu-img's probing warning about raw is left out. */
function both(args: string[], cwd: string): { ours: { status: number; stdout: string; stderr: string }; theirs: { status: number; stdout: string; stderr: string } } {
  const ours = run('img', args, { cwd });
  const theirs = qemuImg(args, { cwd, allowFail: true });
  return { ours, theirs };
}

describeQemu('img create: the backing file named by -o', () => {
  it('takes the size from -o backing_file=,backing_fmt= as from -b/-F, and prints the same line as qemu-img', () => {
    const d = chain();
    const args = (out: string) => ['create', '-f', 'qcow2', '-o', 'backing_file=base.qcow2,backing_fmt=qcow2', out];
    const ours = run('img', args('ours.qcow2'), { cwd: d });
    const theirs = qemuImg(args('theirs.qcow2'), { cwd: d, allowFail: true });
    expect(theirs.status).toBe(0);
    expect({ status: ours.status, stderr: ours.stderr }).toEqual({ status: 0, stderr: '' });
    expect(ours.stdout).toBe(theirs.stdout.replace('theirs.qcow2', 'ours.qcow2'));
    const info = (name: string) => JSON.parse(qemuImg(['info', '--output=json', join(d, name)]).stdout) as Record<string, unknown>;
    for (const key of ['virtual-size', 'backing-filename', 'backing-filename-format']) expect(info('ours.qcow2')[key], key).toEqual(info('theirs.qcow2')[key]);
  });

  it('refuses a backing file for raw in qemu-img words, and leaves no file', () => {
    const d = chain();
    const { ours, theirs } = both(['create', '-f', 'raw', '-b', 'base.qcow2', '-F', 'qcow2', 'n.img'], d);
    expect(theirs.stderr).toBe("qemu-img: n.img: Backing file not supported for file format 'raw'\n");
    expect({ status: ours.status, stdout: ours.stdout }).toEqual({ status: theirs.status, stdout: theirs.stdout });
    expect(ours.stderr).toMatch(/^img create: ERR_IMG_UNSUPPORTED: raw: n\.img: Backing file not supported for file format 'raw'\n$/);
    expect(existsSync(join(d, 'n.img'))).toBe(false);
  });
});

describeQemu('img amend beside qemu-img amend', () => {
  it('answers for a format it cannot amend in qemu-img words, even for -o help, and changes nothing', () => {
    const d = mkdtempSync(join(tmp.path, 'amend-'));
    qemuImg(['create', '-q', '-f', 'vpc', join(d, 'v.vhd'), '64M']);
    qemuImg(['create', '-q', '-f', 'vmdk', join(d, 'k.vmdk'), '64M']);
    qemuImg(['create', '-q', '-f', 'raw', join(d, 'r.img'), '1M']);
    const cases = [
      { args: ['amend', '-f', 'vpc', '-o', 'help'], driver: 'vpc' },
      { args: ['amend', '-o', 'help', 'v.vhd'], driver: 'vpc' },
      { args: ['amend', '-o', 'subformat=fixed', 'v.vhd'], driver: 'vpc' },
      { args: ['amend', '-o', '?', 'k.vmdk'], driver: 'vmdk' },
      { args: ['amend', '-f', 'raw', '-o', 'compat=1.1', 'r.img'], driver: 'raw' },
    ];
    for (const { args, driver } of cases) {
      const { ours, theirs } = both(args, d);
      const sentence = `Format driver '${driver}' does not support option amendment`;
      expect(theirs.stderr, args.join(' ')).toContain(sentence);
      expect({ status: ours.status, stdout: ours.stdout }, args.join(' ')).toEqual({ status: theirs.status, stdout: theirs.stdout });
      expect(ours.stderr, args.join(' ')).toContain(sentence);
      expect(ours.stderr.split('\n').filter(Boolean), args.join(' ')).toHaveLength(1);
    }
    expect(qemuImg(['info', '--output=json', join(d, 'v.vhd')]).stdout).toContain('"vpc"');
  });

  it('still lists the qcow2 options for -o help of a qcow2 image', () => {
    const d = mkdtempSync(join(tmp.path, 'amend-'));
    qemuImg(['create', '-q', '-f', 'qcow2', join(d, 'd.qcow2'), '1M']);
    const ours = run('img', ['amend', '-o', 'help', 'd.qcow2'], { cwd: d });
    expect(ours.status).toBe(0);
    expect(ours.stdout).toMatch(/^Amend options for 'qcow2':\n {2}compat=<str>/);
  });
});

describeQemu('img snapshot beside qemu-img snapshot', () => {
  it('records a snapshot as qemu-img snapshot -c does: qemu-img lists the same columns, ICOUNT 0 included', () => {
    const d = mkdtempSync(join(tmp.path, 'snapshot-'));
    for (const name of ['ours.qcow2', 'theirs.qcow2']) {
      qemuImg(['create', '-q', '-f', 'qcow2', join(d, name), '64M']);
      qemuIo(join(d, name), 'qcow2', ['write -P 5 0 1M']);
    }
    expect(run('img', ['snapshot', '-c', 'nightly', 'ours.qcow2'], { cwd: d }).status).toBe(0);
    qemuImg(['snapshot', '-c', 'nightly', 'theirs.qcow2'], { cwd: d });
    // The date column is the only one that may differ (the two ran at different instants).
    const listed = (name: string) => qemuImg(['snapshot', '-l', name], { cwd: d }).stdout.replace(/\d{4}-\d\d-\d\d \d\d:\d\d:\d\d/g, 'DATE');
    expect(listed('ours.qcow2')).toBe(listed('theirs.qcow2'));
    expect(listed('ours.qcow2')).toMatch(/ nightly .* 0\n$/);
    const snapshots = (name: string) => (JSON.parse(qemuImg(['info', '--output=json', join(d, name)]).stdout) as { snapshots: Array<Record<string, unknown>> }).snapshots.map((s) => Object.keys(s).sort());
    expect(snapshots('ours.qcow2')).toEqual(snapshots('theirs.qcow2'));
  });
});

describeQemu("qemu-img 7.2's I/O options of amend, commit and rebase", () => {
  // Each line is accepted by qemu-img 7.2; img must accept it too and leave the same image (compared by qemu-img).
  const lines = [
    ['amend', '-p', '-o', 'lazy_refcounts=on', 'top.qcow2'],
    ['amend', '-t', 'writeback', '-o', 'lazy_refcounts=on', 'top.qcow2'],
    ['commit', '-t', 'none', 'top.qcow2'],
    ['commit', '-t', 'unsafe', '-d', '-p', 'top.qcow2'],
    ['rebase', '-p', '-b', '', 'top.qcow2'],
    ['rebase', '-t', 'none', '-T', 'directsync', '-b', '', 'top.qcow2'],
    ['rebase', '-U', '-u', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'],
  ];
  for (const args of lines) {
    it(args.join(' '), () => {
      const ours = chain();
      const theirs = chain();
      const r = run('img', args, { cwd: ours });
      const q = qemuImg(args, { cwd: theirs, allowFail: true });
      expect(q.status).toBe(0);
      // -p: both print qemu-img's percentage lines (each tool's own steps); what is left must be the same.
      const strip = (out: string) => out.replace(/\s*\(\d+\.\d\d\/100%\)/g, '').replace(/^\s+/, '');
      if (args.includes('-p') && args[0] !== 'amend') expect(r.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r/);
      expect({ status: r.status, stdout: strip(r.stdout) }).toEqual({ status: 0, stdout: strip(q.stdout) });
      for (const name of ['top.qcow2', 'base.qcow2']) {
        expect(qemuImg(['compare', join(ours, name), join(theirs, name)]).status, name).toBe(0);
        const info = (d: string) => JSON.parse(qemuImg(['info', '-U', '--output=json', join(d, name)]).stdout) as { 'backing-filename'?: string; 'format-specific': { data: { 'lazy-refcounts'?: boolean } } };
        expect(info(ours)['backing-filename'], name).toBe(info(theirs)['backing-filename']);
        expect(info(ours)['format-specific'].data['lazy-refcounts'], name).toBe(info(theirs)['format-specific'].data['lazy-refcounts']);
      }
    });
  }

  it('refuses a cache mode qemu does not know, with its words, before touching the image', () => {
    for (const cmd of [
      ['amend', '-t', 'bogus', '-o', 'lazy_refcounts=on'],
      ['commit', '-t', 'bogus'],
      ['rebase', '-T', 'bogus', '-b', ''],
    ]) {
      const d = chain();
      const args = [...cmd, 'top.qcow2'];
      const { ours, theirs } = both(args, d);
      const sentence = cmd.includes('-T') ? 'Invalid source cache option: bogus' : 'Invalid cache option: bogus';
      expect(theirs.stderr, args.join(' ')).toBe(`qemu-img: ${sentence}\n`);
      expect(ours.status, args.join(' ')).toBe(theirs.status);
      expect(ours.stderr.split('\n')[0], args.join(' ')).toBe(`img ${cmd[0]}: ${sentence}`);
      expect(qemuImg(['info', '--output=json', join(d, 'top.qcow2')]).stdout).toContain('"backing-filename": "base.qcow2"');
    }
    // convert's -T is the source's cache too.
    const { ours, theirs } = both(['convert', '-T', 'bogus', '-O', 'raw', 'top.qcow2', 'out.raw'], chain());
    expect(theirs.stderr).toBe('qemu-img: Invalid source cache option: bogus\n');
    expect(ours.status).toBe(theirs.status);
    expect(ours.stderr.split('\n')[0]).toBe('img convert: Invalid source cache option: bogus');
  });

  it('rebase -U reads a new backing file a running qemu holds, as qemu-img rebase -U does', async () => {
    const d = chain();
    qemuImg(['create', '-q', '-f', 'qcow2', join(d, 'other.qcow2'), '64M']);
    const holder = await holdWithQemuIo(join(d, 'other.qcow2'), { format: 'qcow2' });
    try {
      expect(run('img', ['rebase', '-b', 'other.qcow2', '-F', 'qcow2', 'top.qcow2'], { cwd: d }).stderr).toContain('ERR_IMG_LOCKED');
      const r = run('img', ['rebase', '-U', '-b', 'other.qcow2', '-F', 'qcow2', 'top.qcow2'], { cwd: d });
      expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    } finally {
      await holder.stop();
    }
    expect(qemuImg(['info', '--output=json', join(d, 'top.qcow2')]).stdout).toContain('"backing-filename": "other.qcow2"');
  });
});

describeQemu('img measure -l beside qemu-img measure -l', () => {
  it('measures an internal snapshot, not the active layer: the same figures and JSON as qemu-img', () => {
    const d = mkdtempSync(join(tmp.path, 'measure-'));
    const file = join(d, 'snaps.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '64M']);
    qemuIo(file, 'qcow2', ['write -P 1 0 4M']);
    qemuImg(['snapshot', '-c', 's1', file]);
    qemuIo(file, 'qcow2', ['write -P 2 8M 8M']);
    qemuImg(['bitmap', '--add', file, 'b0']);
    for (const l of ['s1', '1', 'snapshot.id=1,snapshot.name=s1']) {
      for (const out of ['human', 'json']) {
        const args = ['measure', '-O', 'qcow2', '-l', l, `--output=${out}`, file];
        const ours = run('img', args);
        const theirs = qemuImg(args);
        expect({ status: ours.status, stdout: ours.stdout, stderr: ours.stderr }, args.join(' ')).toEqual({ status: 0, stdout: theirs.stdout, stderr: '' });
      }
    }
    // The snapshot holds 4 MiB, the active layer 12: the figure must be the snapshot's.
    expect(run('img', ['measure', '-O', 'qcow2', '-l', 's1', file]).stdout).not.toBe(run('img', ['measure', '-O', 'qcow2', file]).stdout);
    const missing = run('img', ['measure', '-O', 'qcow2', '-l', 'nope', file]);
    expect({ status: missing.status, stdout: missing.stdout }).toEqual({ status: qemuImg(['measure', '-O', 'qcow2', '-l', 'nope', file], { allowFail: true }).status, stdout: '' });
  });
});

describeQemu('the backing format img stores is one qemu opens', () => {
  /** The backing format qemu-img reads from `file`, and whether qemu can open the whole chain. */
  function stored(file: string): { format: unknown; opens: boolean } {
    const info = JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as Record<string, unknown>;
    return { format: info['backing-filename-format'], opens: qemuImg(['convert', '-O', 'raw', file, `${file}.raw`], { allowFail: true }).status === 0 };
  }

  it("-F vhd (img's name) is stored as vpc by create, rebase -u and convert -B", () => {
    const d = chain();
    qemuImg(['create', '-q', '-f', 'vpc', join(d, 'parent.vhd'), '64M']);
    expect(run('img', ['create', '-q', '-f', 'qcow2', '-b', 'parent.vhd', '-F', 'vhd', 'created.qcow2'], { cwd: d }).status).toBe(0);
    expect(stored(join(d, 'created.qcow2'))).toEqual({ format: 'vpc', opens: true });
    expect(run('img', ['rebase', '-u', '-b', 'parent.vhd', '-F', 'vhd', 'top.qcow2'], { cwd: d }).status).toBe(0);
    expect(stored(join(d, 'top.qcow2'))).toEqual({ format: 'vpc', opens: true });
    expect(run('img', ['convert', '-O', 'qcow2', '-B', 'parent.vhd', '-F', 'vhd', 'base.qcow2', 'converted.qcow2'], { cwd: d }).status).toBe(0);
    expect(stored(join(d, 'converted.qcow2'))).toEqual({ format: 'vpc', opens: true });
  });

  it('refuses a format name nobody knows before writing it, where qemu-img refuses too', () => {
    const d = chain();
    for (const args of [
      ['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow3', 'top.qcow2'],
      ['create', '-f', 'qcow2', '-u', '-b', 'base.qcow2', '-F', 'qcow3', 'new.qcow2', '1M'],
    ]) {
      const ours = run('img', args, { cwd: d });
      expect(qemuImg(args, { cwd: d, allowFail: true }).status, args.join(' ')).toBe(1);
      expect(ours.status, args.join(' ')).toBe(1);
      expect(ours.stderr, args.join(' ')).toContain('ERR_IMG_UNKNOWN_FORMAT: unknown format "qcow3"');
    }
    expect(existsSync(join(d, 'new.qcow2'))).toBe(false);
    expect(stored(join(d, 'top.qcow2'))).toEqual({ format: 'qcow2', opens: true });
  });

  it('refuses an OVA as a backing file (qemu has no driver for one, and qemu-img refuses -F ova) in create, rebase -u and convert -B, writing nothing', () => {
    const d = chain();
    expect(run('img', ['convert', '-q', '-O', 'ova', 'base.qcow2', 'vm.ova'], { cwd: d }).status).toBe(0);
    // The oracle: qemu-img refuses the name ("Parameter 'backing-fmt' does not accept value 'ova'").
    expect(qemuImg(['create', '-f', 'qcow2', '-u', '-b', 'vm.ova', '-F', 'ova', 'qemu-made.qcow2', '64M'], { cwd: d, allowFail: true }).status).toBe(1);
    for (const [args, made] of [
      [['create', '-f', 'qcow2', '-b', 'vm.ova', '-F', 'ova', 'new.qcow2'], 'new.qcow2'],
      [['convert', '-O', 'qcow2', '-B', 'vm.ova', '-F', 'ova', 'base.qcow2', 'converted.qcow2'], 'converted.qcow2'],
      [['rebase', '-u', '-b', 'vm.ova', '-F', 'ova', 'top.qcow2'], undefined],
    ] as const) {
      const ours = run('img', [...args], { cwd: d });
      expect(ours.status, args.join(' ')).toBe(1);
      expect(ours.stderr.trim().split('\n'), args.join(' ')).toEqual([expect.stringContaining('ERR_IMG_UNSUPPORTED: ova: an ova cannot be a backing file')]);
      if (made) expect(existsSync(join(d, made)), made).toBe(false);
    }
    expect(stored(join(d, 'top.qcow2'))).toEqual({ format: 'qcow2', opens: true });
  });
});

describeQemu('-f with a name no format has', () => {
  it("says the format is unknown, not that the file is of another format, with qemu-img's status", () => {
    const d = chain();
    for (const cmd of [['info'], ['map'], ['check'], ['commit'], ['snapshot', '-l'], ['measure', '-O', 'qcow2'], ['resize'], ['amend', '-o', 'lazy_refcounts=on']]) {
      const args = [...cmd, '-f', 'qcow3', 'top.qcow2', ...(cmd[0] === 'resize' ? ['+1M'] : [])];
      const { ours, theirs } = both(args, d);
      expect(ours.status, args.join(' ')).toBe(theirs.status);
      expect(ours.stdout, args.join(' ')).toBe('');
      expect(ours.stderr, args.join(' ')).toMatch(/^img \w+: ERR_IMG_UNKNOWN_FORMAT: unknown format "qcow3" \(known: [^)]*\)\n$/);
    }
  });
});

describeQemu('img create -f vmdk -o compat6', () => {
  it('makes the image qemu-img makes (hwversion 6), in every subformat, and refuses it beside hwversion as qemu-img does', () => {
    const d = mkdtempSync(join(tmp.path, 'compat6-'));
    for (const subformat of ['monolithicSparse', 'monolithicFlat', 'streamOptimized']) {
      const args = (name: string) => ['create', '-f', 'vmdk', '-o', `compat6=on,subformat=${subformat}`, name, '1M'];
      const ours = run('img', args(`ours-${subformat}.vmdk`), { cwd: d });
      const theirs = qemuImg(args(`theirs-${subformat}.vmdk`), { cwd: d });
      expect({ status: ours.status, stderr: ours.stderr, stdout: ours.stdout }).toEqual({ status: 0, stderr: '', stdout: theirs.stdout.replace('theirs-', 'ours-') });
      const hw = (name: string) => /ddb\.virtualHWVersion = "(\d+)"/.exec(readFileSync(join(d, name), 'latin1'))?.[1];
      expect(hw(`ours-${subformat}.vmdk`), subformat).toBe('6');
      expect(hw(`ours-${subformat}.vmdk`), subformat).toBe(hw(`theirs-${subformat}.vmdk`));
      expect(qemuImg(['check', join(d, `ours-${subformat}.vmdk`)]).status).toBe(0);
    }
    const { ours, theirs } = both(['create', '-f', 'vmdk', '-o', 'hwversion=6,compat6=on', 'both.vmdk', '1M'], d);
    expect(theirs.stderr).toContain('compat6 cannot be enabled with hwversion set');
    expect(ours.status).toBe(theirs.status);
    expect(ours.stderr).toContain('compat6 cannot be enabled with hwversion set');
  });
});

describeQemu('img rebase -c on an image with extended L2 entries', () => {
  it('flattens an overlay whose holes are subclusters: whole clusters written compressed, the guest view unchanged', () => {
    const d = mkdtempSync(join(tmp.path, 'rebase-c-'));
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=128k', join(d, 'base.qcow2'), '64M']);
    qemuIo(join(d, 'base.qcow2'), 'qcow2', ['write -P 1 0 100k', 'write -P 2 1M 4k']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'top.qcow2')]);
    qemuIo(join(d, 'top.qcow2'), 'qcow2', ['write -P 6 4k 4k']);
    qemuImg(['convert', '-O', 'raw', join(d, 'top.qcow2'), join(d, 'before.raw')]);
    const r = run('img', ['rebase', '-c', '-b', '', 'top.qcow2'], { cwd: d });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(qemuImg(['check', join(d, 'top.qcow2')]).stdout).toContain('No errors were found on the image.');
    expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', join(d, 'before.raw'), join(d, 'top.qcow2')]).status).toBe(0);
    const info = JSON.parse(qemuImg(['info', '--output=json', join(d, 'top.qcow2')]).stdout) as Record<string, unknown>;
    expect(info['backing-filename']).toBeUndefined();
    expect(qemuImg(['check', join(d, 'top.qcow2')]).stdout).toMatch(/[1-9][\d.]*% compressed clusters/);
  });
});

describeQemu('img amend -o size= beside qemu-img amend', () => {
  /** A directory with full.qcow2 (64 MiB written), v2snap.qcow2 (version 2 with a snapshot) and over.qcow2 (over a longer raw file). */
  function images(): string {
    const d = mkdtempSync(join(tmp.path, 'amend-size-'));
    qemuImg(['create', '-q', '-f', 'qcow2', join(d, 'full.qcow2'), '64M']);
    qemuIo(join(d, 'full.qcow2'), 'qcow2', ['write -P 1 0 64M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', join(d, 'v2snap.qcow2'), '64M']);
    qemuImg(['snapshot', '-c', 's', join(d, 'v2snap.qcow2')]);
    qemuImg(['create', '-q', '-f', 'raw', join(d, 'long.raw'), '128M']);
    qemuIo(join(d, 'long.raw'), 'raw', ['write -P 9 64M 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'long.raw', '-F', 'raw', join(d, 'over.qcow2'), '64M']);
    return d;
  }
  const lines = [
    ['-o', 'size=10M', 'full.qcow2'],
    ['-o', 'size=20M,compat=0.10', 'full.qcow2'],
    ['-o', 'size=100M,lazy_refcounts=on', 'full.qcow2'],
    ['-o', 'size=30M,compat=1.1', 'v2snap.qcow2'],
    ['-o', 'size=30M', 'v2snap.qcow2'],
    ['-o', 'size=1000', 'full.qcow2'],
    ['-o', 'size=100M', 'over.qcow2'],
  ];
  for (const line of lines) {
    it(`amend ${line.join(' ')}`, () => {
      const ours = images();
      const theirs = images();
      const file = line[line.length - 1]!;
      const r = run('img', ['amend', ...line], { cwd: ours });
      const q = qemuImg(['amend', ...line], { cwd: theirs, allowFail: true });
      expect({ status: r.status, stdout: r.stdout }).toEqual({ status: q.status, stdout: q.stdout });
      const info = (d: string) => JSON.parse(qemuImg(['info', '--output=json', join(d, file)]).stdout) as { 'virtual-size': number; 'format-specific': { data: Record<string, unknown> } };
      expect(info(ours)['virtual-size']).toBe(info(theirs)['virtual-size']);
      expect(info(ours)['format-specific'].data.compat).toBe(info(theirs)['format-specific'].data.compat);
      expect(info(ours)['format-specific'].data['lazy-refcounts']).toBe(info(theirs)['format-specific'].data['lazy-refcounts']);
      expect(qemuImg(['check', join(ours, file)]).status).toBe(0);
      expect(qemuImg(['compare', join(ours, file), join(theirs, file)]).status).toBe(0);
    });
  }
});

describeQemu('img snapshot -a on an image with persistent bitmaps', () => {
  it('applies where qemu-img refuses ("Device has active dirty bitmaps"), and marks what the switch changed in each enabled bitmap', () => {
    const d = mkdtempSync(join(tmp.path, 'snapshot-bitmap-'));
    const file = join(d, 'vm.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '64M']);
    qemuImg(['bitmap', '--add', file, 'b0']);
    qemuIo(file, 'qcow2', ['write -P 1 0 1M']);
    qemuImg(['snapshot', '-c', 's1', file]);
    qemuImg(['bitmap', '--clear', file, 'b0']);
    qemuIo(file, 'qcow2', ['write -P 2 8M 1M']);
    const copy = join(d, 'copy.qcow2');
    qemuImg(['convert', '-O', 'qcow2', '-l', 's1', file, join(d, 's1.qcow2')]);
    copyFileSync(file, copy);
    expect(qemuImg(['snapshot', '-a', 's1', copy], { allowFail: true }).stderr).toContain('Device has active dirty bitmaps');
    const r = run('img', ['snapshot', '-a', 's1', file]);
    expect({ status: r.status, stdout: r.stdout, stderr: r.stderr }).toEqual({ status: 0, stdout: '', stderr: '' });
    expect(qemuImg(['compare', file, join(d, 's1.qcow2')]).status).toBe(0);
    expect(qemuImg(['check', file]).status).toBe(0);
    // 8M..9M was written after the snapshot and reads as zeros again: b0 must cover it (img may mark more).
    const covered = qemuDirtyBitmap(file, 'b0').some(([offset, length, dirty]) => dirty && offset <= 8 * 2 ** 20 && offset + length >= 9 * 2 ** 20);
    expect(covered).toBe(true);
  });
});

describeQemu('Ctrl-C during img resize --preallocation=full', () => {
  /** Runs img resize and sends `signal` once the file holds 64 MiB more than it did (the preallocation is under way). */
  function interruptedResize(args: string[], file: string, signal: NodeJS.Signals): Promise<{ status: number | null; stderr: string }> {
    const start = statSync(file).blocks * 512;
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [fileURLToPath(new URL('../dist/bin/img.js', import.meta.url)), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const poll = setInterval(() => {
        if (statSync(file).blocks * 512 - start > 64 * 2 ** 20) {
          clearInterval(poll);
          child.kill(signal);
        }
      }, 10);
      child.on('exit', (status) => {
        clearInterval(poll);
        resolve({ status, stderr });
      });
    });
  }

  for (const [format, signal, status] of [
    ['qcow2', 'SIGINT', 130],
    ['raw', 'SIGTERM', 143],
  ] as const) {
    it(`${format}, ${signal}: exit ${status}, the old size and data back, the image clean`, async () => {
      const d = mkdtempSync(join(tmp.path, 'resize-int-'));
      const file = join(d, `disk.${format}`);
      qemuImg(['create', '-q', '-f', format, file, '64M']);
      qemuIo(file, format, ['write -P 7 0 1M']);
      const r = await interruptedResize(['resize', '-f', format, '--preallocation=full', file, '+8G'], file, signal);
      expect(r.status).toBe(status);
      expect(r.stderr).toContain(`interrupted; ${file} keeps its old size (67108864 bytes)`);
      const info = JSON.parse(qemuImg(['info', '-f', format, '--output=json', file]).stdout) as { 'virtual-size': number };
      expect(info['virtual-size']).toBe(64 * 2 ** 20);
      if (format === 'qcow2') expect(qemuImg(['check', file]).status).toBe(0);
      expect(qemuIo(file, format, ['read -P 7 0 1M'])).not.toContain('Pattern verification failed');
    });
  }
});

/** A 8 MiB tmpfs to fill, where this process may mount one (root); its path, or undefined. */
function smallFileSystem(): string | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const dir = mkdtempSync(join(tmp.path, 'full-'));
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir]).status !== 0) return undefined;
  afterAll(() => void spawnSync('umount', [dir]));
  return dir;
}
const full = smallFileSystem();

describe.runIf(full !== undefined)('img resize --preallocation=full onto a full file system', () => {
  for (const format of ['qcow2', 'raw']) {
    it(`${format}: one error line, status 1, and the image keeps its old size and data, as qemu-img leaves it`, () => {
      const file = join(full!, `disk.${format}`);
      qemuImg(['create', '-q', '-f', format, file, '64M']);
      qemuIo(file, format, ['write -P 7 0 1M']);
      const r = run('img', ['resize', '-f', format, '--preallocation=full', file, '+32M']);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/^img resize: ERR_IMG_IO: .*no space left on device \(ENOSPC\)\n$/);
      const info = JSON.parse(qemuImg(['info', '-f', format, '--output=json', file]).stdout) as { 'virtual-size': number };
      expect(info['virtual-size']).toBe(64 * 2 ** 20);
      expect(qemuIo(file, format, ['read -P 7 0 1M'])).not.toContain('Pattern verification failed');
      // A write the full disk stopped may leave clusters allocated and unused (check's status 3), never damage.
      if (format === 'qcow2') expect([0, 3]).toContain(qemuImg(['check', file], { allowFail: true }).status);
      rmSync(file);
    });
  }
});

describeQemu('img bitmap --add -g beside qemu-img bitmap', () => {
  it('-g 0 is the default granularity, as qemu-img takes it, for every cluster size', () => {
    const d = mkdtempSync(join(tmp.path, 'bitmap-g-'));
    for (const cluster of ['4k', '64k', '2M']) {
      for (const tool of ['ours', 'theirs']) qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cluster}`, join(d, `${tool}-${cluster}.qcow2`), '64M']);
      const r = run('img', ['bitmap', '--add', '-g', '0', join(d, `ours-${cluster}.qcow2`), 'b0']);
      qemuImg(['bitmap', '--add', '-g', '0', join(d, `theirs-${cluster}.qcow2`), 'b0']);
      expect({ status: r.status, stderr: r.stderr }, cluster).toEqual({ status: 0, stderr: '' });
      expect(qemuBitmapList(join(d, `ours-${cluster}.qcow2`)), cluster).toEqual(qemuBitmapList(join(d, `theirs-${cluster}.qcow2`)));
    }
  });
});

describeQemu('img snapshot without an action, beside qemu-img snapshot', () => {
  it('opens the image for writing and changes nothing (status 0), fails on an image a running qemu holds, and refuses two actions, as qemu-img', async () => {
    const d = chain();
    const file = join(d, 'top.qcow2');
    qemuImg(['snapshot', '-c', 'kept', file]);
    const before = readFileSync(file);
    const idle = both(['snapshot', 'top.qcow2'], d);
    expect(idle.theirs.status).toBe(0);
    expect(idle.ours).toEqual({ status: 0, stdout: '', stderr: '' });
    expect(readFileSync(file).equals(before)).toBe(true);
    const holder = await holdWithQemuIo(file, { format: 'qcow2' });
    try {
      const held = both(['snapshot', 'top.qcow2'], d);
      expect(held.theirs.status).toBe(1);
      expect(held.ours.status).toBe(1);
      expect(held.ours.stderr).toContain('Failed to get "write" lock');
    } finally {
      await holder.stop();
    }
    const mixed = both(['snapshot', '-l', '-c', 'x', 'top.qcow2'], d);
    expect(mixed.theirs.status).toBe(1);
    expect(mixed.ours.status).toBe(1);
    expect(mixed.ours.stderr).toMatch(/cannot mix -l, -a, -c and -d/);
    expect(qemuImg(['snapshot', '-l', file]).stdout).not.toMatch(/\bx\b/);
  });
});
