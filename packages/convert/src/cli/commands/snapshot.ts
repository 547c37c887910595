/**
 * img snapshot: list, create, apply and delete internal snapshots.
 */
import { imageOpenOptions } from '../qemu-objects.js';
import { parseArgs } from '../parse-args.js';
import { isNoSpace, noSpaceExit } from '../no-space.js';
import { notFoundError, unsupported, type Disk } from '@img/block';
import { UsageError } from '../common.js';
import { qemuJsonEscapes, snapshotTable } from '../info-human.js';
import { openImageFile } from '../../node.js';
import { type Handler, common, shareOption, onePath, outputMode, quietOption, quietIo, refuseWithoutSecret } from './shared.js';
import { infoJson } from './info.js';

interface SnapshotDisk extends Disk {
  createSnapshot(name: string): Promise<unknown>;
  applySnapshot(idOrName: string): Promise<void>;
  deleteSnapshot(idOrName: string): Promise<void>;
}

/** img snapshot. */
export const snapshot: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    command: 'snapshot',
    args: argv,
    options: { ...common, ...quietOption, ...shareOption, l: { type: 'boolean' }, c: { type: 'string', multiple: true }, a: { type: 'string', multiple: true }, d: { type: 'string', multiple: true } },
    allowPositionals: true,
  });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      'Usage: img snapshot [-q] [-f fmt] (-l [-U] | -c <name> | -a <name> | -d <name>) <file>\n\n-l list, -c create, -a apply (revert to), -d delete.\nNames need not be unique (as qemu-img): -a takes an id or else the first snapshot of\nthat name, -d the first snapshot of that name.\n\nExample:\n  img snapshot -c before-upgrade disk.qcow2\n',
    );
    return 0;
  }
  const json = outputMode(values.output) === 'json';
  const path = onePath(positionals);
  // Each of -c, -a and -d may be given once, and only one of them (as qemu-img: `-c a -c b` is refused, not "b" alone).
  const ops = [...(values.l ? ['l'] : []), ...(values.c ?? []), ...(values.a ?? []), ...(values.d ?? [])];
  if (ops.length > 1) throw new UsageError('cannot mix -l, -a, -c and -d: give one of them');
  const [create] = values.c ?? [];
  const [apply] = values.a ?? [];
  const [remove] = values.d ?? [];
  if (values['force-share'] && !values.l) throw new UsageError('-U reads without locks: it goes with -l only');
  const opened = imageOpenOptions(path, values.f);
  const disk = await openImageFile(path, {
    ...opened,
    readOnly: Boolean(values.l),
    // With its chain, as qemu-img snapshot opens it: an overlay whose backing file is missing (or encrypted and given
    // no passphrase) is refused, status 1, whatever the operation.
    forceShare: values['force-share'] ?? false,
  });
  try {
    // -l too: as qemu-img snapshot, an encrypted image does not open without its passphrase.
    await refuseWithoutSecret(disk, path, opened);
    // No action: as qemu-img, the image is opened for writing (so a held lock is reported) and left as it was.
    if (ops.length === 0) return 0;
    const s = disk as Partial<SnapshotDisk>;
    if (values.l) {
      const snaps = (await disk.info?.())?.snapshots ?? [];
      if (json) {
        io.stdout(qemuJsonEscapes(JSON.stringify(infoJson(path, { format: disk.format, virtualSize: disk.size, snapshots: snaps }, 0).snapshots ?? [], null, 4)) + '\n');
      } else if (snaps.length) {
        io.stdout(['Snapshot list:', ...snapshotTable(snaps)].join('\n') + '\n');
      }
      return 0;
    }
    if (typeof s.createSnapshot !== 'function') throw unsupported(disk.format, path, 'this format has no internal snapshots');
    if (create !== undefined) {
      try {
        await s.createSnapshot.call(disk, create);
      } catch (e) {
        if (isNoSpace(e)) throw noSpaceExit(e, `${path} reads as before and has no new snapshot`);
        throw e;
      }
    }
    if (apply !== undefined) await s.applySnapshot!.call(disk, apply);
    if (remove !== undefined) {
      // qemu-img snapshot -d looks the snapshot up by name alone, the first of that name in the table (-a tries ids first).
      const target = ((await disk.info?.())?.snapshots ?? []).find((x) => x.name === remove);
      if (!target) throw notFoundError(path, `no snapshot named "${remove}" (snapshot -d takes a name, not an id)`, { format: disk.format, field: 'snapshot', actual: remove });
      await s.deleteSnapshot!.call(disk, target.id);
    }
    await disk.flush();
    return 0;
  } finally {
    await disk.close();
  }
};
