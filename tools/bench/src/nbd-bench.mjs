/**
 * The NBD row of issue 18: `nbdcopy` reading one qcow2 (16 GiB virtual,
 * 1 GiB of data in 64 runs) from `img serve` and from `qemu-nbd`, both
 * started once and serving the same file read-only with multi-conn, copies
 * alternating. Throughput = data bytes / nbdcopy wall time; the check is
 * `qemu-img compare` of the file with img's export.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run, timed } from './proc.mjs';

/** Is nbdcopy (libnbd-bin) here, and qemu-nbd? */
export async function haveNbdTools() {
  for (const [cmd, arg] of [
    ['nbdcopy', '--version'],
    ['qemu-nbd', '--version'],
  ]) {
    const r = await run(cmd, [arg], { allowFail: true }).catch(() => ({ code: -1 }));
    if (r.code !== 0) return false;
  }
  return true;
}

/** The input: 16 GiB virtual with 64 data runs of 16 MiB (both scaled, runs at least 64 KiB). */
export function nbdLayout(scale) {
  const align = (x, a) => Math.max(a, Math.round(x / a) * a);
  const run = align(16 * 2 ** 20 * scale, 65536);
  const stride = align(256 * 2 ** 20 * scale, 65536);
  return { virtual: 64 * stride, run, stride, runs: 64, data: 64 * run };
}

async function waitForSocket(path, child) {
  for (let i = 0; i < 400 && !existsSync(path); i++) {
    if (child.exitCode !== null) throw new Error(`${child.spawnfile} exited with ${child.exitCode} before listening`);
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(path)) throw new Error(`${child.spawnfile} did not create ${path}`);
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/**
 * Runs the row: `alternate` is bench.mjs's (img first, then qemu, warm-up
 * not recorded). Returns the row with MiB/s both ways and throughputRatio =
 * img / qemu-nbd.
 */
export async function nbdRow(cfg, alternate, imgBin) {
  const layout = nbdLayout(cfg.scale);
  const file = join(cfg.dir, 'nbd.qcow2');
  await rm(file, { force: true });
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(layout.virtual)]);
  const writes = [];
  for (let i = 0; i < layout.runs; i++) writes.push('-c', `write -P ${(i % 255) + 1} ${i * layout.stride} ${layout.run}`);
  await run('qemu-io', ['-f', 'qcow2', ...writes, file]);
  await run('sync', []);
  const imgSock = join(cfg.dir, 'nbd-img.sock');
  const qemuSock = join(cfg.dir, 'nbd-qemu.sock');
  const img = spawn(process.execPath, [imgBin, 'serve', '-f', 'qcow2', '-k', imgSock, file], { stdio: 'ignore' });
  const qemu = spawn('qemu-nbd', ['-t', '-r', '-e', '4', '-f', 'qcow2', '-k', qemuSock, file], { stdio: 'ignore' });
  try {
    await waitForSocket(imgSock, img);
    await waitForSocket(qemuSock, qemu);
    const copy = (sock) => () => timed('nbdcopy', ['--connections=4', `nbd+unix:///?socket=${sock}`, 'null:']);
    const check = async () => (await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', file, `nbd+unix:///?socket=${imgSock}`], { allowFail: true })).code === 0;
    const row = await alternate(cfg, `nbdcopy --connections=4 (${(layout.data / 2 ** 20).toFixed(0)} MiB data, ${(layout.virtual / 2 ** 30).toFixed(2)} GiB virtual)`, copy(imgSock), copy(qemuSock), check);
    row.dataMiB = layout.data / 2 ** 20;
    row.virtualGiB = layout.virtual / 2 ** 30;
    row.imgMiBs = row.dataMiB / row.img.wall;
    row.qemuMiBs = row.dataMiB / row.qemu.wall;
    row.throughputRatio = row.imgMiBs / row.qemuMiBs;
    cfg.log(`  nbd: img serve ${row.imgMiBs.toFixed(0)} MiB/s, qemu-nbd ${row.qemuMiBs.toFixed(0)} MiB/s, throughput ratio ${row.throughputRatio.toFixed(2)}`);
    return row;
  } finally {
    await stop(img);
    await stop(qemu);
    if (!cfg.keep) await rm(file, { force: true });
  }
}
