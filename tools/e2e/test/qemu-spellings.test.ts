// qemu-img 10.1's option spellings beside 7.2's, as a user types them: each
// new spelling through the bins must do what the 7.2 spelling does in the
// installed qemu-img (the oracle: same bytes, same output, same status),
// and a misspelling is one line and status 1.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo } from '@img/testkit';
import { expectOneLine, userShell } from './user.js';

const user = userShell('img-e2e-spellings-');
afterAll(() => user.cleanup());

/** qemu-img's guest view of two images is the same (compare exit 0). */
function sameGuest(a: string, b: string): boolean {
  return qemuImg(['compare', '-U', user.path(a), user.path(b)], { allowFail: true }).status === 0;
}

function infoOf(name: string): Record<string, unknown> {
  const info = JSON.parse(qemuImg(['info', '-U', '--output=json', user.path(name)]).stdout) as Record<string, unknown>;
  delete info.filename;
  delete info['actual-size'];
  delete info['dirty-flag'];
  return info;
}

describeQemu('qemu-img 10.1 spellings through the bins, judged by qemu-img 7.2', () => {
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'qcow2', user.path('base.qcow2'), '16M']);
    qemuIo(user.path('base.qcow2'), 'qcow2', ['write -P 1 0 4M', 'write -P 7 12M 1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', user.path('mid.qcow2')]);
    qemuIo(user.path('mid.qcow2'), 'qcow2', ['write -P 2 4M 4M']);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', user.path('top.qcow2')]);
    qemuIo(user.path('top.qcow2'), 'qcow2', ['write -P 3 8M 2M', 'write -z 12M 64k']);
    qemuImg(['convert', '-O', 'raw', user.path('top.qcow2'), user.path('full.raw')]);
  });

  it('convert --source-format --target-format --target-format-options --sparse-size = qemu-img convert -f -O -o -S', () => {
    const ours = user.sh('img convert --source-format qcow2 --target-format qcow2 --target-format-options cluster_size=4k --sparse-size 8k -q top.qcow2 a.qcow2');
    expect(ours.stderr).toBe('');
    expect(ours.status).toBe(0);
    qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', '-o', 'cluster_size=4k', '-S', '8k', user.path('top.qcow2'), user.path('b.qcow2')]);
    expect(sameGuest('a.qcow2', 'b.qcow2')).toBe(true);
    expect(infoOf('a.qcow2')['cluster-size']).toBe(infoOf('b.qcow2')['cluster-size']);
  });

  it('convert -b/--backing (10.1) and -B (7.2) with --backing-format = qemu-img convert -B -F', () => {
    qemuImg(['convert', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', user.path('full.raw'), user.path('ov-qemu.qcow2')]);
    for (const spelling of ['-b base.qcow2 -F qcow2', '--backing base.qcow2 --backing-format qcow2', '--backing=base.qcow2 --backing-format=qcow2', '-B base.qcow2 -F qcow2']) {
      const r = user.sh(`rm -f ov.qcow2 && img convert -q -O qcow2 ${spelling} full.raw ov.qcow2`);
      expect(r.status, spelling).toBe(0);
      expect(sameGuest('ov.qcow2', 'ov-qemu.qcow2'), spelling).toBe(true);
      const info = infoOf('ov.qcow2');
      expect(info['backing-filename'], spelling).toBe('base.qcow2');
      expect(info['backing-filename-format'], spelling).toBe('qcow2');
    }
    const both = user.sh('img convert -O qcow2 -B base.qcow2 --backing other.qcow2 full.raw x.qcow2');
    expect(both.status).toBe(1);
    expect(expectOneLine(both.stderr)[0]).toBe('img convert: -B and -b (--backing) are the same option: give one');
  });

  it('convert --no-create --target-is-zero = qemu-img convert -n --target-is-zero; --target-is-zero alone is refused as qemu-img refuses it', () => {
    qemuImg(['create', '-q', '-f', 'raw', user.path('t1.raw'), '16M']);
    qemuImg(['create', '-q', '-f', 'raw', user.path('t2.raw'), '16M']);
    expect(user.sh('img convert --no-create --target-is-zero -O raw top.qcow2 t1.raw').status).toBe(0);
    expect(qemuImg(['convert', '-n', '--target-is-zero', '-O', 'raw', user.path('top.qcow2'), user.path('t2.raw')]).status).toBe(0);
    expect(user.sh('cmp t1.raw t2.raw && cmp t1.raw full.raw').status).toBe(0);
    const alone = user.sh('img convert --target-is-zero -O raw top.qcow2 t3.raw');
    const qemu = qemuImg(['convert', '--target-is-zero', '-O', 'raw', user.path('top.qcow2'), user.path('t3.raw')], { allowFail: true });
    expect(alone.status).toBe(qemu.status);
    expect(expectOneLine(alone.stderr)[0]).toBe('img convert: --target-is-zero requires use of -n flag');
    expect(qemu.stderr).toContain('--target-is-zero requires use of -n flag');
  });

  it('convert --salvage, --progress, --quiet, --snapshot, --compress are accepted', () => {
    const r = user.sh('img convert --salvage --compress --quiet -O qcow2 top.qcow2 c.qcow2 && img convert --progress -O raw c.qcow2 c.raw 2>/dev/null && cmp c.raw full.raw');
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
  });

  it('create --format --options --backing -B/--backing-format = qemu-img create -f -o -b -F (same Formatting line, same image)', () => {
    const q = qemuImg(['create', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', 'cq.qcow2'], { cwd: user.dir });
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', 'cq-qemu.qcow2'], { cwd: user.dir });
    for (const spelling of ['--format qcow2 --options cluster_size=4k --backing base.qcow2 -B qcow2', '-f qcow2 -o cluster_size=4k -b base.qcow2 --backing-format=qcow2']) {
      const r = user.sh(`img create ${spelling} cq.qcow2`);
      expect(r.status, spelling).toBe(0);
      expect(r.stdout, spelling).toBe(q.stdout);
      expect(infoOf('cq.qcow2'), spelling).toEqual(infoOf('cq-qemu.qcow2'));
    }
  });

  it('info --format, check --format, compare --a-format --b-format, map --format: the same output and status as the 7.2 letters in qemu-img', () => {
    const pairs: Array<[string, string[]]> = [
      ['img info --format qcow2 top.qcow2', ['info', '-f', 'qcow2', 'top.qcow2']],
      ['img info --format=qcow2 --backing-chain top.qcow2', ['info', '-f', 'qcow2', '--backing-chain', 'top.qcow2']],
      ['img check --format qcow2 base.qcow2', ['check', '-f', 'qcow2', 'base.qcow2']],
      ['img compare --a-format qcow2 --b-format raw top.qcow2 full.raw', ['compare', '-f', 'qcow2', '-F', 'raw', 'top.qcow2', 'full.raw']],
      ['img compare --a-format=qcow2 --b-format=qcow2 top.qcow2 mid.qcow2', ['compare', '-f', 'qcow2', '-F', 'qcow2', 'top.qcow2', 'mid.qcow2']],
      ['img map --format qcow2 --output=json top.qcow2', ['map', '-f', 'qcow2', '--output=json', 'top.qcow2']],
    ];
    for (const [ours, theirs] of pairs) {
      const r = user.sh(ours);
      const q = qemuImg(theirs, { allowFail: true, cwd: user.dir });
      expect(r.status, ours).toBe(q.status);
      expect(r.stdout, ours).toBe(q.stdout);
    }
  });

  it('rebase --backing "" --format, commit --base: the same images as qemu-img rebase -b "" and commit -b', () => {
    user.sh('for n in base mid top; do cp $n.qcow2 q-$n.qcow2; done');
    qemuImg(['rebase', '-q', '-u', '-b', 'q-base.qcow2', '-F', 'qcow2', user.path('q-mid.qcow2')]);
    qemuImg(['rebase', '-q', '-u', '-b', 'q-mid.qcow2', '-F', 'qcow2', user.path('q-top.qcow2')]);
    user.sh('for n in base mid top; do cp q-$n.qcow2 o-$n.qcow2; done');
    qemuImg(['rebase', '-q', '-u', '-b', 'o-base.qcow2', '-F', 'qcow2', user.path('o-mid.qcow2')]);
    qemuImg(['rebase', '-q', '-u', '-b', 'o-mid.qcow2', '-F', 'qcow2', user.path('o-top.qcow2')]);
    expect(qemuImg(['commit', '-b', 'q-base.qcow2', user.path('q-top.qcow2')]).stdout).toBe('Image committed.\n');
    const c = user.sh('img commit --base o-base.qcow2 o-top.qcow2');
    expect(c.stdout).toBe('Image committed.\n');
    expect(c.status).toBe(0);
    for (const n of ['base', 'mid', 'top']) expect(sameGuest(`o-${n}.qcow2`, `q-${n}.qcow2`), n).toBe(true);
    qemuImg(['rebase', '-b', '', '-f', 'qcow2', user.path('q-top.qcow2')]);
    const r = user.sh("img rebase --backing '' --format qcow2 o-top.qcow2");
    expect(r.status).toBe(0);
    expect(sameGuest('o-top.qcow2', 'q-top.qcow2')).toBe(true);
    expect(infoOf('o-top.qcow2')['backing-filename']).toBeUndefined();
  });

  it('snapshot --create / --list = qemu-img snapshot -c / -l', () => {
    user.sh('cp base.qcow2 snap.qcow2');
    expect(user.sh('img snapshot --create s1 snap.qcow2').status).toBe(0);
    expect(qemuImg(['snapshot', '-l', user.path('snap.qcow2')]).stdout).toMatch(/\n1\s+s1\s/);
    expect(user.sh('img snapshot --list snap.qcow2').stdout.split('\n').slice(0, 2)).toEqual(
      qemuImg(['snapshot', '-l', user.path('snap.qcow2')])
        .stdout.split('\n')
        .slice(0, 2),
    );
  });

  const typos: Array<[string, string]> = [
    ['img convert --source-fmt qcow2 top.qcow2 x.raw', "img convert: Unknown option '--source-fmt'"],
    ['img convert --backing-fromat qcow2 -b base.qcow2 top.qcow2 x.qcow2', "img convert: Unknown option '--backing-fromat'"],
    ['img create --backing-fromat qcow2 -b base.qcow2 x.qcow2', "img create: Unknown option '--backing-fromat'"],
    ['img commit --bse base.qcow2 top.qcow2', "img commit: Unknown option '--bse'"],
    ['img rebase --compresss -b "" top.qcow2', "img rebase: Unknown option '--compresss'"],
    ['img info --fo qcow2 top.qcow2', "img info: option '--fo' is ambiguous; possibilities: '--force-format' '--force-share' '--format'"],
    ['img info --formt qcow2 top.qcow2', "img info: Unknown option '--formt'"],
    ['img convert --object tls-creds-x509,id=t0 top.qcow2 x.raw', 'img convert: --object tls-creds-x509: img takes secret objects only (the passphrase of an encrypted image)'],
    [
      'img convert --image-opts driver=qcow2,file.filename=top.qcow2,cache.direct=on x.raw',
      'img convert: --image-opts driver=qcow2,file.filename=top.qcow2,cache.direct=on: img reads driver, file.driver (file or nbd), file.filename, file.server.*, file.export and the key-secret options, not "cache.direct"',
    ],
    ['img convert --object secret,id=s0,data=x --image-opts driver=qcow2,file.filename=top.qcow2,encrypt.key-secret=s1 x.raw', "img convert: No secret with id 's1'"],
  ];
  for (const [cmd, first] of typos) {
    it(`${cmd}: status 1, "${first}"`, () => {
      const r = user.sh(cmd);
      expect(r.status).toBe(1);
      const lines = expectOneLine(r.stderr);
      expect(lines[0]).toBe(first);
      expect(lines.length).toBeLessThanOrEqual(2);
      expect(user.sh('test ! -e x.raw && test ! -e x.qcow2').status).toBe(0);
    });
  }
});
