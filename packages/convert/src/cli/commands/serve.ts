/**
 * img serve: export an image over NBD until interrupted, as qemu-nbd
 * --persistent does: read-only unless -w, on a Unix socket (-k) or TCP
 * (-p, -b; 127.0.0.1:10809 by default).
 */
import { imageOpenOptions } from '../qemu-objects.js';
import { parseArgs } from '../parse-args.js';
import { parseSize, type Disk } from '@img/block';
import { FileStorage } from '@img/block/node';
import { serveNbd, type NbdDirtyBitmap, type NbdExport } from '@img/nbd';
import { readQcow2DirtyBitmap } from '@img/qcow2';
import { UsageError } from '../common.js';
import { openDiskSnapshot, openImageFile } from '../../node.js';
import { assertNotRead, filesOf, identityOfPath } from '../../node/same-file.js';
import { fileHoleStorages, mapExtents } from '../file-holes.js';
import { type Handler, commonNoOutput, onePath, shareOption } from './shared.js';

const SERVE_HELP = `Usage: img serve [-f fmt] [-w] [-k socket | -p port [-b address]] [-x name] [-l snapshot] [-B bitmap]... [-e clients] <file>

Exports the image over NBD until interrupted (Ctrl-C, SIGTERM), to any number of clients in turn or at
once, as qemu-nbd --persistent does. When interrupted, it answers the requests in flight (for at most a
second), closes every client connection, flushes and closes the image, and exits 0. Read-only unless -w. Block status answers base:allocation,
qemu:allocation-depth and, with -B, qemu:dirty-bitmap:NAME. The URI to give clients is printed on stderr.

  -k, --socket <path>      listen on a Unix socket
  -p, --port <port>        listen on TCP (default 10809)
  -b, --bind <address>     TCP address (default 127.0.0.1)
  -x, --export-name <name> the export's name (default "")
  -w, --writable           accept writes (the image is opened read-write and locked)
  -l, --snapshot <name>    export an internal snapshot (read-only)
  -B, --bitmap <name>      offer a qcow2 persistent bitmap as qemu:dirty-bitmap:<name> (read-only
                           exports; the bits are read once, when the server starts; repeatable)
  -e, --shared <n>         most clients at once (default 16); more wait for a slot. With 1, the export
                           does not advertise multi-conn
  --idle-timeout <secs>    drop a client silent for this long (default: never)
  -U, --force-share        open a read-only export without image locks

Examples:
  img serve -k /tmp/vm.sock vm.qcow2 &
  nbdinfo --map 'nbd+unix:///?socket=/tmp/vm.sock'
  img serve -B b0 -k /tmp/vm.sock vm.qcow2 &
  nbdinfo --map=qemu:dirty-bitmap:b0 'nbd+unix:///?socket=/tmp/vm.sock'
  qemu-img convert -O raw 'nbd+unix:///?socket=/tmp/vm.sock' vm.raw
`;

/** How long clients connected at Ctrl-C or SIGTERM get for their requests in flight (qemu-nbd exits at once). */
const SHUTDOWN_GRACE_MS = 1000;

/** The NBD URI of an address, as nbdinfo and qemu-img take it. */
export function nbdUri(address: { socket: string } | { host: string; port: number }, name: string): string {
  const path = encodeURIComponent(name).replace(/%2F/g, '/');
  if ('socket' in address) return `nbd+unix:///${path}?socket=${address.socket}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/${path}`;
}

/** img serve. */
export const serve: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    command: 'serve',
    args: argv,
    options: {
      ...commonNoOutput,
      ...shareOption,
      socket: { type: 'string', short: 'k' },
      port: { type: 'string', short: 'p' },
      bind: { type: 'string', short: 'b' },
      'export-name': { type: 'string', short: 'x' },
      writable: { type: 'boolean', short: 'w' },
      snapshot: { type: 'string', short: 'l' },
      shared: { type: 'string', short: 'e' },
      'idle-timeout': { type: 'string' },
      bitmap: { type: 'string', short: 'B', multiple: true },
    },
    allowPositionals: true,
  });
  if (values.help) {
    io.stdout(SERVE_HELP);
    return 0;
  }
  const path = onePath(positionals);
  if (values.socket !== undefined && (values.port !== undefined || values.bind !== undefined)) throw new UsageError('-k (a Unix socket) and -p/-b (TCP) exclude each other');
  if (values.writable && values.snapshot !== undefined) throw new UsageError('a snapshot is exported read-only: -l and -w exclude each other');
  if (values.writable && values['force-share']) throw new UsageError('-U reads without locks: it cannot go with -w');
  const bitmapNames = values.bitmap ?? [];
  if (values.writable && bitmapNames.length) throw new UsageError('-B exports a bitmap as it is when the server starts: it goes with read-only exports, not -w');
  if (values.snapshot !== undefined && bitmapNames.length) throw new UsageError("-B offers the image's bitmaps, which track the image and not a snapshot: -l and -B exclude each other");
  const port = values.port === undefined ? undefined : Number(values.port);
  if (port !== undefined && (!Number.isInteger(port) || port < 0 || port > 65535)) throw new UsageError(`-p takes a port number (0-65535), not "${values.port}"`);
  const shared = values.shared === undefined ? 16 : parseSize(values.shared, '-e');
  if (shared < 1) throw new UsageError('-e takes at least 1');
  const idle = values['idle-timeout'] === undefined ? undefined : Number(values['idle-timeout']);
  if (idle !== undefined && (!Number.isFinite(idle) || idle <= 0)) throw new UsageError(`--idle-timeout takes a number of seconds above 0, not "${values['idle-timeout']}"`);
  const disk = await openImageFile(path, {
    ...imageOpenOptions(path, values.f),
    readOnly: !values.writable,
    untrusted: values.untrusted ?? false,
    forceFormat: values['force-format'] ?? false,
    forceShare: values['force-share'] ?? false,
  });
  let exported: Disk = disk;
  let closeHoleFiles = async () => {};
  try {
    // The socket replaces what is at its path: never a file of the chain served (-k typed before the image's name).
    if (values.socket !== undefined) assertNotRead(identityOfPath(values.socket), filesOf(disk), 'socket');
    if (values.snapshot !== undefined) exported = await openDiskSnapshot(disk, values.snapshot);
    const bitmaps: NbdDirtyBitmap[] = [];
    if (bitmapNames.length) {
      if (disk.format !== 'qcow2') throw new UsageError(`-B needs a qcow2 image (persistent bitmaps); ${path} is ${disk.format}`);
      const storage = await FileStorage.open(path, { readOnly: true, forceShare: true });
      try {
        for (const b of bitmapNames) bitmaps.push(await readQcow2DirtyBitmap(storage, b, path));
      } finally {
        await storage.close();
      }
    }
    const name = values['export-name'] ?? '';
    // As qemu-nbd: where qemu asks the file below the format (a qcow2 preallocated with metadata, a fixed VHD, a flat
    // VMDK extent), data over holes of that file is answered as data that reads as zeros (NBD_STATE_ZERO).
    let allocation: NbdExport['allocation'];
    if (exported === disk) {
      const holes = await fileHoleStorages(disk);
      closeHoleFiles = holes.close;
      if (holes.storages.size > 0) allocation = (offset, length) => mapExtents(disk, holes.storages, { offset, length });
    }
    const server = await serveNbd([{ name, disk: exported, writable: values.writable ?? false, description: path, bitmaps, ...(allocation ? { allocation } : {}) }], {
      ...(values.socket !== undefined ? { socket: values.socket } : { host: values.bind ?? '127.0.0.1', port: port ?? 10809 }),
      maxConnections: shared,
      ...(idle !== undefined ? { idleTimeoutMs: idle * 1000 } : {}),
      onConnectionError: (e) => io.stderr(`img serve: a client connection ended: ${e.message}\n`),
    });
    io.stderr(`img serve: serving ${path} (${values.writable ? 'read-write' : 'read-only'}) at ${nbdUri(server.address, name)}\n`);
    // The first signal closes the server, the next ones cut its grace short: each keeps the flush and close below
    // (default handling of a second Ctrl-C would kill the process and skip them).
    let signalled!: () => void;
    const stop = new Promise<void>((resolve) => (signalled = resolve));
    let signals = 0;
    const onSignal = () => {
      if (++signals === 1) signalled();
      else void server.close({ graceMs: 0 });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      await stop;
      // Requests in flight get a second to be answered; clients that keep their connections open are then cut off.
      await server.close({ graceMs: SHUTDOWN_GRACE_MS });
      if (values.writable) await exported.flush();
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  } finally {
    await closeHoleFiles();
    if (exported !== disk) await exported.close();
    await disk.close();
  }
  return 0;
};
