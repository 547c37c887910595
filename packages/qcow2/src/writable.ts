/**
 * Opening an image for writing: the refcounts are loaded, the overlap map
 * is built, and the writer is attached to the core.
 */
import { readRange } from './reader.js';
import { Refcounts } from './refcount.js';
import { Qcow2Writer } from './writer.js';
import { buildOverlapMap, beforeFirstWrite, writeHeader, type Qcow2Image } from './core.js';

/** Loads the refcounts and attaches a writer to an image opened for writing (again after a refcount rebuild). */
export async function attachWriter(core: Qcow2Image): Promise<void> {
  const h = core.header;
  const view = core.active;
  const overlap = await buildOverlapMap(core, view);
  core.overlap = overlap;
  const refcounts = await Refcounts.load({
    overlap,
    storage: core.storage,
    file: core.file,
    clusterSize: core.geom.clusterSize,
    refcountBits: core.geom.refcountBits,
    tableOffset: h.refcountTableOffset,
    tableClusters: h.refcountTableClusters,
    fileSize: core.fileSize,
    onTableMoved: async (offset, clusters) => {
      h.refcountTableOffset = offset;
      h.refcountTableClusters = clusters;
      await writeHeader(core);
    },
    barrier: () => core.barrier(),
  });
  core.writer = new Qcow2Writer(core, view, refcounts, {
    read: (offset, target) => readRange(core, core, view, offset, target),
    writeHeader: () => writeHeader(core),
    beforeFirstWrite: () => beforeFirstWrite(core),
    barrier: () => core.barrier(),
  });
}
