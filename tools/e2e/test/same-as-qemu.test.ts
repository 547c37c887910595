// The same command line typed to img and to qemu-img: what a script reads
// (stdout, the exit status) must be the same. Each case here was a
// difference a user met; qemu-img's answer is asked for again on every run.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo } from '@img/testkit';
import { userShell } from './user.js';

const user = userShell('img-e2e-same-');
afterAll(() => user.cleanup());

/** Runs `args` as `img args` and as `qemu-img args` in the same directory. */
function both(args: string): { img: { status: number; stdout: string }; qemu: { status: number; stdout: string } } {
  const img = user.sh(`img ${args}`);
  const qemu = user.sh(`qemu-img ${args}`);
  return { img, qemu };
}

describeQemu('the same command line, the same stdout and status as qemu-img', () => {
  beforeAll(() => {
    qemuImg(['create', '-q', '-f', 'qcow2', user.path('base.qcow2'), '64M']);
    qemuIo(user.path('base.qcow2'), 'qcow2', ['write -P 1 0 4M']);
    qemuImg(['create', '-q', '-f', 'qcow2', user.path('empty.qcow2'), '1M']);
    qemuImg(['create', '-q', '-f', 'qcow2', user.path('overlay.qcow2'), '64M']);
    // A disabled bitmap: its "flags" list is empty.
    qemuImg(['create', '-q', '-f', 'qcow2', user.path('bitmaps.qcow2'), '64M']);
    qemuImg(['bitmap', '--add', '--disable', user.path('bitmaps.qcow2'), 'b0']);
    user.sh('truncate -s 1M a.raw && cp a.raw b.raw && printf x | dd of=b.raw bs=1 seek=1000 conv=notrunc status=none');
    user.sh('truncate -s 32M small.raw && truncate -s 64M zeros.raw && cp zeros.raw tail.raw && printf x | dd of=tail.raw bs=1 seek=$((40 << 20)) conv=notrunc status=none');
  });

  const cases = [
    // qemu-img compares sector by sector: a difference is named by its sector's first byte.
    'compare a.raw b.raw',
    // Different sizes: a warning on stdout, then the verdict on the common part and the longer tail.
    'compare small.raw zeros.raw',
    'compare small.raw tail.raw',
    'compare -s small.raw zeros.raw',
    // -q wins over -p (without -q both print qemu-img's percentage lines on stdout).
    'compare -q -p a.raw b.raw',
    // map's window (qemu-img 7.2's --start-offset and --max-length), and a window past the end.
    'map --start-offset=1M --max-length=8M --output=json base.qcow2',
    'map --start-offset=512k --max-length=1M base.qcow2',
    'map --start-offset=100M --output=json base.qcow2',
    // qemu's JSON writes an empty list over two lines ("flags": [ then ]).
    'info --output=json bitmaps.qcow2',
    // check's JSON lists the cluster figures only when they are not 0.
    'check --output=json base.qcow2',
    'check --output=json empty.qcow2',
    // create's line lists vmdk's options in qemu-img's order, with the defaults it prints.
    'create -f vmdk new.vmdk 1G',
    'create -f vmdk -o subformat=streamOptimized,adapter_type=lsilogic,hwversion=6 new.vmdk 1G',
    'create -f vmdk -b new.vmdk -F vmdk top.vmdk',
    // A backing file without its format is refused (qemu-img 7.2): create, rebase (safe and -u), convert -B.
    'create -f qcow2 -b base.qcow2 nofmt.qcow2',
    'create -f vmdk -b new.vmdk nofmt.vmdk',
    'convert -O qcow2 -B base.qcow2 a.raw nofmt.qcow2',
    'rebase -b base.qcow2 overlay.qcow2',
    'rebase -u -b base.qcow2 overlay.qcow2',
    'rebase -u -b base.qcow2 -F qcow2 overlay.qcow2',
    // create -u: the backing file is not opened (it need not exist), its format and the size are needed.
    'create -f qcow2 -u -b later.qcow2 -F qcow2 unsafe.qcow2 1G',
    'create -f qcow2 -u -b later.qcow2 nofmt.qcow2 1G',
    'create -f qcow2 -u -b later.qcow2 -F qcow2 nofmt.qcow2',
  ];
  for (const args of cases) {
    it(args, () => {
      const r = both(args);
      expect(r.img.stdout).toBe(r.qemu.stdout);
      expect(r.img.status).toBe(r.qemu.status);
    });
  }

  // The option lists are img's own (what img supports, in its words); the title, the stream and the status are qemu-img's.
  for (const args of ['create -f qcow2 -o ?', 'create -f vpc -o help', 'create -f vmdk -o help', 'convert -O vpc -o help', 'convert -O qcow2 -o ?', 'amend -f qcow2 -o help', "amend -o '?' base.qcow2"]) {
    it(`${args}: qemu-img's title line, status 0`, () => {
      const r = both(args);
      expect(r.qemu.status).toBe(0);
      expect(r.img.status).toBe(0);
      expect(r.img.stdout.split('\n')[0]).toBe(r.qemu.stdout.split('\n')[0]);
    });
  }

  it("convert takes qemu-img's I/O options (-t -T -W -m -C) and refuses bad values with qemu-img's status", () => {
    for (const args of ['-t none -T writeback -W -m 16 -C', '-t writethrough', '-t bogus', '-m 17', '-m 0']) {
      const img = user.sh(`img convert ${args} -O qcow2 a.raw io-img.qcow2`);
      const qemu = user.sh(`qemu-img convert ${args} -O qcow2 a.raw io-qemu.qcow2`);
      expect(img.status, `${args}: ${img.stderr}`).toBe(qemu.status);
      if (qemu.status === 0) expect(qemuImg(['compare', user.path('io-img.qcow2'), user.path('io-qemu.qcow2')]).status).toBe(0);
      else expect(img.stderr.split('\n')[0]).toBe(qemu.stderr.split('\n')[0]!.replace(/^qemu-img:/, 'img convert:'));
    }
  });

  it('a successful convert prints nothing, on stdout or stderr', () => {
    const img = user.sh('img convert -O qcow2 a.raw by-img.qcow2');
    const qemu = user.sh('qemu-img convert -O qcow2 a.raw by-qemu.qcow2');
    expect(qemu).toEqual({ status: 0, stdout: '', stderr: '' });
    expect(img).toEqual(qemu);
    expect(user.sh('img-convert -q raw qcow2 a.raw quiet.qcow2')).toEqual(qemu);
  });

  it('no command at all: status 1 and nothing on stdout (the usage goes to stderr)', () => {
    const r = both('');
    expect(r.qemu.status).toBe(1);
    expect(r.img.status).toBe(1);
    expect(r.img.stdout).toBe('');
    expect(user.sh('img 2>&1 >/dev/null').stdout).toMatch(/^Usage: img <command>/);
  });

  it('a refused backing file leaves no image behind', () => {
    expect(user.sh('test -e nofmt.qcow2 || test -e nofmt.vmdk').status).not.toBe(0);
  });
});
