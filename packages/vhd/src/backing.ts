/**
 * The maintenance capabilities `img commit` and `img rebase` use:
 * makeEmpty (deallocate every block so reads fall through to the parent)
 * and setBacking (rewrite the parent reference: locators, unicode name,
 * parent unique id and timestamp; or drop it, making the disk dynamic).
 * Called by VhdDisk with no I/O in flight and the allocator held.
 */
import { invalidArg, unsupported } from '@img/block';
import { BAT_UNUSED, batBytes } from './bat.js';
import { PARENT_LOCATOR_COUNT, emptyLocator, type ParentLocatorEntry } from './dynamic-header.js';
import { DISK_TYPE, FOOTER_SIZE } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdDisk } from './image.js';
import { openVhd } from './open.js';
import { PLATFORM_CODE, baseName, dirName, encodeLocatorData, isAbsolutePath, joinPath, pathToFileUrl, toWindowsRelative } from './parent-locator.js';
import { FORMAT, type VhdState } from './state.js';
import { ownsRegion } from './layout.js';
import { NIL_UUID } from './uuid.js';
import { writeFooters, writeHeader } from './write-metadata.js';

const CHUNK = 1024 * 1024;

/**
 * Every region of the file something owns: metadata, reserved space, the
 * blocks, and the footer at the end (at nextFree).
 */
function ownedRegions(s: VhdState): Array<{ start: number; end: number }> {
  const span = s.bitmapBytes + s.blockSize;
  const out: Array<{ start: number; end: number }> = [...s.metadata, ...(s.reserved ?? []).filter((r) => !r.what.startsWith('parent locator'))];
  for (const e of s.bat) if (e !== BAT_UNUSED) out.push({ start: e * VHD_SECTOR, end: e * VHD_SECTOR + span });
  out.push({ start: s.nextFree, end: s.nextFree + FOOTER_SIZE });
  return out;
}

/** Where the file's metadata and reserved space end (the first byte a block could use). */
function metadataEnd(s: VhdState): number {
  let end = 0;
  for (const m of [...s.metadata, ...(s.reserved ?? [])]) end = Math.max(end, m.end);
  return Math.ceil(end / VHD_SECTOR) * VHD_SECTOR;
}

/**
 * Deallocates every block: the BAT is rewritten all unused and flushed
 * first (the blocks become unreferenced: a crash leaves leaks at worst),
 * then the footer moves behind the metadata and the file is cut there.
 */
export async function makeVhdEmpty(disk: VhdDisk): Promise<void> {
  const s = disk._state;
  if (s.type === 'fixed') throw unsupported(FORMAT, s.storage.name, 'a fixed disk has no blocks to deallocate');
  const h = s.header!;
  const total = batBytes(s.bat.length);
  const unused = new Uint8Array(Math.min(CHUNK, total)).fill(0xff);
  for (let pos = 0; pos < total; pos += unused.length) {
    await s.storage.write(h.tableOffset + pos, unused.subarray(0, Math.min(unused.length, total - pos)));
  }
  await s.storage.flush();
  s.bat.fill(BAT_UNUSED);
  s.nextFree = metadataEnd(s);
  await writeFooters(s, { head: false });
  await s.storage.flush();
  await s.storage.truncate(s.nextFree + FOOTER_SIZE);
  await s.storage.flush();
}

/** The locators to record for parent `name`: W2ru for a relative name; W2ku and MacX for an absolute one (derived from the child's own path when it is absolute). */
function wantedLocators(s: VhdState, name: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const slashed = name.replace(/\\/g, '/');
  let absolute: string | undefined;
  if (isAbsolutePath(name)) absolute = name;
  else {
    out.push([PLATFORM_CODE.W2RU, toWindowsRelative(slashed)]);
    if (s.storage.name.startsWith('/')) absolute = joinPath(dirName(s.storage.name), slashed);
  }
  if (absolute) {
    out.push([PLATFORM_CODE.W2KU, absolute]);
    if (absolute.startsWith('/')) out.push([PLATFORM_CODE.MACX, pathToFileUrl(absolute)]);
  }
  return out;
}

/**
 * Rewrites the parent reference of a differencing disk. The new parent is
 * looked up through the resolver the disk was opened with (kind "parent");
 * when it opens, its unique id and timestamp are recorded too (so that the
 * child opens over it), otherwise only the names change. Locator data is
 * written into the old locators' space where it fits (zeroed first), else
 * behind the last block. `undefined` drops the parent: the disk becomes a
 * dynamic disk whose unallocated sectors read as zeros. Takes effect at
 * the next open: this open keeps reading through its current parent.
 */
export async function setVhdBacking(disk: VhdDisk, name: string | undefined, format: string | undefined): Promise<void> {
  const s = disk._state;
  const file = s.storage.name;
  if (format !== undefined && format !== 'vhd' && format !== 'vpc') {
    throw invalidArg(FORMAT, `the parent of a differencing VHD must be a VHD, not ${format}`, { field: 'backing_fmt' });
  }
  if (name !== undefined && name.length === 0) throw invalidArg(FORMAT, 'empty parent name', { field: 'backing_file' });
  if (s.type === 'fixed' || (s.type === 'dynamic' && name !== undefined)) {
    throw unsupported(FORMAT, file, `a ${s.type} disk cannot be given a parent (create a differencing disk over it instead)`);
  }
  if (s.type === 'dynamic') return;
  const h = s.header!;
  const old = h.parentLocators.map((l) => ({ ...l }));
  // Only a locator's own region is reused: one that overlaps any other structure (a damaged
  // layout; writable opens refuse those) is left alone, and its space is not counted on.
  const others = ownedRegions(s);
  const regions = old
    .map((l, i) => ({ l, m: s.metadata.find((x) => x.what === `parent locator ${i}` && x.start === l.platformDataOffset) }))
    .filter(({ l, m }) => l.platformCode !== PLATFORM_CODE.NONE && l.platformDataLength > 0 && m !== undefined && ownsRegion(m, others, m))
    .map(({ m }) => ({ start: m!.start, end: m!.end, used: false }));
  // The old locator data is zeroed so that no stale path survives.
  for (const r of regions) await s.storage.write(r.start, new Uint8Array(r.end - r.start));

  const locators: ParentLocatorEntry[] = [];
  const placed: Array<{ start: number; end: number; what: string }> = [];
  let grew = false;
  if (name !== undefined) {
    for (const [code, path] of wantedLocators(s, name)) {
      const bytes = encodeLocatorData(code, path);
      const space = Math.max(VHD_SECTOR, Math.ceil(bytes.length / VHD_SECTOR) * VHD_SECTOR);
      let region = regions.filter((r) => !r.used && r.end - r.start >= space).sort((a, b) => a.end - a.start - (b.end - b.start))[0];
      if (!region) {
        // Behind the last block, where the footer was: the footer moves behind it.
        region = { start: s.nextFree, end: s.nextFree + space, used: false };
        s.nextFree += space;
        grew = true;
      }
      region.used = true;
      await s.storage.write(region.start, bytes);
      locators.push({ platformCode: code, platformDataSpace: region.end - region.start, platformDataLength: bytes.length, reserved: 0, platformDataOffset: region.start });
      placed.push({ start: region.start, end: region.end, what: `parent locator ${locators.length - 1}` });
    }
  }
  while (locators.length < PARENT_LOCATOR_COUNT) locators.push(emptyLocator());

  let parentId = h.parentUniqueId;
  let parentTimestamp = h.parentTimestamp;
  if (name !== undefined && s.resolver) {
    try {
      const storage = await s.resolver({ name, kind: 'parent', from: s.storage, writable: false });
      const parent = await openVhd(storage, { noBacking: true, allowCoalescing: true });
      parentId = parent.uniqueId;
      parentTimestamp = parent.footer.timestamp;
      await parent.close();
    } catch {
      // Not there (yet): rebase -u records the name only.
    }
  }
  if (grew) await writeFooters(s, { head: false });
  await s.storage.flush();
  if (name === undefined) {
    // Footers first: a dynamic disk ignores the parent fields of its header.
    s.footer = { ...s.footer, diskType: DISK_TYPE.dynamic };
    s.type = 'dynamic';
    await writeFooters(s);
    await s.storage.flush();
    parentId = NIL_UUID;
    parentTimestamp = 0;
  }
  h.parentLocators = locators;
  h.parentUnicodeName = name === undefined ? '' : baseName(name.replace(/\\/g, '/'));
  h.parentUniqueId = parentId;
  h.parentTimestamp = parentTimestamp;
  await writeHeader(s);
  await s.storage.flush();
  s.metadata = [...s.metadata.filter((m) => !m.what.startsWith('parent locator')), ...placed];
  s.parentName = name;
}
