// Conversions from and into tmpfs, where the copy loop writes a piece through a shared mapping of the output when
// the other copy thread is writing it (IMG_COPY_SHM_MAP=1: every piece it can), and grows a new qcow2 to the end of
// each batch first: the outputs must read as the input (qemu-img compare), a qcow2 must check clean and end where
// qemu-img's own output of the same input ends, and a raw output must keep the input's holes.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuImg, seededRandom, shmDir } from '@img/testkit';
import { bin } from './test/cli.js';

const MIB = 2 ** 20;
const tmpfs = shmDir() !== undefined;

describe.runIf(tmpfs)('img-convert within tmpfs (writes through a mapping of the output)', () => {
  const dir = tmpfs ? mkdtempSync('/dev/shm/img-tmpfs-convert-') : '';
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // 96 MiB virtual: random data in every other MiB, each with a 256 KiB zero stretch at an odd place, and a zero tail.
  const raw = join(dir, 'in.raw');
  const data = new Uint8Array(96 * MIB);
  if (tmpfs) {
    const rnd = seededRandom(39);
    for (let m = 0; m < 88; m += 2) {
      for (let i = m * MIB; i < (m + 1) * MIB; i += 4) data[i] = 1 + Math.floor(rnd() * 255);
      const at = m * MIB + 4096 * Math.floor(rnd() * 192);
      data.fill(0, at, at + 256 * 1024);
    }
    writeFileSync(raw, data);
    qemuImg(['convert', '-f', 'raw', '-O', 'qcow2', raw, join(dir, 'in.qcow2')]);
    qemuImg(['convert', '-f', 'raw', '-O', 'vpc', raw, join(dir, 'in.vhd')]);
  }
  const inputs = { raw: raw, qcow2: join(dir, 'in.qcow2'), vpc: join(dir, 'in.vhd') } as const;
  const ext = { raw: 'raw', qcow2: 'qcow2', vpc: 'vhd' } as const;

  it.each([
    ['qcow2', 'qcow2'],
    ['qcow2', 'raw'],
    ['raw', 'qcow2'],
    ['vpc', 'qcow2'],
    ['qcow2', 'vpc'],
  ] as const)('%s -> %s: the same bytes with every piece mapped, some, or none; qcow2 clean and as long as qemu-img makes it', (from, to) => {
    const theirs = join(dir, `qemu-${from}.${ext[to]}`);
    qemuImg(['convert', '-f', from, '-O', to, inputs[from], theirs]);
    for (const mode of ['1', '', '0']) {
      const out = join(dir, `out-${from}-${mode || 'auto'}.${ext[to]}`);
      const env: Record<string, string | undefined> = { ...process.env, IMG_COPY_SHM_MAP: mode };
      if (!mode) delete env.IMG_COPY_SHM_MAP;
      const r = spawnSync(process.execPath, [bin('img-convert'), '-O', to, inputs[from], out], { encoding: 'utf8', env });
      expect({ mode, status: r.status, stderr: r.stderr }).toEqual({ mode, status: 0, stderr: expect.any(String) as unknown });
      expect({ mode, compare: qemuImg(['compare', '-f', from, '-F', to, inputs[from], out], { allowFail: true }).status }).toEqual({ mode, compare: 0 });
      if (to === 'qcow2') {
        expect({ mode, check: qemuImg(['check', out], { allowFail: true }).status }).toEqual({ mode, check: 0 });
        expect({ mode, size: statSync(out).size }).toEqual({ mode, size: statSync(theirs).size });
      }
      // A raw output keeps the holes: blocks for the 44 data MiB less their zero stretches, and a page or so of slack each.
      if (to === 'raw') expect(statSync(out).blocks * 512).toBeLessThanOrEqual(44 * (MIB - 256 * 1024) + 44 * 8192);
      rmSync(out);
    }
  });
});
