/**
 * img commit: write an overlay's data into its backing file.
 */
import { parseArgs } from 'node:util';
import { progressPrinter } from '../common.js';
import { openImageFile } from '../../node.js';
import { commitDisk } from '../../maintain.js';
import { type Handler, common, onePath, quietOption, quietIo } from './shared.js';

/** img commit. */
export const commit: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ args: argv, options: { ...common, ...quietOption, d: { type: 'boolean' }, p: { type: 'boolean' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout("Usage: img commit [-q] [-f fmt] [-d] [-p] <file>\n\nWrites the image's data into its backing file. -d keeps the data in the image (by default it is emptied).\n\nExample:\n  img commit overlay.qcow2\n");
    return 0;
  }
  const path = onePath(positionals);
  const disk = await openImageFile(path, { ...(values.f !== undefined ? { format: values.f } : {}), readOnly: false, backingWritable: true });
  try {
    await commitDisk(disk, { keepTop: values.d ?? false, ...(values.p ? { onProgress: progressPrinter(io, false) } : {}) });
  } finally {
    await disk.close();
  }
  io.stdout('Image committed.\n');
  return 0;
};
