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
import { BAT_UNUSED, nextAllocated, signedEntries } from './bat.js';
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
import { writeBatEntry, writeFooters, writeHeader } from './write-metadata.js';

export type VhdCheckOptions = CheckOptions;

/** A CheckResult whose findings are also typed: `messages` are the problems' messages. */
export interface VhdCheckResult extends CheckResult {
  problems: VhdProblem[];
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
  const result: VhdCheckResult = { format: FORMAT, corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, messages: [], problems: [] };
  const report = (p: VhdProblem) => {
    result.problems.push(p);
    result.messages.push(p.message);
    if (p.severity === 'corruption') result.corruptions++;
    else if (p.severity === 'leak') result.leaks++;
  };
  const batProblems: VhdProblem[] = [];
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
  const has = (code: VhdProblemCode) => result.problems.some((p) => p.code === code);
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

  const footerFixes = result.problems.filter((p) => FOOTER_FIXES.has(p.code)).length;
  if (s.type === 'fixed') {
    result.imageEndOffset = s.fixedFooterOffset + FOOTER_SIZE;
    if (repairAll && (footerFixes || s.shortFooter) && !s.coalescing) {
      await writeFooters(s);
      await storage.flush();
      result.corruptionsFixed += footerFixes;
    }
    return result;
  }

  for (const p of batProblems) report(p);
  const needed = Math.ceil(s.size / s.blockSize);
  const span = s.bitmapBytes + s.blockSize;
  const regions: Array<{ start: number; end: number; block: boolean }> = [...s.metadata, ...(s.reserved ?? [])].map((m) => ({ start: m.start, end: m.end, block: false }));
  const blockStarts: number[] = [];
  let allocated = 0;
  let fragmented = 0;
  let previousEnd = -1;
  let paddedBlocks = 0;
  const signed = signedEntries(s.bat);
  for (let i = nextAllocated(signed, 0, s.bat.length); i < s.bat.length; i = nextAllocated(signed, i + 1, s.bat.length)) {
    const e = s.bat[i]!;
    const start = e * VHD_SECTOR;
    regions.push({ start, end: start + span, block: true });
    blockStarts.push(start);
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
  regions.sort((a, b) => a.start - b.start);
  let firstBlock = Infinity;
  for (const b of blockStarts) firstBlock = Math.min(firstBlock, b);
  const alignment = blockAlignment(blockStarts, s.bitmapBytes);
  let pos = 0;
  for (const r of regions) {
    if (r.start > pos && pos >= FOOTER_SIZE) {
      const gap = { start: pos, end: r.start };
      if (!isWriterPadding(gap, { beforeFirstBlock: r.start <= firstBlock, nextIsBlock: r.block, blockSpan: span, ...alignment })) {
        report(vhdProblem('unreferenced-space', 'leak', `${r.start - pos} unreferenced bytes at ${hex(pos)}`, pos));
      }
    }
    pos = Math.max(pos, r.end);
  }
  const end = s.nextFree + FOOTER_SIZE;
  result.imageEndOffset = end;
  result.totalClusters = needed;
  result.allocatedClusters = allocated;
  result.fragmentedClusters = fragmented;
  const junk = fileSize - end;
  if (junk > 0) report(vhdProblem('junk-after-end', 'leak', `${junk} bytes of junk after the last block (the file should end at ${hex(end)})`, end));

  if (repairAll && !s.coalescing) {
    for (const p of batProblems) {
      const index = (p.offset! - s.header!.tableOffset) / 4;
      if (BAT_FIXES.has(p.code) && s.bat[index] === BAT_UNUSED) {
        await writeBatEntry(s, index, BAT_UNUSED);
        result.corruptionsFixed++;
      }
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
  return result;
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
