/**
 * measureQcow2: how big a qcow2 image would be, as `qemu-img measure`
 * computes it: the metadata of a fully allocated image of the size, plus
 * the clusters the source's data touches (or the whole size when
 * preallocating with falloc or full, or when a source goes over a backing
 * file, which may share nothing with it).
 */
import type { MeasureInput, MeasureResult } from '@img/block';
import { parseCreateOptions, type Qcow2CreateOptions } from './create.js';
import { luksAreaBytes } from './luks.js';
import { refcountFixedPoint } from './refcount-entry.js';

/**
 * Clusters of refcount table and blocks needed to count `clusters`
 * clusters plus themselves (qemu's fixed-point loop).
 */
export function refcountMetadataClusters(clusters: number, clusterSize: number, refcountOrder: number): number {
  const { blocks, table } = refcountFixedPoint(clusters, clusterSize, (clusterSize * 8) / 2 ** refcountOrder);
  return blocks + table;
}

/** Bytes of a fully allocated image of `size` bytes: header, L1, L2, refcounts and data. */
export function fullyAllocatedSize(size: number, clusterSize: number, refcountOrder: number, extendedL2: boolean): number {
  const aligned = Math.ceil(size / clusterSize) * clusterSize;
  const entrySize = extendedL2 ? 16 : 8;
  let meta = clusterSize; // header
  const l2Entries = Math.ceil(aligned / clusterSize / (clusterSize / entrySize)) * (clusterSize / entrySize);
  meta += l2Entries * entrySize;
  const l1Entries = Math.ceil((l2Entries * entrySize) / clusterSize / (clusterSize / 8)) * (clusterSize / 8);
  meta += l1Entries * 8;
  meta += refcountMetadataClusters((meta + aligned) / clusterSize, clusterSize, refcountOrder) * clusterSize;
  return meta + aligned;
}

/**
 * What a new qcow2 image needs (qemu-img measure -O qcow2): `input.size`
 * or a source disk, with create options (`clusterSize`, `refcountBits`,
 * `extendedL2`, `preallocation`, `backingFile`). Like qemu-img it counts
 * every cluster with `falloc` or `full`, and with a `backingFile` and a
 * source (it cannot know what that backing file shares with the source).
 */
export async function measureQcow2(input: MeasureInput): Promise<MeasureResult> {
  const size = input.source?.size ?? input.size;
  // A backing file only changes the answer (qemu-img measure takes it with any preallocation, which create refuses).
  const options = { ...(input.options ?? {}), size } as Qcow2CreateOptions;
  const backingFile = options.backingFile;
  delete options.backingFile;
  delete options.backingFormat;
  // The passphrase changes no size (qemu-img measure asks for none either).
  if (options.encryptFormat !== undefined && options.encryptPassphrase === undefined) {
    delete options.encryptKeySecret;
    options.encryptPassphrase = '';
  }
  const layout = parseCreateOptions(options);
  const cs = 2 ** layout.clusterBits;
  const virtual = Math.ceil(size / cs) * cs;
  // A LUKS image also holds its encryption header area (LUKS header and 8 slots of key material), in whole clusters.
  const luks = layout.encrypt ? Math.ceil(luksAreaBytes(layout.encrypt.luks.spec.keyBytes) / cs) * cs : 0;
  const fullyAllocated = fullyAllocatedSize(virtual, cs, layout.refcountOrder, layout.extendedL2) + luks;
  let data = 0;
  if (layout.preallocation === 'full' || layout.preallocation === 'falloc') {
    data = virtual;
  } else if (input.source && backingFile !== undefined) {
    // As qemu-img: the new backing file may share nothing with the source, so every cluster may need writing.
    data = virtual;
  } else if (input.source) {
    // Clusters that hold data anywhere in the source's chain (zeros and holes need none). Counted in whole clusters:
    // a format may answer so (a raw file of a million runs is then asked once per run of clusters, as qemu-img does).
    let counted = -1;
    for await (const e of input.source.extents({ granularity: cs })) {
      if (e.kind !== 'data') continue;
      const first = Math.max(Math.floor(e.offset / cs), counted + 1);
      const last = Math.floor((e.offset + e.length - 1) / cs);
      if (last >= first) data += (last - first + 1) * cs;
      counted = Math.max(counted, last);
    }
  }
  return { required: fullyAllocated - virtual + data, fullyAllocated };
}
