/**
 * img rebase: change an image's backing file (safe or -u).
 */
import { parseArgs } from 'node:util';
import type { Disk } from '@img/block';
import { resolveRelative } from '@img/block/node';
import { UsageError } from '../common.js';
import { defaultRegistry } from '../../formats.js';
import { openImageFile } from '../../node.js';
import { assertNotRead, filesOf, identityOfPath, identityOfStorage } from '../../node/same-file.js';
import { rebaseDisk } from '../../maintain.js';
import { type Handler, common, onePath, quietOption, quietIo } from './shared.js';

/** img rebase. */
export const rebase: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ...common, ...quietOption, b: { type: 'string' }, F: { type: 'string' }, u: { type: 'boolean' } },
    allowPositionals: true,
  });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      'Usage: img rebase [-q] [-f fmt] [-u] -b <backing> [-F fmt] <file>\n\nChanges the backing file. Safe mode (default) copies whatever would change into the image first;\n-u only rewrites the name. -b "" removes the backing file.\n\nExample:\n  img rebase -b new-base.qcow2 -F qcow2 overlay.qcow2\n',
    );
    return 0;
  }
  const path = onePath(positionals);
  if (values.b === undefined) throw new UsageError('expected -b <backing> (use -b "" to remove the backing file)');
  const registry = defaultRegistry();
  const name = values.b === '' ? undefined : values.b;
  const disk = await openImageFile(path, { ...(values.f !== undefined ? { format: values.f } : {}), readOnly: false, registry, noBacking: values.u ?? false });
  let next: Disk | undefined;
  try {
    if (name !== undefined && !values.u) {
      next = await openImageFile(resolveRelative({ name, from: disk.storage }), { ...(values.F !== undefined ? { format: values.F } : {}), registry });
      assertNotRead(identityOfStorage(disk.storage), filesOf(next), 'image');
    } else if (name !== undefined) {
      // Unsafe: the new backing file is not opened, but naming the image itself would make a cycle.
      const named = identityOfPath(resolveRelative({ name, from: disk.storage }));
      if (named) assertNotRead(identityOfStorage(disk.storage), [named], 'image');
    }
    await rebaseDisk(disk, next, name, values.F ?? next?.format, { unsafe: values.u ?? false });
  } finally {
    await next?.close();
    await disk.close();
  }
  return 0;
};
