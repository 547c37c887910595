/**
 * img sparsify: release the data of an image that holds only zeros, in
 * place (VHD: sector bits cleared, empty blocks freed; qcow2: zero clusters
 * become zero clusters or holes).
 * `img compact` then gives the space back.
 */
import { qemuJson, qemuStyleKeys } from '../info-human.js';
import { parseArgs } from '../parse-args.js';
import { parseSize } from '@img/block';
import { fileResolver } from '@img/block/node';
import { sparsifyQcow2, type Qcow2SparsifyResult } from '@img/qcow2';
import { DEFAULT_MIN_ZERO_RUN, sparsifyVhd, type VhdSparsifyResult } from '@img/vhd';
import { type Handler, common, onePath, outputMode, quietOption, quietIo } from './shared.js';
import { interruptible, openInPlace } from './compact.js';
import { bytesProgress } from '../progress.js';

/** img sparsify. */
export const sparsify: Handler = async (argv, io) => {
  const { values, positionals } = parseArgs({ command: 'sparsify', args: argv, options: { ...common, ...quietOption, p: { type: 'boolean' }, S: { type: 'string' } }, allowPositionals: true });
  io = quietIo(io, values.quiet);
  if (values.help) {
    io.stdout(
      'Usage: img sparsify [-q] [-f fmt] [-p] [-S size] [--output=human|json] <file>\n\n' +
        'Releases data that reads as zeros, in place: in a VHD, sector bits of zero runs of at least -S bytes (default 4k,\n' +
        'a multiple of 512) are cleared and blocks left empty are freed. In a differencing VHD a zero sector over parent\n' +
        'data stays. In a qcow2 image, clusters of zeros (in zero runs of at least -S bytes) become zero clusters (v3, or\n' +
        'over a backing file) or holes (v2); clusters shared with a snapshot stay. Crash-safe; img compact then returns\n' +
        'the freed space.\n\n' +
        'Example:\n  img sparsify -S 512 disk.vhd && img compact disk.vhd\n',
    );
    return 0;
  }
  const mode = outputMode(values.output);
  const path = onePath(positionals);
  const minZeroRun = values.S === undefined ? DEFAULT_MIN_ZERO_RUN : parseSize(values.S, '-S');
  const { storage, format } = await openInPlace(path, values, 'sparsify');
  let result: Qcow2SparsifyResult | VhdSparsifyResult;
  try {
    const options = { minZeroRun, resolver: fileResolver, ...(values.p && !values.quiet ? { onProgress: bytesProgress(io) } : {}) };
    result = await interruptible<Qcow2SparsifyResult | VhdSparsifyResult>('sparsify', (signal) => (format === 'qcow2' ? sparsifyQcow2(storage, { signal, ...options }) : sparsifyVhd(storage, { signal, ...options })));
  } finally {
    await storage.close();
  }
  if (mode === 'json') {
    io.stdout(qemuJson(qemuStyleKeys({ filename: path, format: format === 'vhd' ? 'vpc' : format, ...result })) + '\n');
  } else if (result.nothingToDo) {
    io.stdout(`Nothing to sparsify: ${result.nothingToDo}.\n`);
  } else if ('sectorsReleased' in result) {
    io.stdout(`Released ${result.sectorsReleased} sectors; freed ${result.blocksFreed} of ${result.blocksScanned} blocks (${result.bytesReleased} bytes for img compact to return).\n`);
  } else {
    const shared = result.clustersShared > 0 ? `; ${result.clustersShared} shared with snapshots stay` : '';
    io.stdout(`Released ${result.clustersReleased} of ${result.clustersScanned} clusters (${result.bytesReleased} bytes for img compact to return)${shared}.\n`);
  }
  return 0;
};
