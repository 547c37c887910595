/**
 * checkVhd: consistency check and repair, reported as qemu-img check does,
 * with every finding also as a typed problem (`{ code, severity, offset,
 * message }`). Repairs are chosen by problem code.
 *
 * Checked: footer checksums, both footer copies and a boot signature in
 * them, the dynamic header checksum, BAT entries in bounds and clear of
 * metadata, blocks not overlapping each other, BAT size against the disk
 * size, sector bitmap padding, unreferenced space (gaps between blocks,
 * junk after the last block), an interrupted coalesce, structures whose
 * regions overlap (`layout-overlap`: locator data, header, BAT, blocks and
 * the footer at the end; see layout.ts) and a last block cut by the end of
 * the file (`block-truncated`).
 *
 * Not leaks: space a real writer leaves unused on purpose — alignment
 * padding (the BAT padded to a sector, 4 KiB or 2 MiB; blocks aligned to
 * 4 KiB or 2 MiB), parent locator space reserved beyond its data, slack
 * before the first block too small to hold one (see reserved-space.ts).
 *
 * Repaired (`repair: 'all'`): a missing or mismatched footer copy is
 * rewritten from the valid one, a bad dynamic header checksum is fixed,
 * BAT entries pointing outside the file or into metadata are cleared (the
 * blocks read as unallocated). `repair: 'leaks'` or `'all'`: junk after
 * the last block is truncated (never reserved space or padding), a stale
 * footer copy is rewritten.
 */
import { ImageError, hex, type CheckOptions, type CheckResult, type Storage } from '@img/block';
import { nextAllocated, signedEntries } from './bat.js';
import { sortedBlockStarts } from './block-starts.js';
import { testBit } from './bitmap.js';
import { FOOTER_SIZE } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import { openParent } from './chain.js';
import type { VhdImage } from './image.js';
import { loadVhdImage } from './open.js';
import { readVhdLayout } from './read-layout.js';
import { vhdProblem, type VhdProblem, type VhdProblemCode } from './problems.js';
import { blockAlignment, isWriterPadding } from './reserved-space.js';
import { FORMAT, type VhdState } from './state.js';
import { writeChangedBatSectors, writeFooters, writeHeader } from './write-metadata.js';

export type VhdCheckOptions = CheckOptions;

/** A CheckResult whose findings are also typed: `messages` are the problems' messages. */
export interface VhdCheckResult extends CheckResult {
  /** The first 1000 problems found (the counters count them all; `messages` says how many more). */
  problems: VhdProblem[];
}

/**
 * The problems a check keeps in full. Past this many it only counts them: a hostile image names millions (a 3.7 MiB
 * VHD of 1900 GiB whose 972,800 BAT entries all point past its end made `img check` keep them all, 847 MB).
 */
const MAX_VHD_PROBLEMS = 1000;

/** The BAT problems the layout reader finds: the first MAX_VHD_PROBLEMS kept, the rest counted by code. */
class BatProblems {
  readonly kept: VhdProblem[] = [];
  readonly more = new Map<VhdProblemCode, { severity: VhdProblem['severity']; count: number }>();

  push(p: VhdProblem): void {
    if (this.kept.length < MAX_VHD_PROBLEMS) {
      this.kept.push(p);
      return;
    }
    const m = this.more.get(p.code);
    if (m) m.count++;
    else this.more.set(p.code, { severity: p.severity, count: 1 });
  }
}

/** Footer problems a rewrite of both footers from the one in use fixes. */
const FOOTER_FIXES: ReadonlySet<VhdProblemCode> = new Set(['footer-checksum', 'footer-copy-invalid', 'footer-copies-differ']);
/** BAT entries a repair clears (their blocks then read as unallocated). */
const BAT_FIXES: ReadonlySet<VhdProblemCode> = new Set(['bat-entry-outside', 'bat-entry-in-metadata']);

/**
 * Checks (and with `repair`, repairs) the VHD in `storage`. Never throws
 * for a damaged image: what cannot be read is counted in `corruptions` or
 * `checkErrors`.
 *
 * @example
 * ```ts
 * const r = await checkVhd(await FileStorage.open('a.vhd', { readOnly: false }), { repair: 'all' });
 * for (const p of r.problems) console.log(p.code, p.offset, p.message);
 * ```
 */
export async function checkVhd(storage: Storage, options: VhdCheckOptions = {}): Promise<VhdCheckResult> {
  const result = await checkOnce(storage, options);
  if (!result.corruptionsFixed && !result.leaksFixed) return result;
  // As qemu-img check -r: the counters are those of the repaired image, checked again ("Double checking the fixed
  // image now..."); the messages stay those of what was found and repaired.
  const { repair: _repair, ...plain } = options;
  const again = await checkOnce(storage, plain);
  return { ...again, corruptionsFixed: result.corruptionsFixed, leaksFixed: result.leaksFixed, messages: result.messages, problems: result.problems };
}

async function checkOnce(storage: Storage, options: VhdCheckOptions): Promise<VhdCheckResult> {
  const result: VhdCheckResult = { format: FORMAT, corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, messages: [], problems: [] };
  // How many of each code were found (kept or not): what the repairs below look at.
  const found = new Map<VhdProblemCode, number>();
  let untold = 0;
  /** Counts `n` problems of `code`. */
  const count = (code: VhdProblemCode, severity: VhdProblem['severity'], n: number) => {
    found.set(code, (found.get(code) ?? 0) + n);
    if (severity === 'corruption') result.corruptions += n;
    else if (severity === 'leak') result.leaks += n;
  };
  /** Counts `p`, and keeps it while fewer than MAX_VHD_PROBLEMS are kept. */
  const report = (p: VhdProblem) => {
    count(p.code, p.severity, 1);
    if (result.problems.length < MAX_VHD_PROBLEMS) {
      result.problems.push(p);
      result.messages.push(p.message);
    } else untold++;
  };
  const finish = (): VhdCheckResult => {
    if (untold) result.messages.push(`... and ${untold} more problems of the same kinds (the first ${result.problems.length} are listed)`);
    return result;
  };
  const batProblems = new BatProblems();
  let s: VhdState;
  try {
    s = await readVhdLayout(storage, { allowCoalescing: true }, batProblems);
  } catch (e) {
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_CORRUPT') {
      report(vhdProblem('unreadable', 'corruption', e.message, e.data.offset));
    } else {
      result.checkErrors++;
      result.messages.push(`check failed: ${(e as Error).message}`);
    }
    return result;
  }
  const repairAll = options.repair === 'all';
  const repairLeaks = options.repair === 'all' || options.repair === 'leaks';
  if (options.repair && storage.readOnly) {
    result.checkErrors++;
    result.messages.push('cannot repair: the storage is read-only');
    return result;
  }
  const fileSize = await storage.size();

  if (s.coalescing) report(vhdProblem('coalescing', 'corruption', 'an interrupted coalesce left this image marked: run coalesceVhd on its child to finish it', 0));
  for (const p of s.problems) report(p);
  const repairable = s.repairable ?? [];
  for (const p of repairable) {
    // An unfinished allocation with more than its footer's room behind the last block is counted as junk below.
    const counted = p.code !== 'unfinished-allocation' || fileSize <= s.nextFree + FOOTER_SIZE;
    report(counted ? p : { ...p, severity: 'info' });
  }
  const has = (code: VhdProblemCode) => found.has(code);
  if (s.shortFooter) {
    report(vhdProblem('footer-short', 'info', 'the footer is 511 bytes long (old Virtual PC); a repair rewrites it as 512 bytes', s.fixedFooterOffset));
  }

  if (s.type === 'differencing' && options.resolver) {
    // With a resolver, the parent is looked up and its unique id checked.
    const known = s.problems.length;
    let parent: VhdImage | undefined;
    try {
      parent = await openParent(s, { resolver: options.resolver }, loadVhdImage);
      for (const p of s.problems.slice(known)) report(p);
    } catch (e) {
      report(vhdProblem('parent-unusable', 'corruption', `parent: ${(e as Error).message}`, s.headerOffset + 0x28));
    } finally {
      await parent?.close().catch(() => undefined);
    }
  }

  const footerFixes = [...FOOTER_FIXES].reduce((n, code) => n + (found.get(code) ?? 0), 0);
  if (s.type === 'fixed') {
    result.imageEndOffset = s.fixedFooterOffset + FOOTER_SIZE;
    if (repairAll && (footerFixes || s.shortFooter) && !s.coalescing) {
      await writeFooters(s);
      await storage.flush();
      result.corruptionsFixed += footerFixes;
    }
    return finish();
  }

  for (const p of batProblems.kept) report(p);
  for (const [code, m] of batProblems.more) {
    count(code, m.severity, m.count);
    untold += m.count;
  }
  const needed = Math.ceil(s.size / s.blockSize);
  const span = s.bitmapBytes + s.blockSize;
  // Metadata and reserved regions are few; blocks are one number each (see block-starts.ts), merged with them by start.
  const others = [...s.metadata, ...(s.reserved ?? [])].map((m) => ({ start: m.start, end: m.end })).sort((a, b) => a.start - b.start);
  const signed = signedEntries(s.bat);
  let entries = 0;
  for (let i = nextAllocated(signed, 0, s.bat.length); i < s.bat.length; i = nextAllocated(signed, i + 1, s.bat.length)) entries++;
  const starts = new Float64Array(entries);
  let kept = 0;
  let allocated = 0;
  let fragmented = 0;
  let previousEnd = -1;
  let paddedBlocks = 0;
  for (let i = nextAllocated(signed, 0, s.bat.length); i < s.bat.length; i = nextAllocated(signed, i + 1, s.bat.length)) {
    const e = s.bat[i]!;
    const start = e * VHD_SECTOR;
    starts[kept++] = start;
    if (i >= needed) {
      report(vhdProblem('bat-entry-past-disk', 'leak', `BAT entry ${i} is allocated (${hex(start)}) but lies past the end of the disk`, s.header!.tableOffset + i * 4));
      continue;
    }
    allocated++;
    if (previousEnd >= 0 && start !== previousEnd) fragmented++;
    previousEnd = start + span;
    if (await paddingBitsSet(s, i)) paddedBlocks++;
  }
  if (paddedBlocks) report(vhdProblem('bitmap-padding', 'info', `${paddedBlocks} blocks have sector bitmap padding bits set (harmless: qemu sets them)`));
  const blocks = sortedBlockStarts(starts, span).starts;
  const firstBlock = blocks.length ? blocks[0]! : Infinity;
  const alignment = blockAlignment(blocks, s.bitmapBytes);
  let pos = 0;
  // Regions by start, a metadata region before a block that starts with it.
  for (let m = 0, b = 0; m < others.length || b < blocks.length;) {
    const block = m >= others.length || (b < blocks.length && blocks[b]! < others[m]!.start);
    const rStart = block ? blocks[b]! : others[m]!.start;
    const rEnd = block ? blocks[b++]! + span : others[m++]!.end;
    if (rStart > pos && pos >= FOOTER_SIZE) {
      const gap = { start: pos, end: rStart };
      if (!isWriterPadding(gap, { beforeFirstBlock: rStart <= firstBlock, nextIsBlock: block, blockSpan: span, ...alignment })) {
        report(vhdProblem('unreferenced-space', 'leak', `${rStart - pos} unreferenced bytes at ${hex(pos)}`, pos));
      }
    }
    pos = Math.max(pos, rEnd);
  }
  const end = s.nextFree + FOOTER_SIZE;
  result.imageEndOffset = end;
  result.totalClusters = needed;
  result.allocatedClusters = allocated;
  result.fragmentedClusters = fragmented;
  const junk = fileSize - end;
  if (junk > 0) report(vhdProblem('junk-after-end', 'leak', `${junk} bytes of junk after the last block (the file should end at ${hex(end)})`, end));

  if (repairAll && !s.coalescing) {
    // The reader cleared the bad entries in memory: the sectors that hold them are written back once each.
    const cleared = [...BAT_FIXES].reduce((n, code) => n + (found.get(code) ?? 0), 0);
    if (cleared) {
      await writeChangedBatSectors(s);
      result.corruptionsFixed += cleared;
    }
    if (has('header-checksum')) {
      await writeHeader(s);
      result.corruptionsFixed++;
    }
    await storage.flush();
  }
  if (repairLeaks && (junk > 0 || has('unfinished-allocation')) && !s.coalescing) {
    // The footer goes to its place first, then the junk behind it is cut off.
    await writeFooters(s, { head: false });
    await storage.flush();
    await storage.truncate(end);
    await storage.flush();
    result.leaksFixed++;
  }
  if (repairLeaks && has('footer-copy-stale') && !s.coalescing) {
    await writeFooters(s);
    await storage.flush();
    result.leaksFixed++;
  }
  if (repairAll && footerFixes && !s.coalescing) {
    await writeFooters(s);
    await storage.flush();
    result.corruptionsFixed += footerFixes;
  }
  return finish();
}

async function paddingBitsSet(s: VhdState, block: number): Promise<number> {
  const bits = s.bitmapBytes * 8;
  if (bits === s.sectorsPerBlock) return 0;
  const bitmap = new Uint8Array(s.bitmapBytes);
  await s.storage.readInto(s.bat[block]! * VHD_SECTOR, bitmap);
  let n = 0;
  for (let i = s.sectorsPerBlock; i < bits; i++) if (testBit(bitmap, i)) n++;
  return n;
}
