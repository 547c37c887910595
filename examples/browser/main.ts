// The example page: the user picks an image; it is opened through BlobStorage (read in place, never uploaded),
// probed by the formats' own signatures, described, and its allocation drawn from metadata alone.
import { BlobStorage, FormatRegistry, formatSize, rawDriver, type Disk } from '@img/block';
import { qcow2Driver } from '@img/qcow2';
import { vhdDriver } from '@img/vhd';

const registry = new FormatRegistry([rawDriver, qcow2Driver, vhdDriver]);
const COLORS = { data: '#2b6cb0', zero: '#cbd5e0', hole: '#ffffff' } as const;

/** Opens a picked file with the format its bytes say it is (raw when none claims it). */
async function openPicked(file: File): Promise<Disk> {
  const storage = new BlobStorage(file);
  const head = await storage.read(0, 64 * 1024);
  const tail = await storage.read(Math.max(0, file.size - 512), 512);
  const format = registry.probe(head, file.size, tail)[0]?.format ?? 'raw';
  // A browser page has no other files: an image that names a backing file is shown alone.
  return registry.require(format).open(storage, { readOnly: true, noBacking: true });
}

/** Draws the extents on the canvas: the disk's bytes in reading order, row by row. */
async function drawMap(disk: Disk, canvas: HTMLCanvasElement): Promise<{ cell: number; counts: Record<string, number> }> {
  const ctx = canvas.getContext('2d')!;
  const cells = canvas.width * canvas.height;
  const cell = Math.max(512, Math.ceil(disk.size / cells / 512) * 512);
  ctx.fillStyle = '#f7fafc';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const counts: Record<string, number> = { data: 0, zero: 0, hole: 0 };
  // Each cell shows its "most allocated" kind: data over zeros over holes.
  const rank = { hole: 0, zero: 1, data: 2 } as const;
  const kinds = new Uint8Array(Math.ceil(disk.size / cell));
  for await (const e of disk.extents()) {
    for (let c = Math.floor(e.offset / cell); c < Math.ceil((e.offset + e.length) / cell) && c < kinds.length; c++) {
      kinds[c] = Math.max(kinds[c]!, rank[e.kind]);
    }
  }
  const names = ['hole', 'zero', 'data'] as const;
  kinds.forEach((k, c) => {
    const kind = names[k]!;
    counts[kind] = (counts[kind] ?? 0) + 1;
    ctx.fillStyle = COLORS[kind];
    ctx.fillRect(c % canvas.width, Math.floor(c / canvas.width), 1, 1);
  });
  return { cell, counts };
}

async function show(file: File): Promise<void> {
  const info = document.getElementById('info')!;
  info.textContent = `Reading ${file.name}...`;
  try {
    const disk = await openPicked(file);
    try {
      const details = (await disk.info?.()) ?? { format: disk.format, virtualSize: disk.size };
      const lines = [`image: ${file.name}`, `file format: ${disk.format}`, `virtual size: ${formatSize(disk.size)} (${disk.size} bytes)`, `file size: ${formatSize(file.size)}`];
      if (details.clusterSize !== undefined) lines.push(`cluster_size: ${details.clusterSize}`);
      if (details.backingFile !== undefined) lines.push(`backing file: ${details.backingFile} (not opened in a page)`);
      for (const s of details.snapshots ?? []) lines.push(`snapshot: ${s.id} ${s.name}`);
      const map = await drawMap(disk, document.getElementById('map') as HTMLCanvasElement);
      document.getElementById('cell')!.textContent = formatSize(map.cell);
      lines.push(`map cells: ${map.counts.data} data, ${map.counts.zero} zeros, ${map.counts.hole} not allocated`);
      info.textContent = lines.join('\n');
    } finally {
      await disk.close();
    }
  } catch (e) {
    info.textContent = `${file.name}: ${e instanceof Error ? e.message : String(e)}`;
  }
  document.body.dataset.shown = file.name;
}

document.getElementById('file')!.addEventListener('change', (event) => {
  const file = (event.target as HTMLInputElement).files?.[0];
  if (file) void show(file);
});
document.body.dataset.ready = 'true';
