/**
 * Descriptors of new images: the fields qemu-img writes, and for
 * streamOptimized also two of VMware's own exporter (open-vmdk's
 * makeDiskDescriptorFile: an `encoding` and a `ddb.longContentID`), so
 * that vSphere imports what we write. The adapter is qemu-img's default,
 * ide (16/63 geometry), unless asked for; an OVA asks for lsilogic (255/63).
 * README.md lists each field and its source.
 */
import { CID_NO_PARENT, formatCid, type DescriptorField, type VmdkDescriptor } from './descriptor.js';

/** Adapter types `adapter_type` accepts (qemu-img's list). */
export const ADAPTER_TYPES = ['ide', 'lsilogic', 'buslogic', 'legacyESX', 'pvscsi'] as const;
/** A disk adapter type. */
export type AdapterType = (typeof ADAPTER_TYPES)[number];
/** ddb.virtualHWVersion when none is asked for (qemu-img's and open-vmdk's "4"). */
export const DEFAULT_HW_VERSION = '4';
/** ddb.toolsVersion when none is asked for (2^31-1: "unknown tools", as qemu-img and open-vmdk write). */
export const DEFAULT_TOOLS_VERSION = '2147483647';

/** A random CID that is neither "no parent" (ffffffff) nor fffffffe (both mean something to VMware). */
export function newCid(): number {
  const b = new Uint32Array(1);
  for (;;) {
    globalThis.crypto.getRandomValues(b);
    if (b[0]! < 0xfffffffe) return b[0]!;
  }
}

/** What a new descriptor says. */
export interface NewDescriptorSpec {
  createType: 'monolithicSparse' | 'monolithicFlat' | 'streamOptimized' | 'twoGbMaxExtentSparse' | 'twoGbMaxExtentFlat';
  /** Virtual size in sectors. */
  sectors: number;
  /** The extent's file name as the descriptor names it. */
  extentFile: string;
  adapterType: AdapterType;
  hwVersion: string;
  toolsVersion: string;
  cid?: number;
  /** A parent: its CID and the name by which the child finds it. */
  parent?: { cid: number; fileName: string };
}

/** Legacy BIOS geometry VMware records: 16 heads for IDE, 255 for SCSI; cylinders capped as qemu caps them. */
export function geometry(sectors: number, adapter: AdapterType): { cylinders: number; heads: number; sectors: number } {
  const heads = adapter === 'ide' ? 16 : 255;
  const max = adapter === 'ide' ? 16383 : 65535;
  return { cylinders: Math.min(max, Math.floor(sectors / (heads * 63))), heads, sectors: 63 };
}

function hex32(): string {
  return formatCid(newCid());
}

/** Builds the descriptor of a new image. */
export function newDescriptor(spec: NewDescriptorSpec): VmdkDescriptor {
  const stream = spec.createType === 'streamOptimized';
  const cid = spec.cid ?? newCid();
  const fields: DescriptorField[] = [{ key: 'version', value: '1', quoted: false }];
  if (stream) fields.push({ key: 'encoding', value: 'UTF-8', quoted: true });
  fields.push({ key: 'CID', value: formatCid(cid), quoted: false }, { key: 'parentCID', value: formatCid(spec.parent?.cid ?? CID_NO_PARENT), quoted: false });
  fields.push({ key: 'createType', value: spec.createType, quoted: true });
  if (spec.parent) fields.push({ key: 'parentFileNameHint', value: spec.parent.fileName, quoted: true });
  const g = geometry(spec.sectors, spec.adapterType);
  const ddb: Array<[string, string]> = [];
  if (stream) ddb.push(['ddb.longContentID', hex32() + hex32() + hex32() + formatCid(cid)]);
  ddb.push(['ddb.virtualHWVersion', spec.hwVersion], ['ddb.geometry.cylinders', String(g.cylinders)], ['ddb.geometry.heads', String(g.heads)], ['ddb.geometry.sectors', String(g.sectors)], ['ddb.adapterType', spec.adapterType], ['ddb.toolsVersion', spec.toolsVersion]);
  const extent = spec.createType === 'monolithicFlat' ? { access: 'RW' as const, sectors: spec.sectors, type: 'FLAT' as const, fileName: spec.extentFile, offset: 0 } : { access: 'RW' as const, sectors: spec.sectors, type: 'SPARSE' as const, fileName: spec.extentFile };
  return { fields, extents: [extent], ddb };
}
