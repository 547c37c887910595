/**
 * The descriptor (VMware "Virtual Disk Format 1.1", "The Descriptor"):
 * text, either embedded in a sparse extent (descriptorOffset) or a file of
 * its own, with three sections: header fields (`version`, `CID`,
 * `parentCID`, `createType`, `parentFileNameHint`, `encoding`), extent
 * lines (`RW 2048 SPARSE "a.vmdk"`, `RW 2048 FLAT "a-flat.vmdk" 0`) and
 * the disk database (`ddb.key = "value"`).
 *
 * parse and serialize keep each field's order and quoting, so a descriptor
 * written by qemu-img or VMware serializes back to the same text.
 */
import { corrupt, unsupported } from '@img/block';

/** The largest descriptor read (qemu reads at most 1 MiB - 1 of it). */
export const MAX_DESCRIPTOR_BYTES = (1 << 20) - 1;
/** The most extent lines accepted (a 64 TiB twoGbMaxExtent disk has 32768). */
export const MAX_EXTENTS = 32768;
/** The first line of every descriptor VMware and qemu write. */
export const DESCRIPTOR_SIGNATURE = '# Disk DescriptorFile';
/** CID / parentCID value of "no parent". */
export const CID_NO_PARENT = 0xffffffff;

/** Access column of an extent line. */
export type ExtentAccess = 'RW' | 'RDONLY' | 'NOACCESS';
/** Type column of an extent line. */
export type ExtentType = 'FLAT' | 'SPARSE' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'VMFSRDM' | 'VMFSRAW' | 'SESPARSE';

const ACCESS: readonly string[] = ['RW', 'RDONLY', 'NOACCESS'];
const TYPES: readonly string[] = ['FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'VMFSRDM', 'VMFSRAW', 'SESPARSE'];

/** One extent line. */
export interface DescriptorExtent {
  access: ExtentAccess;
  /** Size in sectors. */
  sectors: number;
  type: ExtentType;
  /** The file name as written (absent for ZERO extents). */
  fileName?: string;
  /** FLAT extents: where the extent's data starts in its file, in sectors. */
  offset?: number;
}

/** One `key=value` field of the header section, with its quoting. */
export interface DescriptorField {
  key: string;
  value: string;
  quoted: boolean;
}

/** A parsed descriptor. */
export interface VmdkDescriptor {
  /** Header fields in file order (version, encoding, CID, parentCID, createType, parentFileNameHint, ...). */
  fields: DescriptorField[];
  extents: DescriptorExtent[];
  /** Disk database entries in file order (`ddb.adapterType` -> `ide`). */
  ddb: Array<[string, string]>;
}

function unquote(text: string): { value: string; quoted: boolean } {
  const t = text.trim();
  if (t.length >= 2 && t.startsWith('"') && t.endsWith('"')) return { value: t.slice(1, -1), quoted: true };
  return { value: t, quoted: false };
}

/** Is this text (the start of a file or of the embedded area) a descriptor? */
export function looksLikeDescriptor(text: string): boolean {
  const t = text.replace(/^\uFEFF/, '').trimStart();
  return t.startsWith(DESCRIPTOR_SIGNATURE) || /^\s*createType\s*=/m.test(t.slice(0, 4096));
}

/**
 * Decodes descriptor bytes: up to the first NUL, in the `encoding` the
 * descriptor names (UTF-8 when it names none or one the platform lacks).
 */
export function decodeDescriptorBytes(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  const body = nul >= 0 ? bytes.subarray(0, nul) : bytes;
  // The encoding line itself is ASCII: find it before decoding the rest.
  const ascii = new TextDecoder('latin1').decode(body.subarray(0, Math.min(body.length, 4096)));
  const m = /^\s*encoding\s*=\s*"?([^"\r\n]+)"?/m.exec(ascii);
  const label = m?.[1]?.trim() ?? 'utf-8';
  try {
    return new TextDecoder(label.toLowerCase() === 'gbk' ? 'gbk' : label).decode(body);
  } catch {
    return new TextDecoder('utf-8').decode(body);
  }
}

/** Parses descriptor text. Unknown lines are ignored, as VMware and qemu do; a malformed extent line is ERR_IMG_CORRUPT. */
export function parseDescriptor(text: string, file?: string): VmdkDescriptor {
  const d: VmdkDescriptor = { fields: [], extents: [], ddb: [] };
  // Lines ended by CR alone read as one comment line (no createType, no extent): say what is wrong instead.
  const cr = text.indexOf('\r');
  if (cr >= 0 && text[cr + 1] !== '\n' && !text.includes('\n')) {
    throw unsupported('vmdk', file, `the descriptor's lines end in a carriage return alone (classic Mac OS line endings; the first at offset ${cr} of the descriptor), which neither img nor qemu-img reads: convert them to LF or CRLF`, { field: 'descriptor', offset: cr });
  }
  for (const raw of text.replace(/^\uFEFF/, '').split('\n')) {
    const line = raw.replace(/\r$/, '').trim();
    if (!line || line.startsWith('#')) continue;
    const first = line.split(/\s+/, 1)[0]!;
    if (ACCESS.includes(first)) {
      d.extents.push(parseExtentLine(line, file));
      if (d.extents.length > MAX_EXTENTS) throw corrupt('vmdk', file, `the descriptor lists more than ${MAX_EXTENTS} extents`, { field: 'extents' });
      continue;
    }
    const eq = line.indexOf('=');
    if (eq <= 0) continue;
    const key = line.slice(0, eq).trim();
    const { value, quoted } = unquote(line.slice(eq + 1));
    if (key.startsWith('ddb.')) d.ddb.push([key, value]);
    else d.fields.push({ key, value, quoted });
  }
  return d;
}

function parseExtentLine(line: string, file?: string): DescriptorExtent {
  // access sectors type ["file name" [offset]]
  const m = /^(\S+)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/.exec(line);
  const bad = (why: string) => corrupt('vmdk', file, `invalid extent line "${line.slice(0, 200)}": ${why}`, { field: 'extent line' });
  if (!m) throw bad('expected: access sectors type "file" [offset]');
  const [, access, sectorsText, type, fileName, offsetText] = m;
  if (!TYPES.includes(type!)) throw bad(`unknown extent type ${type}`);
  const sectors = Number(sectorsText);
  if (!Number.isSafeInteger(sectors) || sectors <= 0) throw bad('the size must be a positive number of sectors');
  const e: DescriptorExtent = { access: access as ExtentAccess, sectors, type: type as ExtentType };
  if (type !== 'ZERO') {
    if (fileName === undefined || fileName === '') throw bad('a file name is required');
    e.fileName = fileName;
  }
  // A ZERO extent has no file, so no offset either: one written after an ignored name would come back from
  // serializeDescriptor as "RW n ZERO 0", which this parser refuses (a writable open's CID update broke the image).
  if (offsetText !== undefined && type !== 'ZERO') {
    const offset = Number(offsetText);
    if (!Number.isSafeInteger(offset)) throw bad('the offset does not fit');
    e.offset = offset;
  }
  if (type === 'FLAT' && e.offset === undefined) throw bad('a FLAT extent needs an offset');
  return e;
}

/** The value of header field `key` (case-sensitive, as VMware writes them). */
export function descriptorField(d: VmdkDescriptor, key: string): string | undefined {
  return d.fields.find((f) => f.key === key)?.value;
}

/** Sets (or adds, at the end of the header section) field `key`. */
export function setDescriptorField(d: VmdkDescriptor, key: string, value: string, quoted: boolean): void {
  const f = d.fields.find((x) => x.key === key);
  if (f) {
    f.value = value;
    f.quoted = quoted;
  } else d.fields.push({ key, value, quoted });
}

/** A CID field as a number (hex text), or undefined when absent or malformed. */
export function parseCid(text: string | undefined): number | undefined {
  if (text === undefined || !/^[0-9a-fA-F]{1,8}$/.test(text)) return undefined;
  return parseInt(text, 16);
}

/** A CID as the 8 lowercase hex digits VMware writes. */
export function formatCid(cid: number): string {
  return (cid >>> 0).toString(16).padStart(8, '0');
}

function extentLine(e: DescriptorExtent): string {
  let s = `${e.access} ${e.sectors} ${e.type}`;
  if (e.fileName !== undefined) s += ` "${e.fileName}"`;
  if (e.offset !== undefined) s += ` ${e.offset}`;
  return s;
}

/** Serializes in the layout VMware and qemu write (header, "# Extent description", "# The Disk Data Base"). */
export function serializeDescriptor(d: VmdkDescriptor): string {
  const out = [DESCRIPTOR_SIGNATURE];
  for (const f of d.fields) out.push(`${f.key}=${f.quoted ? `"${f.value}"` : f.value}`);
  out.push('', '# Extent description');
  for (const e of d.extents) out.push(extentLine(e));
  out.push('', '# The Disk Data Base', '#DDB', '');
  for (const [k, v] of d.ddb) out.push(`${k} = "${v}"`);
  return out.join('\n') + '\n';
}
