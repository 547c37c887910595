/**
 * Opening an image for writing: the overlap map is built, the refcounts
 * are loaded, and the allocator, cluster map and scheduler are put
 * together on the core.
 */
import { Refcounts } from './refcount.js';
import { Allocator } from './allocator.js';
import { ClusterMap } from './cluster-map.js';
import { Scheduler } from './scheduler.js';
import { writeHeader, type Qcow2Image } from './core.js';
import { buildOverlapMap } from './image-overlap.js';

/**
 * Loads the refcounts and attaches the writable parts to an image opened
 * for writing (again after a refcount rebuild). `forCheck`: opened by
 * check, which may repair what other writable opens refuse.
 */
export async function attachWriter(core: Qcow2Image, forCheck = false): Promise<void> {
  const h = core.header;
  const overlap = await buildOverlapMap(core, core.active);
  core.attachWritable(overlap);
  const scheduler = new Scheduler(core.storage, core.dataFile, core.geom.l2Coverage, {
    get done() {
      return core.firstWriteDone;
    },
    wait: () => core.beforeFirstWrite(),
  });
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
      core.setHeader({ refcountTableOffset: offset, refcountTableClusters: clusters });
      await writeHeader(core);
    },
    barrier: () => scheduler.barrier(),
    forCheck,
  });
  const allocator = new Allocator(core, refcounts);
  core.attachWritable(overlap, { allocator, map: new ClusterMap(core, core.active, allocator, scheduler), scheduler });
}
