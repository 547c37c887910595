/**
 * Reading the layout of a VHD into a VhdState: find the footer (copy at
 * offset 0 and at the end of the file), read the dynamic header and the
 * BAT, and validate every size, count and offset against the file size
 * before anything is allocated or looped over. No parent is opened here.
 */
import { ImageError, corrupt, hex, invalidArg, readU32Be, unsafe, wrongFormat, type Storage } from '@img/block';
import { BAT_UNUSED, MAX_BAT_ENTRIES, batBytes, batFromFileOrder, nextAllocated, signedEntries } from './bat.js';
import { bitmapSize } from './bitmap.js';
import { DYNAMIC_HEADER_COOKIE, DYNAMIC_HEADER_SIZE, dynamicHeaderChecksum, parseDynamicHeader } from './dynamic-header.js';
import { CHECKSUM_OFFSET, COALESCE_COOKIE, FOOTER_COOKIE, FOOTER_SIZE, diskTypeName, footerChecksum, parseFooter, readCookie, type VhdFooter } from './footer.js';
import { VHD_MAX_SIZE, VHD_SECTOR, vhdVirtualSize } from './geometry.js';
import { describeRegion, layoutOverlaps, overlapMessage, regionsOverlap, type LayoutRegion } from './layout.js';
import { SIZE_MODES, type VhdOpenOptions } from './open-options.js';
import { MAX_LOCATOR_DATA, PLATFORM_CODE } from './parent-locator.js';
import { vhdProblem, type VhdProblem } from './problems.js';
import { blockAlignment, isWriterPadding, reservedSpace } from './reserved-space.js';
import { overlappingBlocks, sortedBlockStarts } from './block-starts.js';
import { FORMAT, MAX_BLOCK_SIZE, type VhdState } from './state.js';

/** Largest block size an untrusted open accepts (the largest any known writer uses). */
export const UNTRUSTED_MAX_BLOCK_SIZE = 2 * 1024 * 1024;

interface FooterCopy {
  bytes: Uint8Array;
  offset: number;
  cookie: string;
  checksumOk: boolean;
}

async function readCopy(storage: Storage, offset: number, length: number): Promise<FooterCopy | undefined> {
  if (offset < 0) return undefined;
  const bytes = await storage.read(offset, length);
  if (bytes.length < length) return undefined;
  const cookie = readCookie(bytes);
  const padded = new Uint8Array(FOOTER_SIZE);
  padded.set(bytes);
  return { bytes: padded, offset, cookie, checksumOk: footerChecksum(padded) === readU32Be(padded, 64) };
}

function isCookie(c: FooterCopy | undefined): c is FooterCopy {
  return c !== undefined && (c.cookie === FOOTER_COOKIE || c.cookie === COALESCE_COOKIE);
}

function typeOf(c: FooterCopy): number {
  return readU32Be(c.bytes, 0x3c);
}

/** Bytes 510-511 of a footer-sized sector: the MBR boot signature 0x55AA there suggests a boot sector, not a footer (a footer's reserved bytes are zeros). */
function hasBootSignature(c: FooterCopy): boolean {
  return c.bytes[510] === 0x55 && c.bytes[511] === 0xaa;
}

/** Is the footer cookie anywhere a reader could look: the first sector, or the last two (a cut or old footer)? */
async function cookieAnywhere(storage: Storage, fileSize: number): Promise<boolean> {
  const find = (bytes: Uint8Array) => {
    for (let i = 0; i + 8 <= bytes.length; i++) {
      const c = readCookie(bytes, i);
      if (c === FOOTER_COOKIE || c === COALESCE_COOKIE) return true;
    }
    return false;
  };
  const start = Math.max(0, fileSize - 2 * FOOTER_SIZE);
  return find(await storage.read(0, Math.min(fileSize, FOOTER_SIZE))) || find(await storage.read(start, fileSize - start));
}

function describeCopy(c: FooterCopy, fileSize: number): string {
  return c.offset === 0 ? 'the footer copy at offset 0' : c.offset >= fileSize - FOOTER_SIZE ? `the footer at ${hex(c.offset)} (the end of the file)` : `the footer at ${hex(c.offset)}`;
}

/** Where the layout reader puts the BAT entries it finds bad (an array, or a check's bounded list). */
export interface ProblemSink {
  push(problem: VhdProblem): unknown;
}

/**
 * Reads the footer and layout of a VHD into a VhdState (no parent yet).
 * Exported for check and coalesce; check passes `batProblems` to collect
 * bad BAT entries (treated as unallocated) instead of refusing the image.
 */
export async function readVhdLayout(storage: Storage, options: VhdOpenOptions = {}, batProblems?: ProblemSink): Promise<VhdState> {
  const file = storage.name;
  const fileSize = await storage.size();
  const tail = fileSize >= FOOTER_SIZE ? await readCopy(storage, fileSize - FOOTER_SIZE, FOOTER_SIZE) : undefined;
  const head = fileSize >= FOOTER_SIZE * 2 ? await readCopy(storage, 0, FOOTER_SIZE) : undefined;
  const problems: VhdProblem[] = [];
  const good = (c: FooterCopy | undefined): c is FooterCopy => isCookie(c) && c.checksumOk;
  const sparse = (c: FooterCopy) => typeOf(c) === 3 || typeOf(c) === 4;

  let chosen: FooterCopy | undefined;
  let footerLength = FOOTER_SIZE;
  if (good(tail) && typeOf(tail) === 2) chosen = tail;
  else if (good(head) && sparse(head)) chosen = head;
  else if (good(tail) && sparse(tail)) chosen = tail;
  if (!chosen && fileSize >= FOOTER_SIZE - 1) {
    const short = await readCopy(storage, fileSize - (FOOTER_SIZE - 1), FOOTER_SIZE - 1);
    if (good(short) && typeOf(short) === 2) {
      chosen = short;
      footerLength = FOOTER_SIZE - 1;
    }
  }
  if (!chosen) {
    // A cookie without a good checksum: qemu warns and goes on; so do we (untrusted opens refuse below).
    if (isCookie(tail) && typeOf(tail) === 2) chosen = tail;
    else if (isCookie(head) && sparse(head)) chosen = head;
    else if (isCookie(tail)) chosen = tail;
    if (!chosen) {
      if (!(await cookieAnywhere(storage, fileSize))) throw wrongFormat(FORMAT, file, undefined, { field: 'footer cookie', offset: Math.max(0, fileSize - FOOTER_SIZE) });
      throw corrupt(FORMAT, file, `no usable VHD footer at offset 0 or at the end of the file (${fileSize} bytes), though the "conectix" cookie is there`, {
        field: 'footer cookie',
        offset: Math.max(0, fileSize - FOOTER_SIZE),
      });
    }
    const at = chosen.offset + CHECKSUM_OFFSET;
    if (!chosen.checksumOk) {
      if (options.untrusted) {
        throw unsafe(FORMAT, file, `footer checksum at ${hex(at)} is wrong, and untrusted opens need a valid footer`, { field: 'footer checksum', offset: at });
      }
      problems.push(vhdProblem('footer-checksum', 'corruption', `footer checksum at ${hex(at)} is wrong`, at));
    }
  }
  for (const c of [chosen, chosen === head ? tail : head]) {
    if (!c || !isCookie(c) || !hasBootSignature(c)) continue;
    if (c !== chosen && typeOf(chosen) === 2) continue; // a fixed disk's first sector is guest data
    const message = `${describeCopy(c, fileSize)} carries the MBR boot signature 0x55AA at ${hex(c.offset + 510)}, so it may be a raw disk's boot sector that looks like a footer`;
    if (options.untrusted) throw unsafe(FORMAT, file, `${message}; untrusted opens refuse it`, { field: 'footer reserved', offset: c.offset + 510 });
    problems.push(vhdProblem('footer-boot-signature', 'corruption', message, c.offset + 510));
  }
  let footer: VhdFooter;
  try {
    footer = parseFooter(footerLength === FOOTER_SIZE ? chosen.bytes : chosen.bytes.subarray(0, FOOTER_SIZE - 1));
  } catch (e) {
    if (ImageError.isInstance(e)) throw corrupt(FORMAT, file, `${e.message.replace(/^vhd: /, '')} (footer at ${hex(chosen.offset)})`, { field: e.data.field, offset: chosen.offset });
    throw e;
  }
  const type = diskTypeName(footer.diskType);
  if (!type) throw corrupt(FORMAT, file, `footer disk type ${footer.diskType} is not 2, 3 or 4 (footer at ${hex(chosen.offset)})`, { field: 'disk type', offset: chosen.offset + 0x3c });
  const coalescing = chosen.cookie === COALESCE_COOKIE || (good(head) && head.cookie === COALESCE_COOKIE) || (good(tail) && tail.cookie === COALESCE_COOKIE);
  if (coalescing && !options.allowCoalescing) {
    throw unsafe(FORMAT, file, 'a coalesce into this image was interrupted: its content is only valid under the child; run coalesceVhd on the child again to finish it', {
      field: 'footer cookie',
      offset: chosen.offset,
    });
  }
  const repairable: VhdProblem[] = [];
  let tailMissing = false;
  let refusal: ImageError | undefined;
  if (type !== 'fixed') {
    // Both copies should be present and equal (up to the cookie while coalescing).
    const other = chosen === head ? tail : head;
    const where = chosen === head ? 'at the end of the file' : 'at offset 0';
    const otherAt = chosen === head ? fileSize - FOOTER_SIZE : 0;
    if (options.untrusted && (!good(other) || !sameFooter(other.bytes, chosen.bytes) || other.cookie !== chosen.cookie)) {
      // Thrown once the layout is known to be sound otherwise (a broken layout is ERR_IMG_CORRUPT first).
      const why = good(other) ? `differs from the one at ${hex(chosen.offset)}` : 'is missing or invalid';
      refusal = unsafe(FORMAT, file, `the footer copy ${where} (${hex(otherAt)}) ${why}, and untrusted opens refuse to choose between them`, { field: 'footer', offset: otherAt });
    }
    if (!good(other)) {
      // No footer at all at the end, behind a valid copy at offset 0: decided once the layout is known.
      if (chosen === head && !isCookie(tail)) tailMissing = true;
      else problems.push(vhdProblem('footer-copy-invalid', 'corruption', `footer copy ${where} is missing or invalid`, otherAt));
    } else if (!sameFooter(other.bytes, chosen.bytes)) {
      if (sameLayout(other.bytes, chosen.bytes)) {
        repairable.push(vhdProblem('footer-copy-stale', 'leak', `footer copy ${where} is stale (an interrupted footer update: it differs only in size, timestamp or cookie); the copy ${chosen === head ? 'at offset 0' : 'at the end'} is in use`, otherAt));
      } else {
        problems.push(vhdProblem('footer-copies-differ', 'corruption', 'footer copies at offset 0 and at the end of the file differ', otherAt));
      }
    }
  }

  const sizeMode = options.sizeMode ?? 'auto';
  if (!SIZE_MODES.includes(sizeMode)) {
    throw invalidArg(FORMAT, `sizeMode must be auto, chs or current-size, not ${JSON.stringify(sizeMode)}`, { field: 'sizeMode', actual: sizeMode });
  }
  const size = vhdVirtualSize(footer.creatorApp, footer.geometry, footer.currentSize, sizeMode);
  if (size > VHD_MAX_SIZE) {
    throw corrupt(FORMAT, file, `disk size ${size} is larger than the VHD maximum of 2040 GiB`, { field: 'current size', offset: chosen.offset + 0x30, actual: size });
  }
  const state: VhdState = {
    storage,
    type,
    footer,
    sizeMode,
    size,
    fixedFooterOffset: fileSize - footerLength,
    shortFooter: footerLength !== FOOTER_SIZE,
    headerOffset: 0,
    bat: new Uint32Array(0),
    blockSize: 0,
    bitmapBytes: 0,
    sectorsPerBlock: 0,
    nextFree: 0,
    metadata: [],
    problems,
    repairable,
    coalescing,
  };
  if (type === 'fixed') {
    if (size > fileSize - footerLength) {
      throw corrupt(FORMAT, file, `fixed disk of ${size} bytes does not fit in a file of ${fileSize} bytes`, { field: 'current size', offset: chosen.offset + 0x30 });
    }
    return state;
  }
  await readDynamic(state, fileSize, options, good(tail), batProblems);
  if (refusal) throw refusal;
  if (tailMissing) {
    // A crash while a block was being added at the end of the file: the block
    // (unreferenced) may have landed but the footer behind it did not.
    if (fileSize >= state.nextFree + FOOTER_SIZE) {
      repairable.push(vhdProblem('unfinished-allocation', 'leak', `no footer at the end of the file: an unfinished block allocation after the last block (repair writes the footer at ${hex(state.nextFree)} and cuts what follows)`, state.nextFree));
    } else {
      problems.push(vhdProblem('footer-copy-invalid', 'corruption', 'footer copy at the end of the file is missing or invalid', Math.max(0, fileSize - FOOTER_SIZE)));
    }
  }
  return state;
}

/** Do two footers describe the same disk layout (all but the fields a resize, a timestamp, a coalesce mark or dropping the parent change)? */
function sameLayout(a: Uint8Array, b: Uint8Array): boolean {
  // Dropping the parent (rebase to none) turns a differencing disk into a dynamic one, footer first.
  const sparse = (x: Uint8Array) => readU32Be(x, 0x3c) === 3 || readU32Be(x, 0x3c) === 4;
  const retyped = sparse(a) && sparse(b);
  const changing = (i: number) => i < 8 || (i >= 0x18 && i < 0x1c) || (i >= 0x28 && i < 0x3c) || (retyped && i >= 0x3c && i < 0x40) || (i >= 64 && i < 68);
  for (let i = 0; i < FOOTER_SIZE; i++) if (!changing(i) && a[i] !== b[i]) return false;
  return true;
}

function sameFooter(a: Uint8Array, b: Uint8Array): boolean {
  // The cookie may differ while a coalesce is running; the checksum follows it.
  for (let i = 8; i < FOOTER_SIZE; i++) if (i < 64 || i >= 68) if (a[i] !== b[i]) return false;
  return true;
}

async function readDynamic(s: VhdState, fileSize: number, options: VhdOpenOptions, tailFooterValid: boolean, batProblems: ProblemSink | undefined): Promise<void> {
  const file = s.storage.name;
  const f = s.footer;
  const dataOffset = f.dataOffset;
  if (dataOffset < 512n || dataOffset + BigInt(DYNAMIC_HEADER_SIZE) > BigInt(fileSize)) {
    throw corrupt(FORMAT, file, `footer data offset ${hex(Number(dataOffset))} does not point at a dynamic header inside the file (${fileSize} bytes)`, {
      field: 'data offset',
      offset: 0x10,
    });
  }
  s.headerOffset = Number(dataOffset);
  const hb = await s.storage.read(s.headerOffset, DYNAMIC_HEADER_SIZE);
  const h = parseDynamicHeader(hb);
  const at = s.headerOffset;
  if (h.cookie !== DYNAMIC_HEADER_COOKIE) throw corrupt(FORMAT, file, `no dynamic disk header ("cxsparse") at ${hex(at)}`, { field: 'dynamic header cookie', offset: at });
  if (dynamicHeaderChecksum(hb) !== h.checksum) {
    if (options.untrusted) throw corrupt(FORMAT, file, `dynamic header checksum at ${hex(at + 0x24)} is wrong`, { field: 'dynamic header checksum', offset: at + 0x24 });
    s.problems.push(vhdProblem('header-checksum', 'corruption', `dynamic header checksum at ${hex(at + 0x24)} is wrong`, at + 0x24));
  }
  const bs = h.blockSize;
  if (bs < VHD_SECTOR || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
    throw corrupt(FORMAT, file, `block size ${bs} at ${hex(at + 0x20)} is not a power of two between 512 and ${MAX_BLOCK_SIZE}`, { field: 'block size', offset: at + 0x20, actual: bs });
  }
  if (options.untrusted && bs > UNTRUSTED_MAX_BLOCK_SIZE) {
    throw unsafe(FORMAT, file, `block size ${bs} at ${hex(at + 0x20)} is larger than ${UNTRUSTED_MAX_BLOCK_SIZE} (what Hyper-V, Virtual PC and qemu write); untrusted opens refuse it`, {
      field: 'block size',
      offset: at + 0x20,
      actual: bs,
    });
  }
  const entries = h.maxTableEntries;
  if (entries > MAX_BAT_ENTRIES) {
    throw corrupt(FORMAT, file, `max table entries ${entries} at ${hex(at + 0x1c)} exceeds the limit of ${MAX_BAT_ENTRIES}`, { field: 'max table entries', offset: at + 0x1c, actual: entries });
  }
  if (entries * bs < s.size) {
    throw corrupt(FORMAT, file, `BAT of ${entries} entries of ${bs} bytes cannot cover a disk of ${s.size} bytes`, { field: 'max table entries', offset: at + 0x1c, actual: entries });
  }
  if (entries * bs > VHD_MAX_SIZE + bs) {
    throw corrupt(FORMAT, file, `max table entries ${entries} at ${hex(at + 0x1c)} describes more than 2040 GiB`, { field: 'max table entries', offset: at + 0x1c, actual: entries });
  }
  const tableBytes = batBytes(entries);
  if (h.tableOffset < VHD_SECTOR || h.tableOffset + entries * 4 > fileSize) {
    throw corrupt(FORMAT, file, `BAT at ${hex(h.tableOffset)} (${entries} entries) lies outside the file (${fileSize} bytes)`, { field: 'table offset', offset: at + 0x10 });
  }
  s.header = h;
  s.blockSize = bs;
  s.bitmapBytes = bitmapSize(bs);
  s.sectorsPerBlock = bs / VHD_SECTOR;
  const metadata: VhdState['metadata'] = [
    { start: 0, end: FOOTER_SIZE, what: 'the footer copy' },
    { start: at, end: at + DYNAMIC_HEADER_SIZE, what: 'the dynamic header' },
    { start: h.tableOffset, end: h.tableOffset + tableBytes, what: 'the BAT' },
  ];
  if (regionsOverlap(metadata[2]!, metadata[0]!) || regionsOverlap(metadata[2]!, metadata[1]!)) {
    throw corrupt(FORMAT, file, `BAT at ${hex(h.tableOffset)} overlaps the footer copy or the dynamic header`, { field: 'table offset', offset: at + 0x10 });
  }
  const writable = options.readOnly === false;
  // A structure whose region overlaps another's: readable (each reads its own bytes), never writable.
  const layoutProblem = (a: LayoutRegion, b: LayoutRegion, field: string, offset: number) => {
    const message = overlapMessage(a, b);
    if (writable || options.untrusted) {
      throw corrupt(FORMAT, file, `${message}, so a write to one would destroy the other; ${writable ? 'writable' : 'untrusted'} opens refuse it`, { field, offset });
    }
    s.problems.push(vhdProblem('layout-overlap', 'corruption', message, offset));
  };
  const tailFooter: LayoutRegion | undefined = tailFooterValid ? { start: fileSize - FOOTER_SIZE, end: fileSize, what: 'the footer at the end of the file' } : undefined;
  if (tailFooter) {
    for (const [m, field, offset] of [
      [metadata[1]!, 'data offset', 0x10],
      [metadata[2]!, 'table offset', at + 0x10],
    ] as const) {
      if (regionsOverlap(m, tailFooter)) layoutProblem(m, tailFooter, field, offset);
    }
  }
  const locators: Array<LayoutRegion & { entry: number }> = [];
  h.parentLocators.forEach((l, i) => {
    if (l.platformCode === PLATFORM_CODE.NONE || l.platformDataLength === 0) return;
    const end = l.platformDataOffset + l.platformDataLength;
    if (l.platformDataLength > MAX_LOCATOR_DATA || !Number.isSafeInteger(end) || end > fileSize || l.platformDataOffset < VHD_SECTOR) {
      const message = `parent locator ${i} (${l.platformCode}) data at ${hex(l.platformDataOffset)}+${l.platformDataLength} lies outside the file`;
      if (options.untrusted) throw corrupt(FORMAT, file, message, { field: `parent locator ${i}`, offset: at + 0x240 + i * 24 });
      // Past the end of the file, the data would be inside it once a write appends a block there: the next open
      // would find the locator and the new block overlapping.
      if (writable && Number.isSafeInteger(end) && end > fileSize && l.platformDataOffset >= VHD_SECTOR && l.platformDataLength <= MAX_LOCATOR_DATA) {
        throw corrupt(FORMAT, file, `${message}, where a new block would be appended; writable opens refuse it`, { field: `parent locator ${i}`, offset: at + 0x240 + i * 24 });
      }
      s.problems.push(vhdProblem('locator-outside', 'corruption', message, at + 0x240 + i * 24));
      return;
    }
    const start = l.platformDataOffset;
    locators.push({ start, end: start + Math.ceil(l.platformDataLength / VHD_SECTOR) * VHD_SECTOR, what: `parent locator ${i}`, entry: at + 0x240 + i * 24 });
  });
  for (const [a, b] of layoutOverlaps(locators, tailFooter ? [...metadata, tailFooter] : metadata)) {
    layoutProblem(a, b, a.what, (a as (typeof locators)[number]).entry);
  }
  for (const l of locators) metadata.push({ start: l.start, end: l.end, what: l.what });
  s.metadata = metadata;
  const table = new Uint32Array(entries);
  const got = await s.storage.readInto(h.tableOffset, new Uint8Array(table.buffer));
  // The BAT lies inside the file (checked above); a storage that answers short leaves zeros, as read() does.
  if (got < entries * 4) new Uint8Array(table.buffer).fill(0, got);
  s.bat = batFromFileOrder(table);
  let nextFree = 0;
  for (const m of metadata) nextFree = Math.max(nextFree, m.end);
  nextFree = Math.ceil(nextFree / VHD_SECTOR) * VHD_SECTOR;
  const span = s.bitmapBytes + bs;
  const signed = signedEntries(s.bat);
  let allocated = 0;
  for (let i = nextAllocated(signed, 0, entries); i < entries; i = nextAllocated(signed, i + 1, entries)) allocated++;
  // One number a block (see block-starts.ts); entries found bad are left out, so the array is cut to those kept.
  const starts = new Float64Array(allocated);
  let kept = 0;
  for (let i = nextAllocated(signed, 0, entries); i < entries; i = nextAllocated(signed, i + 1, entries)) {
    const e = s.bat[i]!;
    const start = e * VHD_SECTOR;
    const batAt = h.tableOffset + i * 4;
    const block: LayoutRegion = { start, end: start + span, what: `block ${i}` };
    let problem: VhdProblem | undefined;
    // A block that runs past the end of the file is a cut file's last block (salvage) only when no footer follows it.
    if (start >= fileSize || (block.end > fileSize && tailFooter)) {
      problem = vhdProblem('bat-entry-outside', 'corruption', `BAT entry ${i} at ${hex(batAt)} points past the end of the file (${hex(start)})`, batAt);
    }
    for (const m of metadata) {
      if (!problem && regionsOverlap(block, m)) {
        problem = vhdProblem('bat-entry-in-metadata', 'corruption', `BAT entry ${i} at ${hex(batAt)} points into ${m.what} (${hex(start)})`, batAt);
      }
    }
    if (!problem && block.end > fileSize) {
      const message = `${describeRegion(block)} runs ${block.end - fileSize} bytes past the end of the file (${hex(fileSize)}): the file was cut`;
      if (writable) throw corrupt(FORMAT, file, `${message}, and writable opens refuse a cut image`, { field: `BAT entry ${i}`, offset: batAt, actual: e });
      // Salvage: what lies past the end of the file reads as zeros, as in qemu.
      s.problems.push(vhdProblem('block-truncated', 'corruption', `${message}, and those bytes read as zeros`, batAt));
    } else if (!problem && tailFooter && regionsOverlap(block, tailFooter)) {
      layoutProblem(block, tailFooter, `BAT entry ${i}`, batAt);
    }
    if (problem) {
      // check() collects every bad entry and treats it as unallocated; open refuses.
      if (!batProblems) throw corrupt(FORMAT, file, problem.message, { field: `BAT entry ${i}`, offset: batAt, actual: e });
      batProblems.push(problem);
      s.bat[i] = BAT_UNUSED;
      continue;
    }
    starts[kept++] = start;
    nextFree = Math.max(nextFree, start + span);
  }
  const blocks = sortedBlockStarts(starts.subarray(0, kept), span);
  const overlapping = overlappingBlocks(blocks, s.bat, batProblems ? Infinity : 1);
  for (const [a, b] of overlapping) {
    const batAt = h.tableOffset + b.index * 4;
    const message = `BAT entries ${a.index} and ${b.index} point at overlapping blocks (${hex(a.start)}, ${hex(b.start)})`;
    if (!batProblems) throw corrupt(FORMAT, file, message, { field: `BAT entry ${b.index}`, offset: batAt });
    batProblems.push(vhdProblem('bat-entries-overlap', 'corruption', message, batAt));
  }
  // Space a writer reserved (locator space, blktap's batmap) is never allocated over.
  s.reserved = await reservedSpace(s, fileSize, blocks);
  for (const r of s.reserved) nextFree = Math.max(nextFree, r.end);
  // A footer behind alignment padding (a BAT padded to 2 MiB, blocks aligned) stays where its writer put it.
  const tailAt = fileSize - FOOTER_SIZE;
  if (tailFooterValid && tailAt > nextFree) {
    const alignment = blockAlignment(blocks.starts, s.bitmapBytes);
    if (isWriterPadding({ start: nextFree, end: tailAt }, { beforeFirstBlock: blocks.starts.length === 0, nextIsBlock: false, blockSpan: span, ...alignment })) nextFree = tailAt;
  }
  s.nextFree = nextFree;
}
