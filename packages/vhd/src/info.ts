/** The ImageInfo of an open VHD, keyed as qemu-img info prints format-specific data. */
import type { ImageInfo } from '@img/block';
import { displayField, fromVhdTimestamp } from './footer.js';
import { vhdSizeRule } from './geometry.js';
import { FORMAT, type VhdState } from './state.js';

const FOOTER_CODES = new Set(['footer-checksum', 'footer-boot-signature', 'footer-copy-invalid', 'footer-copies-differ']);

/** What `img info` shows about the VHD in `s`. */
export function vhdInfo(s: VhdState): ImageInfo {
  const f = s.footer;
  const sizing = vhdSizeRule(f.creatorApp, f.geometry, s.sizeMode);
  const specific: Record<string, unknown> = {
    type: s.type,
    'creator-app': displayField(f.creatorApp),
    'creator-version': `${f.creatorVersion >>> 16}.${f.creatorVersion & 0xffff}`,
    'creator-os': displayField(f.creatorHostOs),
    uuid: f.uniqueId,
    timestamp: fromVhdTimestamp(f.timestamp).toISOString(),
    'current-size': f.currentSize,
    'original-size': f.originalSize,
    geometry: { cylinders: f.geometry.cylinders, heads: f.geometry.heads, sectors: f.geometry.sectorsPerTrack },
    'size-rule': sizing.rule,
    'size-rule-reason': sizing.reason,
  };
  if (s.header) specific['block-size'] = s.blockSize;
  if (s.type === 'differencing' && s.header) {
    specific['parent-uuid'] = s.header.parentUniqueId;
    specific['parent-timestamp'] = fromVhdTimestamp(s.header.parentTimestamp).toISOString();
    specific['parent-name'] = s.header.parentUnicodeName;
  }
  const mismatch = s.problems.filter((p) => FOOTER_CODES.has(p.code));
  if (mismatch.length) specific['footer-mismatch'] = mismatch.map((p) => p.message).join('; ');
  if (s.problems.length) specific.problems = s.problems.map((p) => ({ ...p }));
  if (s.repairable?.length) specific.repairable = s.repairable.map((p) => ({ ...p }));
  if (s.coalescing) specific.coalescing = true;
  const info: ImageInfo = { format: FORMAT, virtualSize: s.size, formatSpecific: specific };
  if (s.type !== 'fixed') info.clusterSize = s.blockSize;
  if (s.type === 'differencing') {
    const name = s.parentName ?? s.header?.parentUnicodeName;
    if (name) info.backingFile = name;
    if (s.parentFile) info.fullBackingFile = s.parentFile;
    info.backingFormat = FORMAT;
  }
  return info;
}
