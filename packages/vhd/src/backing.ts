/**
 * The maintenance capabilities `img commit` and `img rebase` use:
 * makeEmpty (deallocate every block so reads fall through to the parent)
 * and setBacking (rewrite the parent reference: locators, unicode name,
 * parent unique id and timestamp; or drop it, making the disk dynamic).
 * Each runs alone (no I/O in flight) with the allocator held.
 */
import { invalidArg, unsupported } from '@img/block';
import { BAT_UNUSED, batBytes } from './bat.js';
import { PARENT_LOCATOR_COUNT, emptyLocator, type ParentLocatorEntry } from './dynamic-header.js';
import { DISK_TYPE, FOOTER_SIZE } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import type { VhdImage } from './image.js';
import { readVhdLayout } from './read-layout.js';
import { PLATFORM_CODE, baseName, dirName, encodeLocatorData, isAbsolutePath, joinPath, pathToFileUrl, toWindowsRelative } from './parent-locator.js';
import { FORMAT, type VhdState } from './state.js';
import { regionsOverlap } from './layout.js';
import { NIL_UUID } from './uuid.js';
import { writeFooters, writeHeader } from './write-metadata.js';

const CHUNK = 1024 * 1024;

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
export async function makeVhdEmpty(core: VhdImage): Promise<void> {
  core.assertMutable();
  await core.exclusive(() =>
    core.allocator.run(async () => {
      await makeEmpty(core.state);
      core.dropCaches();
    }),
  );
}

async function makeEmpty(s: VhdState): Promise<void> {
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

/** A sector-aligned byte range of the file that new locator data may go into. */
interface Space {
  start: number;
  end: number;
}

/** One locator to record: its platform code and encoded data. */
interface LocatorItem {
  code: string;
  bytes: Uint8Array;
}

const roundUpSector = (n: number) => Math.ceil(n / VHD_SECTOR) * VHD_SECTOR;
const roundDownSector = (n: number) => Math.floor(n / VHD_SECTOR) * VHD_SECTOR;

/** Is `m` one of the parent locators' data or reserved space (what a new header gives up)? */
function isLocatorRegion(m: { what: string }): boolean {
  return m.what.startsWith('parent locator');
}

/**
 * The space between the structures the image keeps (footer copy, header,
 * BAT, blocks, reservations other than the locators', the footer at the
 * end), below `nextFree`, leaving out every region in `live` (the locator
 * data a header in force refers to: never written over).
 */
function freeSpace(s: VhdState, live: readonly { start: number; end: number }[]): Space[] {
  const span = s.bitmapBytes + s.blockSize;
  const owned: Array<{ start: number; end: number }> = [...s.metadata.filter((m) => !isLocatorRegion(m)), ...(s.reserved ?? []).filter((r) => !isLocatorRegion(r)), ...live, { start: 0, end: FOOTER_SIZE }];
  for (const e of s.bat) if (e !== BAT_UNUSED) owned.push({ start: e * VHD_SECTOR, end: e * VHD_SECTOR + span });
  owned.sort((a, b) => a.start - b.start);
  const out: Space[] = [];
  let pos = 0;
  for (const r of [...owned, { start: s.nextFree, end: s.nextFree }]) {
    const start = roundUpSector(pos);
    const end = roundDownSector(Math.min(r.start, s.nextFree));
    if (end > start) out.push({ start, end });
    pos = Math.max(pos, r.end);
  }
  return out;
}

/** Places each item in `spaces` (smallest space that fits, split as it is used); undefined when one does not fit. */
function place(items: readonly LocatorItem[], spaces: readonly Space[]): Space[] | undefined {
  const left = spaces.map((r) => ({ ...r }));
  const out: Space[] = [];
  for (const item of items) {
    const need = Math.max(VHD_SECTOR, roundUpSector(item.bytes.length));
    const fit = left.filter((r) => r.end - r.start >= need).sort((a, b) => a.end - a.start - (b.end - b.start))[0];
    if (!fit) return undefined;
    out.push({ start: fit.start, end: fit.start + need });
    fit.start += need;
  }
  return out;
}

/** Places the items behind the last block, where the footer is (it moves behind them). */
function placeAtEnd(s: VhdState, items: readonly LocatorItem[]): Space[] {
  let at = s.nextFree;
  return items.map((item) => {
    const need = Math.max(VHD_SECTOR, roundUpSector(item.bytes.length));
    const r = { start: at, end: at + need };
    at += need;
    return r;
  });
}

/** The parent fields of the dynamic header. */
interface ParentFields {
  id: string;
  timestamp: number;
  name: string;
}

/**
 * Writes the new locators' data into `spaces` (no locator in force uses
 * them): when some lie at the end, the footer moves behind them first and
 * is flushed, so the file ends with a footer throughout. Then a flush.
 */
async function writeLocatorData(s: VhdState, items: readonly LocatorItem[], spaces: readonly Space[]): Promise<ParentLocatorEntry[]> {
  let end = s.nextFree;
  for (const r of spaces) end = Math.max(end, r.end);
  if (end > s.nextFree) {
    s.nextFree = end;
    await writeFooters(s, { head: false });
    await s.storage.flush();
  }
  const writes = items.map((item, i) => {
    const r = spaces[i]!;
    // The whole space: bytes of whatever was there before must not read as part of a path.
    const padded = new Uint8Array(r.end - r.start);
    padded.set(item.bytes);
    return s.storage.write(r.start, padded);
  });
  const results = await Promise.allSettled(writes);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
  await s.storage.flush();
  return items.map((item, i) => ({
    platformCode: item.code,
    // In bytes, as Windows writes it (see locatorSpaceBytes).
    platformDataSpace: spaces[i]!.end - spaces[i]!.start,
    platformDataLength: item.bytes.length,
    reserved: 0,
    platformDataOffset: spaces[i]!.start,
  }));
}

/** The header's locator entries whose data lies where open found it (the ones in force). */
function liveEntries(s: VhdState): ParentLocatorEntry[] {
  return s.header!.parentLocators.filter((l, i) => l.platformCode !== PLATFORM_CODE.NONE && l.platformDataLength > 0 && s.metadata.some((m) => m.what === `parent locator ${i}` && m.start === l.platformDataOffset));
}

/**
 * The dynamic header with `entries` and the parent fields, in one write
 * (both sectors), then a flush. The in-memory layout follows.
 */
async function commitHeader(s: VhdState, entries: readonly ParentLocatorEntry[], parent: ParentFields): Promise<void> {
  const h = s.header!;
  const locators = entries.map((l) => ({ ...l }));
  while (locators.length < PARENT_LOCATOR_COUNT) locators.push(emptyLocator());
  h.parentLocators = locators;
  h.parentUnicodeName = parent.name;
  h.parentUniqueId = parent.id;
  h.parentTimestamp = parent.timestamp;
  await writeHeader(s);
  await s.storage.flush();
  // An entry kept from before keeps the region open gave it; a new one owns its space.
  const known = (l: ParentLocatorEntry) => s.metadata.find((m) => isLocatorRegion(m) && m.start === l.platformDataOffset)?.end;
  s.metadata = [...s.metadata.filter((m) => !isLocatorRegion(m)), ...entries.map((l, i) => ({ start: l.platformDataOffset, end: known(l) ?? l.platformDataOffset + l.platformDataSpace, what: `parent locator ${i}` }))];
  s.reserved = (s.reserved ?? []).filter((r) => !isLocatorRegion(r));
}

/**
 * Switches the header from the locators in force to `next` (whose data is
 * durable) and the parent fields to `parent`.
 *
 * The header is 1 KiB: the parent id (and checksum) in its first sector,
 * the locator entries in its second, so a write torn between them pairs
 * one with the other. When the parent id changes and there is room in the
 * table, the switch takes three writes so that every such pair still finds
 * a parent with the id it names: both sets of locators (old ones first)
 * under the old id, both (new ones first) under the new id, then the new
 * ones alone. Otherwise one write: a torn one reads the old locators under
 * the old id or, when only the names change, under the same one.
 */
async function switchLocators(s: VhdState, next: readonly ParentLocatorEntry[], parent: ParentFields): Promise<void> {
  const h = s.header!;
  const old = liveEntries(s);
  if (parent.id !== h.parentUniqueId && old.length > 0 && old.length + next.length <= PARENT_LOCATOR_COUNT) {
    await commitHeader(s, [...old, ...next], { id: h.parentUniqueId, timestamp: h.parentTimestamp, name: h.parentUnicodeName });
    await commitHeader(s, [...next, ...old], parent);
  }
  await commitHeader(s, next, parent);
}

/**
 * Gives up locator data the header no longer refers to: zeroed (so that no
 * stale path survives), a flush; when it was the last thing before the
 * footer, the footer moves back over it and the file is cut (a crash in
 * between leaves junk after the footer: a leak).
 */
async function releaseRegions(s: VhdState, regions: readonly { start: number; end: number }[]): Promise<void> {
  if (regions.length === 0) return;
  const span = s.bitmapBytes + s.blockSize;
  const kept: Array<{ start: number; end: number }> = [...s.metadata, ...(s.reserved ?? [])];
  for (const e of s.bat) if (e !== BAT_UNUSED) kept.push({ start: e * VHD_SECTOR, end: e * VHD_SECTOR + span });
  // Only what no structure in force shares (a damaged layout may overlap).
  const free = regions.filter((r) => kept.every((k) => !regionsOverlap(k, r)));
  for (const r of free) await s.storage.write(r.start, new Uint8Array(r.end - r.start));
  await s.storage.flush();
  let end = 0;
  for (const k of kept) end = Math.max(end, k.end);
  end = roundUpSector(end);
  if (end >= s.nextFree) return;
  // Is all of [end, nextFree) given-up locator space? Then the file ends at `end` again.
  let pos = end;
  for (const r of [...free].sort((a, b) => a.start - b.start)) if (r.start <= pos && r.end > pos) pos = r.end;
  if (pos < s.nextFree) return;
  s.nextFree = end;
  await writeFooters(s, { head: false });
  await s.storage.flush();
  await s.storage.truncate(end + FOOTER_SIZE);
  await s.storage.flush();
}

/**
 * Rewrites the parent reference of a differencing disk. The new parent is
 * looked up through the resolver the disk was opened with (kind "parent");
 * when it opens, its unique id and timestamp are recorded too (so that the
 * child opens over it), otherwise only the names change. `undefined` drops
 * the parent: the disk becomes a dynamic disk whose unallocated sectors
 * read as zeros. Takes effect at the next open: this open keeps reading
 * through its current parent.
 *
 * Crash order: the old locator data stays as it is until a header that no
 * longer refers to it is durable. New locator data goes into space no
 * locator in force uses (free space between the structures, else behind
 * the last block), is flushed, then the header is switched over (see
 * switchLocators), and only then is the old data zeroed. When the new data had to
 * go behind the last block but fits where the old data was, a second
 * switch of the same kind moves it there and the file is cut back, so a
 * rebase leaves the file its old size and layout (locator data before the
 * BAT, which a resize relies on).
 */
export async function setVhdBacking(core: VhdImage, name: string | undefined, format: string | undefined): Promise<void> {
  core.assertMutable();
  await core.exclusive(() =>
    core.allocator.run(async () => {
      await setBacking(core.state, name, format);
      core.dropCaches();
    }),
  );
}

async function setBacking(s: VhdState, name: string | undefined, format: string | undefined): Promise<void> {
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
  const old = s.metadata.filter((m) => isLocatorRegion(m)).map((m) => ({ start: m.start, end: m.end }));

  if (name === undefined) {
    // Footers first: a dynamic disk ignores the parent fields of its header.
    s.footer = { ...s.footer, diskType: DISK_TYPE.dynamic };
    s.type = 'dynamic';
    await writeFooters(s);
    await s.storage.flush();
    await commitHeader(s, [], { id: NIL_UUID, timestamp: 0, name: '' });
    await releaseRegions(s, old);
    s.parentName = undefined;
    return;
  }

  let parent: ParentFields = { id: h.parentUniqueId, timestamp: h.parentTimestamp, name: baseName(name.replace(/\\/g, '/')) };
  if (s.resolver) {
    try {
      const storage = await s.resolver({ name, kind: 'parent', from: s.storage, writable: false });
      try {
        const found = await readVhdLayout(storage, { allowCoalescing: true });
        parent = { ...parent, id: found.footer.uniqueId, timestamp: found.footer.timestamp };
      } finally {
        await storage.close();
      }
    } catch {
      // Not there (yet): rebase -u records the name only.
    }
  }
  const items = wantedLocators(s, name).map(([code, path]) => ({ code, bytes: encodeLocatorData(code, path) }));
  // Where the data ends up: free space, or the old locators' space once the header no longer uses it.
  const now = place(items, freeSpace(s, old));
  if (now) {
    await switchLocators(s, await writeLocatorData(s, items, now), parent);
    await releaseRegions(s, old);
  } else {
    const end = placeAtEnd(s, items);
    await switchLocators(s, await writeLocatorData(s, items, end), parent);
    await releaseRegions(s, old);
    const later = place(
      items,
      freeSpace(s, end).filter((r) => r.end <= end[0]!.start),
    );
    if (later) {
      await switchLocators(s, await writeLocatorData(s, items, later), parent);
      await releaseRegions(s, end);
    }
  }
  s.parentName = name;
}
