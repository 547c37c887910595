import { spawnSync } from 'node:child_process';
import { existsSync, linkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { describeWith, holdWithQemuIo, lockedBytes, qemuImg, QEMU_RO_LOCK_BYTES, QEMU_RW_LOCK_BYTES, tempDir, type QemuIoHolder } from '@img/testkit';
import { MemoryStorage } from '../memory-storage.js';
import { FileStorage } from './file-storage.js';
import { fileResolver, fileResolverWith } from './resolver.js';
import { lockBytes, lockPlan } from './image-lock.js';
import { seekAddon } from './seek.js';

const native = seekAddon()?.lockByte !== undefined;
const linux = process.platform === 'linux';

/** One qemu-io command on `file`, opened read-write (or read-only with `-r` in `flags`). */
function qemuIoRun(file: string, command: string, flags: string[] = []): { status: number; stderr: string } {
  const r = spawnSync('qemu-io', [...flags, '-f', 'qcow2', '-c', command, file], { encoding: 'utf8' });
  return { status: r.status ?? -1, stderr: r.stderr + r.stdout };
}

async function openError(p: Promise<FileStorage>): Promise<{ code?: string; message: string; data?: unknown }> {
  try {
    const s = await p;
    await s.close();
  } catch (e) {
    return e as { code?: string; message: string; data?: unknown };
  }
  throw new Error('expected the open to fail');
}

describe('qemu lock plans', () => {
  it('hold the bytes qemu 7.2 holds for read-write and read-only opens', () => {
    expect(lockBytes(lockPlan(true))).toEqual(QEMU_RW_LOCK_BYTES);
    expect(lockBytes(lockPlan(false))).toEqual(QEMU_RO_LOCK_BYTES);
  });
});

describeWith('qemu-io', 'image locks against qemu-io', () => {
  const tmp = tempDir();
  let image: string;
  let holder: QemuIoHolder | undefined;
  let n = 0;
  afterAll(() => tmp.cleanup());
  beforeEach(() => {
    image = join(tmp.path, `img${n++}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', image, '1M']);
  });
  afterEach(async () => {
    await holder?.stop();
    holder = undefined;
  });

  it.skipIf(!native && !linux)('(a) qemu-io holds read-write: img write and read opens fail with ERR_IMG_LOCKED, forceShare reads', async () => {
    holder = await holdWithQemuIo(image, { format: 'qcow2' });
    const w = await openError(FileStorage.open(image, { readOnly: false }));
    expect(w.code).toBe('ERR_IMG_LOCKED');
    expect(w.message).toBe(`${image}: Failed to get "write" lock. Is another process using the image [${image}]?`);
    const r = await openError(FileStorage.open(image));
    expect(r.code).toBe('ERR_IMG_LOCKED');
    expect(r.message).toContain('Failed to get shared "write" lock. Is another process using the image');
    // A failed open leaves nothing behind: only qemu-io's bytes are held.
    expect(lockedBytes(image)).toEqual(QEMU_RW_LOCK_BYTES);
    const peek = await FileStorage.open(image, { forceShare: true });
    expect(peek.lock).toBe('none');
    expect(await peek.read(0, 4)).toEqual(new Uint8Array([0x51, 0x46, 0x49, 0xfb]));
    await peek.close();
    const creating = await openError(FileStorage.create(image));
    expect(creating.code).toBe('ERR_IMG_LOCKED');
    await holder.stop();
    // create refused before it emptied the file.
    expect(qemuImg(['info', image]).stdout).toContain('file format: qcow2');
  });

  it.skipIf(!native && !linux)('(b) qemu-io holds read-only: img write open fails, read open succeeds', async () => {
    holder = await holdWithQemuIo(image, { format: 'qcow2', readOnly: true });
    const w = await openError(FileStorage.open(image, { readOnly: false }));
    expect(w.code).toBe('ERR_IMG_LOCKED');
    expect(w.message).toContain('Failed to get "write" lock');
    const r = await FileStorage.open(image);
    expect(r.lock).toBe(native ? seekAddon()!.lockStyle!(r.fd) : 'check-only');
    await r.close();
  });

  it.skipIf(!native)('(c) img holds read-write: qemu-img info and qemu-io writes fail, qemu-img info -U works', async () => {
    const s = await FileStorage.open(image, { readOnly: false });
    try {
      expect(s.lock).toBe('ofd');
      expect(lockedBytes(image)).toEqual(QEMU_RW_LOCK_BYTES);
      const info = qemuImg(['info', image], { allowFail: true });
      expect(info.status).not.toBe(0);
      expect(info.stderr).toContain('Failed to get shared "write" lock');
      expect(info.stderr).toContain(`Is another process using the image [${image}]?`);
      const write = qemuIoRun(image, 'write 0 512');
      expect(write.status).not.toBe(0);
      expect(write.stderr).toContain('Failed to get "write" lock');
      expect(qemuImg(['info', '-U', image]).stdout).toContain('file format: qcow2');
    } finally {
      await s.close();
    }
    // close() released them: qemu writes again.
    expect(lockedBytes(image)).toEqual([]);
    expect(qemuIoRun(image, 'write 0 512').status).toBe(0);
  });

  it.skipIf(!native)('(d) img holds read-only: qemu-img info works, qemu-io writes fail', async () => {
    const s = await FileStorage.open(image);
    try {
      expect(lockedBytes(image)).toEqual(QEMU_RO_LOCK_BYTES);
      expect(qemuImg(['info', image]).stdout).toContain('file format: qcow2');
      const read = qemuIoRun(image, 'read 0 512', ['-r']);
      expect(read.status, read.stderr).toBe(0);
      const write = qemuIoRun(image, 'write 0 512');
      expect(write.status).not.toBe(0);
      expect(write.stderr).toContain('Failed to get "write" lock');
    } finally {
      await s.close();
    }
  });

  it.skipIf(!native && !linux)('fileResolver locks backing files; fileResolverWith({ forceShare }) opens them as qemu-img -U', async () => {
    const base = join(tmp.path, `base${n}.qcow2`);
    qemuImg(['create', '-q', '-f', 'qcow2', base, '1M']);
    holder = await holdWithQemuIo(base, { format: 'qcow2' });
    const from = new MemoryStorage({ name: join(tmp.path, 'top.qcow2') });
    const request = { name: `base${n}.qcow2`, kind: 'backing', from, writable: false } as const;
    await expect(fileResolver(request)).rejects.toMatchObject({ code: 'ERR_IMG_LOCKED' });
    const shared = await fileResolverWith({ forceShare: true })(request);
    expect((shared as FileStorage).lock).toBe('none');
    await shared.close();
    await expect(fileResolverWith({ forceShare: true })({ ...request, writable: true })).rejects.toMatchObject({ code: 'ERR_IMG_LOCKED' });
  });

  it.skipIf(!native)('qemu-io -r reads beside an img reader, and is refused beside an img writer', async () => {
    const r = await FileStorage.open(image);
    const beside = qemuIoRun(image, 'read 0 512', ['-r']);
    await r.close();
    expect(beside.status, beside.stderr).toBe(0);
    const w = await FileStorage.open(image, { readOnly: false });
    const refused = qemuIoRun(image, 'read 0 512', ['-r']);
    await w.close();
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toContain('Failed to get shared "write" lock');
  });
});

describe('image locks inside one process', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());
  it.skipIf(!native)('(e) two writers exclude each other, a writer excludes readers, readers share', async () => {
    const path = join(tmp.path, 'two.img');
    const a = await FileStorage.create(path);
    expect(['ofd', 'posix']).toContain(a.lock);
    if (a.lock === 'posix') {
      await a.close();
      console.warn('classic (per-process) fcntl locks only: opens in one process do not see each other');
      return;
    }
    // In one process the holder is known: the conflict is the same file opened twice, not another process.
    const rw = await openError(FileStorage.open(path, { readOnly: false }));
    expect(rw).toMatchObject({ code: 'ERR_IMG_SAME_FILE', data: { file: path, actual: path, expected: 'write', heldFor: 'write' } });
    expect(rw.message).toBe(`${path}: already open for writing in this process (a FileStorage not closed yet); a second open for writing would make two writers of one image: close the other first`);
    const ro = await openError(FileStorage.open(path));
    expect(ro).toMatchObject({ code: 'ERR_IMG_SAME_FILE', data: { expected: 'read', heldFor: 'write' } });
    expect(ro.message).toBe(`${path}: already open for writing in this process (a FileStorage not closed yet); a second, read-only open would read bytes the other one changes: close the other first`);
    expect((await openError(FileStorage.create(path))).code).toBe('ERR_IMG_SAME_FILE');
    await a.close();

    const r1 = await FileStorage.open(path);
    const r2 = await FileStorage.open(path);
    const w = await openError(FileStorage.open(path, { readOnly: false }));
    expect(w.code).toBe('ERR_IMG_SAME_FILE');
    expect(w.message).toBe(`${path}: already open read-only in this process (a FileStorage not closed yet); a second open for writing would change the bytes the other one reads: close the other first`);
    // Through another name of the file (a hard link), the message names the open that holds it.
    const link = join(tmp.path, 'two-link.img');
    linkSync(path, link);
    const viaLink = await openError(FileStorage.open(link, { readOnly: false }));
    expect(viaLink).toMatchObject({ code: 'ERR_IMG_SAME_FILE', data: { file: link, actual: path } });
    expect(viaLink.message).toMatch(new RegExp(`^${link}: the same file as ${path}, already open read-only in this process`));
    await r1.close();
    // Closing one reader releases only its own locks.
    expect((await openError(FileStorage.open(path, { readOnly: false }))).code).toBe('ERR_IMG_SAME_FILE');
    await r2.close();
    const b = await FileStorage.open(path, { readOnly: false });
    await b.close();
  });

  it('lock: false takes and checks nothing, in both modes; forceShare is for read-only opens only', async () => {
    const path = join(tmp.path, 'nolock.img');
    const a = await FileStorage.create(path, { lock: false });
    expect(a.lock).toBe('none');
    if (linux) expect(lockedBytes(path)).toEqual([]);
    const held = await FileStorage.open(path, { readOnly: false });
    const b = await FileStorage.open(path, { readOnly: false, lock: false });
    expect(b.lock).toBe('none');
    await b.close();
    const e = await openError(FileStorage.open(path, { readOnly: false, forceShare: true }));
    expect(e.code).toBe('ERR_IMG_INVALID_ARG');
    await held.close();
    await a.close();
  });
});

describeWith('qemu-io', 'image locks without the native helper (/proc/locks)', () => {
  const tmp = tempDir();
  afterAll(() => tmp.cleanup());
  const dist = fileURLToPath(new URL('../../dist/node/index.js', import.meta.url));

  /** Opens `file` in a child process with IMG_NO_NATIVE=1: the code of the error, or the lock state on success. */
  function childOpen(file: string, options: Record<string, unknown>): string {
    const script = `import { FileStorage } from ${JSON.stringify(dist)};
try { const s = await FileStorage.open(${JSON.stringify(file)}, ${JSON.stringify(options)}); process.stdout.write('ok ' + s.lock); await s.close(); }
catch (e) { process.stdout.write(String(e.code) + ' ' + e.message); }`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, IMG_NO_NATIVE: '1' } });
    if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
    expect(r.stderr).toBe(''); // nothing printed per open
    return r.stdout;
  }

  it.skipIf(!linux)('(f) refuses what a qemu-io holds, as qemu would, without taking locks itself', async () => {
    expect(existsSync(dist), 'build @img/block first (dist/ is what the child process imports)').toBe(true);
    const image = join(tmp.path, 'f.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', image, '1M']);
    expect(childOpen(image, { readOnly: false })).toBe('ok check-only');

    const rw = await holdWithQemuIo(image, { format: 'qcow2' });
    try {
      expect(childOpen(image, { readOnly: false })).toBe(`ERR_IMG_LOCKED ${image}: Failed to get "write" lock. Is another process using the image [${image}]?`);
      expect(childOpen(image, {})).toMatch(/^ERR_IMG_LOCKED .*Failed to get shared "write" lock/);
      expect(childOpen(image, { forceShare: true })).toBe('ok none');
    } finally {
      await rw.stop();
    }
    const ro = await holdWithQemuIo(image, { format: 'qcow2', readOnly: true });
    try {
      expect(childOpen(image, { readOnly: false })).toMatch(/^ERR_IMG_LOCKED .*Failed to get "write" lock/);
      expect(childOpen(image, {})).toBe('ok check-only');
    } finally {
      await ro.stop();
    }
  });

  it.skipIf(!linux)("(f) opens in one process see each other through the module's table", () => {
    const image = join(tmp.path, 'f2.raw');
    writeFileSync(image, new Uint8Array(4096));
    const script = `import { FileStorage } from ${JSON.stringify(dist)};
const path = ${JSON.stringify(image)};
const out = [];
const attempt = async (options) => { try { return await FileStorage.open(path, options); } catch (e) { out.push(e.code); } };
const w = await attempt({ readOnly: false });
out.push(w.lock);
await attempt({ readOnly: false });
await attempt({});
await w.close();
const r1 = await attempt({});
const r2 = await attempt({});
await attempt({ readOnly: false });
await r1.close();
await attempt({ readOnly: false });
await r2.close();
const again = await attempt({ readOnly: false });
out.push(again.lock);
await again.close();
process.stdout.write(out.join(' '));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, IMG_NO_NATIVE: '1' } });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('check-only ERR_IMG_SAME_FILE ERR_IMG_SAME_FILE ERR_IMG_SAME_FILE ERR_IMG_SAME_FILE check-only');
  });
});
