/** Writing the footer copies, the dynamic header and BAT entries of an open VHD. */
import { bytesEqual } from '@img/block';
import { serializeBat } from './bat.js';
import { serializeDynamicHeader } from './dynamic-header.js';
import { serializeFooter } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdState } from './state.js';

/**
 * Writes the footer: fixed disks at the end of the data area; dynamic and
 * differencing disks at `nextFree` (the end of the file) and, with `head`,
 * the copy at offset 0.
 */
export async function writeFooters(s: VhdState, options: { head?: boolean; tail?: boolean } = {}): Promise<void> {
  const bytes = serializeFooter(s.footer);
  if (s.type === 'fixed') {
    await s.storage.write(s.fixedFooterOffset, bytes);
    return;
  }
  if (options.tail ?? true) await s.storage.write(s.nextFree, bytes);
  if (options.head ?? true) await s.storage.write(0, bytes);
}

/** Writes the dynamic disk header at its offset. */
export async function writeHeader(s: VhdState): Promise<void> {
  if (!s.header) throw new Error('vhd: no dynamic header to write');
  await s.storage.write(s.headerOffset, serializeDynamicHeader(s.header));
}

/**
 * Writes the BAT sector that holds entry `block`, with `value` for it (the
 * in-memory BAT is not changed: the caller does that after the write).
 * Whole sectors, so that a torn write cannot split an entry.
 */
export async function writeBatEntry(s: VhdState, block: number, value: number): Promise<void> {
  if (!s.header) throw new Error('vhd: no BAT');
  const perSector = VHD_SECTOR / 4;
  const sector = Math.floor(block / perSector);
  const out = new Uint8Array(VHD_SECTOR).fill(0xff);
  const view = new DataView(out.buffer);
  for (let i = 0; i < perSector; i++) {
    const index = sector * perSector + i;
    if (index >= s.bat.length) break;
    view.setUint32(i * 4, index === block ? value : s.bat[index]!, false);
  }
  await s.storage.write(s.header.tableOffset + sector * VHD_SECTOR, out);
}

/**
 * Writes every BAT sector whose entries on disk differ from the in-memory
 * BAT (a check that cleared bad entries in memory), each once, as
 * {@link writeBatEntry} writes a sector; returns how many it wrote. One
 * write per sector, not per entry: a repair of a million bad entries took
 * 40 s one entry at a time.
 */
export async function writeChangedBatSectors(s: VhdState): Promise<number> {
  if (!s.header) throw new Error('vhd: no BAT');
  const bytes = s.bat.length * 4;
  const onDisk = new Uint8Array(bytes);
  await s.storage.readInto(s.header.tableOffset, onDisk);
  const wanted = serializeBat(s.bat, bytes);
  let written = 0;
  for (let at = 0; at < bytes; at += VHD_SECTOR) {
    const end = Math.min(bytes, at + VHD_SECTOR);
    if (bytesEqual(onDisk.subarray(at, end), wanted.subarray(at, end))) continue;
    const first = at / 4;
    await writeBatEntry(s, first, s.bat[first]!);
    written++;
  }
  return written;
}
