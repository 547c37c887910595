/**
 * checkVhd: consistency check and repair, reported as qemu-img check does.
 *
 * Checked: footer checksums and both footer copies, the dynamic header
 * checksum, BAT entries in bounds and clear of metadata, blocks not
 * overlapping each other, BAT size against the disk size, sector bitmap
 * padding, unreferenced space (gaps between blocks, junk after the last
 * block), an interrupted coalesce.
 *
 * Repaired (`repair: 'all'`): a missing or mismatched footer copy is
 * rewritten from the valid one, a bad dynamic header checksum is fixed,
 * BAT entries pointing outside the file or into metadata are cleared (the
 * blocks read as unallocated). `repair: 'leaks'` or `'all'`: junk after
 * the last block is truncated.
 */
import { ImageError, hex, type CheckOptions, type CheckResult, type Storage } from '@img/block';
import { BAT_UNUSED } from './bat.js';
import { testBit } from './bitmap.js';
import { FOOTER_SIZE } from './footer.js';
import { VHD_SECTOR } from './geometry.js';
import { openParent } from './chain.js';
import { readVhdLayout } from './open.js';
import { FORMAT, type VhdState } from './state.js';
import { writeBatEntry, writeFooters, writeHeader } from './write-metadata.js';

export type VhdCheckOptions = CheckOptions;

/**
 * Checks (and with `repair`, repairs) the VHD in `storage`. Never throws
 * for a damaged image: what cannot be read is counted in `corruptions` or
 * `checkErrors`.
 *
 * @example
 * ```ts
 * const r = await checkVhd(await FileStorage.open('a.vhd', { readOnly: false }), { repair: 'all' });
 * ```
 */
export async function checkVhd(storage: Storage, options: VhdCheckOptions = {}): Promise<CheckResult> {
  const result: CheckResult = { format: FORMAT, corruptions: 0, leaks: 0, checkErrors: 0, corruptionsFixed: 0, leaksFixed: 0, messages: [] };
  const batProblems: Array<{ index: number; message: string }> = [];
  let s: VhdState;
  try {
    s = await readVhdLayout(storage, { allowCoalescing: true, _batProblems: batProblems });
  } catch (e) {
    if (ImageError.isInstance(e) && e.code === 'ERR_IMG_CORRUPT') {
      result.corruptions++;
      result.messages.push(e.message);
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

  if (s.coalescing) {
    result.corruptions++;
    result.messages.push('an interrupted coalesce left this image marked: run coalesceVhd on its child to finish it');
  }
  let footerFix = false;
  let headerFix = false;
  for (const p of s.problems) {
    result.corruptions++;
    result.messages.push(p);
    if (/footer/.test(p)) footerFix = true;
    if (/dynamic header checksum/.test(p)) headerFix = true;
  }
  const repairable = s.repairable ?? [];
  const unfinished = repairable.some((p) => /unfinished block allocation/.test(p));
  for (const p of repairable) {
    // An unfinished allocation is also junk after the last block (counted there) unless only its bitmap landed.
    if (!/unfinished block allocation/.test(p) || (await storage.size()) <= s.nextFree + FOOTER_SIZE) result.leaks++;
    result.messages.push(p);
  }
  if (s.shortFooter) {
    result.messages.push('the footer is 511 bytes long (old Virtual PC); a repair rewrites it as 512 bytes');
    footerFix = true;
  }

  if (s.type === 'differencing' && options.resolver) {
    // With a resolver, the parent is looked up and its unique id checked.
    try {
      await openParent(s, { resolver: options.resolver });
      for (const p of s.problems.filter((x) => /parent timestamp/.test(x))) result.messages.push(p);
    } catch (e) {
      result.corruptions++;
      result.messages.push(`parent: ${(e as Error).message}`);
    } finally {
      await s.parent?.close().catch(() => undefined);
      s.parent = undefined;
    }
  }

  if (s.type === 'fixed') {
    result.imageEndOffset = s.fixedFooterOffset + FOOTER_SIZE;
    if (repairAll && footerFix && !s.coalescing) {
      await writeFooters(s);
      await storage.flush();
      result.corruptionsFixed += s.problems.length;
    }
    return result;
  }

  for (const b of batProblems) {
    result.corruptions++;
    result.messages.push(b.message);
  }
  const needed = Math.ceil(s.size / s.blockSize);
  const span = s.bitmapBytes + s.blockSize;
  const regions: Array<{ start: number; end: number }> = s.metadata.map((m) => ({ start: m.start, end: m.end }));
  let allocated = 0;
  let fragmented = 0;
  let previousEnd = -1;
  let paddedBlocks = 0;
  for (let i = 0; i < s.bat.length; i++) {
    const e = s.bat[i]!;
    if (e === BAT_UNUSED) continue;
    const start = e * VHD_SECTOR;
    regions.push({ start, end: start + span });
    if (i >= needed) {
      result.leaks++;
      result.messages.push(`BAT entry ${i} is allocated (${hex(start)}) but lies past the end of the disk`);
      continue;
    }
    allocated++;
    if (previousEnd >= 0 && start !== previousEnd) fragmented++;
    previousEnd = start + span;
    if (await paddingBitsSet(s, i)) paddedBlocks++;
  }
  if (paddedBlocks) result.messages.push(`${paddedBlocks} blocks have sector bitmap padding bits set (harmless: qemu sets them)`);
  regions.sort((a, b) => a.start - b.start);
  let pos = 0;
  for (const r of regions) {
    if (r.start > pos && pos >= FOOTER_SIZE) {
      result.leaks++;
      result.messages.push(`${r.start - pos} unreferenced bytes at ${hex(pos)}`);
    }
    pos = Math.max(pos, r.end);
  }
  const end = s.nextFree + FOOTER_SIZE;
  result.imageEndOffset = end;
  result.totalClusters = needed;
  result.allocatedClusters = allocated;
  result.fragmentedClusters = fragmented;
  const junk = fileSize - end;
  if (junk > 0) {
    result.leaks++;
    result.messages.push(`${junk} bytes of junk after the last block (the file should end at ${hex(end)})`);
  }

  if (repairAll && !s.coalescing) {
    for (const b of batProblems) {
      if (s.bat[b.index] === BAT_UNUSED && /past the end|points into/.test(b.message)) {
        await writeBatEntry(s, b.index, BAT_UNUSED);
        result.corruptionsFixed++;
      }
    }
    if (headerFix) {
      await writeHeader(s);
      result.corruptionsFixed++;
    }
    await storage.flush();
  }
  if (repairLeaks && (junk > 0 || unfinished) && !s.coalescing) {
    // The footer goes to its place first, then the junk behind it is cut off.
    await writeFooters(s, { head: false });
    await storage.flush();
    await storage.truncate(end);
    await storage.flush();
    result.leaksFixed++;
  }
  if (repairLeaks && repairable.some((p) => /stale/.test(p)) && !s.coalescing) {
    await writeFooters(s);
    await storage.flush();
    result.leaksFixed++;
  }
  if (repairAll && footerFix && !s.coalescing) {
    await writeFooters(s);
    await storage.flush();
    result.corruptionsFixed += s.problems.filter((p) => /footer/.test(p)).length;
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
