// Pipes that close early and outputs that fill up: the verdict a script
// reads from a command's status never depends on what happened to stdout,
// and a failed write to stdout is one line, never a stack.
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeQemu, qemuImg, qemuIo } from '@img/testkit';
import { expectOneLine, userShell } from './user.js';

const user = userShell('img-e2e-pipes-');
afterAll(() => user.cleanup());

/** Zeroes a qcow2's first refcount block: every allocated cluster then has refcount 0 (corruptions). */
function zeroRefcounts(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    const head = Buffer.alloc(72);
    readSync(fd, head, 0, 72, 0);
    const table = Number(head.readBigUInt64BE(48));
    const entry = Buffer.alloc(8);
    readSync(fd, entry, 0, 8, table);
    writeSync(fd, Buffer.alloc(512), 0, 512, Number(entry.readBigUInt64BE(0)));
  } finally {
    closeSync(fd);
  }
}

describeQemu('pipes and full outputs', () => {
  beforeAll(() => {
    qemuImg(['create', '-f', 'qcow2', user.path('ok.qcow2'), '64M']);
    qemuIo(user.path('ok.qcow2'), 'qcow2', ['write -P 1 0 4M', 'write -P 2 32M 4M']);
    qemuImg(['create', '-f', 'qcow2', user.path('bad.qcow2'), '64M']);
    qemuIo(user.path('bad.qcow2'), 'qcow2', ['write -P 1 0 4M']);
    zeroRefcounts(user.path('bad.qcow2'));
    qemuImg(['create', '-f', 'qcow2', user.path('other.qcow2'), '64M']);
    qemuIo(user.path('other.qcow2'), 'qcow2', ['write -P 3 0 4M']);
    // The oracle agrees about what the images are.
    expect(qemuImg(['check', user.path('bad.qcow2')], { allowFail: true }).status).toBe(2);
    expect(qemuImg(['compare', user.path('ok.qcow2'), user.path('other.qcow2')], { allowFail: true }).status).toBe(1);
  });

  it("img check | true keeps check's verdict (2: corrupt)", () => {
    const r = user.sh('img check bad.qcow2 | true; echo "status=${PIPESTATUS[0]}"');
    expect(r.stdout).toContain('status=2');
    expectOneLine(r.stderr);
  });

  it("img check --output=json | head -c 1 keeps check's verdict", () => {
    const r = user.sh('img check --output=json bad.qcow2 | head -c 1 >/dev/null; echo "status=${PIPESTATUS[0]}"');
    expect(r.stdout).toContain('status=2');
  });

  it("img compare | true keeps compare's verdict (1: different)", () => {
    const r = user.sh('img compare ok.qcow2 other.qcow2 | true; echo "status=${PIPESTATUS[0]}"');
    expect(r.stdout).toContain('status=1');
    expectOneLine(r.stderr);
  });

  it('img map | head ends quietly with status 0', () => {
    const r = user.sh('img map --output=json ok.qcow2 | head -c 10 >/dev/null; echo "status=${PIPESTATUS[0]}"');
    expect(r.stdout).toContain('status=0');
    expect(r.stderr).toBe('');
  });

  it('img info > /dev/full fails in one line, with no stack and no source', () => {
    const r = user.sh('img info ok.qcow2 > /dev/full');
    expect(r.status).not.toBe(0);
    const lines = expectOneLine(r.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^img: .*(stdout|standard output).*No space left on device/i);
  });

  it('img check > /dev/full keeps the corrupt verdict', () => {
    const r = user.sh('img check bad.qcow2 > /dev/full');
    expect(r.status).toBe(2);
    expectOneLine(r.stderr);
  });

  it('img-convert to a pipe that closes early fails without a stack', () => {
    const r = user.sh('img-convert qcow2 raw ok.qcow2 - | head -c 100 >/dev/null; echo "status=${PIPESTATUS[0]}"');
    expect(r.stdout).not.toContain('status=0');
    expectOneLine(r.stderr);
  });

  it('img-convert to stdout on /dev/full fails in one line', () => {
    const r = user.sh('img-convert qcow2 qcow2 ok.qcow2 - > /dev/full');
    expect(r.status).toBe(1);
    expect(expectOneLine(r.stderr)).toHaveLength(1);
  });

  it('a container piped in as raw is refused (head: at once; footer: at the end), and no output is left', () => {
    qemuImg(['create', '-f', 'vpc', '-o', 'subformat=fixed', user.path('fixed.vhd'), '8M']);
    for (const [cmd, what] of [
      ['cat ok.qcow2 | img-convert --untrusted raw raw - piped.raw', /qcow2 image/],
      ['cat ok.qcow2 | img-convert raw qcow2 - piped.raw', /qcow2 image/],
      ['cat fixed.vhd | img-convert raw raw - piped.raw', /VHD image/],
    ] as const) {
      const r = user.sh(cmd);
      expect(r.status, cmd).toBe(1);
      expect(expectOneLine(r.stderr)[0], cmd).toMatch(/ERR_IMG_UNSAFE: raw: standard input: the bytes are /);
      expect(r.stderr).toMatch(what);
      expect(user.sh('test -e piped.raw').status, cmd).not.toBe(0);
    }
    expect(user.sh('cat fixed.vhd | img-convert --force-format raw raw - piped.raw').status).toBe(0);
  });
});
