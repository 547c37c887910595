/**
 * A small OVF reader (DMTF DSP0243): the file references, the disks and
 * the virtual system's name. The XML is read by a minimal tokenizer of our
 * own: no DOCTYPE, no entity declarations (so no entity expansion), only
 * the five predefined entities and character references, and bounded
 * size, depth and element count.
 */
import { corrupt, unsafe, unsupported } from '@img/block';

/** Largest OVF descriptor read. */
export const MAX_OVF_BYTES = 4 * 1024 * 1024;
const MAX_DEPTH = 64;
const MAX_ELEMENTS = 100_000;

/** A `References/File` entry. */
export interface OvfFile {
  id: string;
  href: string;
  size?: number;
  /** `ovf:compression` (DSP0243 §5.2: "gzip"; absent or "identity" when the member is stored as is). */
  compression?: string;
  /** `ovf:chunkSize`: the file is split into members `href.000000000`, `href.000000001`, ... of this size. */
  chunkSize?: number;
}

/** A `DiskSection/Disk` entry. */
export interface OvfDisk {
  diskId: string;
  fileRef?: string;
  /** Capacity in bytes (capacity times capacityAllocationUnits). */
  capacity: number;
  populatedSize?: number;
  /** The format URL (streamOptimized VMDK: `http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized`). */
  format?: string;
}

/** What openOva needs from an OVF descriptor. */
export interface OvfDescriptor {
  files: OvfFile[];
  disks: OvfDisk[];
  /** The virtual system's `Name` (or its `ovf:id`). */
  name?: string;
}

interface Element {
  name: string;
  attrs: Map<string, string>;
  children: Element[];
  text: string;
}

const PREDEFINED: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function local(name: string): string {
  const i = name.indexOf(':');
  return i < 0 ? name : name.slice(i + 1);
}

function decodeEntities(s: string, file: string): string {
  return s.replace(/&([^;&\s]{0,16});/g, (_m, ref: string) => {
    if (ref in PREDEFINED) return PREDEFINED[ref]!;
    const code = ref.startsWith('#x') ? parseInt(ref.slice(2), 16) : ref.startsWith('#') ? parseInt(ref.slice(1), 10) : NaN;
    if (!Number.isInteger(code) || code <= 0 || code > 0x10ffff) throw unsafe('ova', file, `the OVF uses the entity "&${ref};", which is not predefined (entities are not expanded)`, { field: 'entity', actual: ref });
    return String.fromCodePoint(code);
  });
}

/** Parses XML into elements (local names, namespaces dropped). */
function parseXml(xml: string, file: string): Element {
  const root: Element = { name: '#document', attrs: new Map(), children: [], text: '' };
  const stack: Element[] = [root];
  let count = 0;
  let p = 0;
  const fail = (what: string): never => {
    throw corrupt('ova', file, `the OVF is not well-formed XML: ${what} at character ${p}`, { field: 'xml', offset: p });
  };
  while (p < xml.length) {
    const lt = xml.indexOf('<', p);
    if (lt < 0 || lt > p) {
      const end = lt < 0 ? xml.length : lt;
      stack[stack.length - 1]!.text += decodeEntities(xml.slice(p, end), file);
      p = end;
      continue;
    }
    if (xml.startsWith('<?', p)) {
      const e = xml.indexOf('?>', p);
      if (e < 0) fail('an unterminated processing instruction');
      p = e + 2;
    } else if (xml.startsWith('<!--', p)) {
      const e = xml.indexOf('-->', p);
      if (e < 0) fail('an unterminated comment');
      p = e + 3;
    } else if (xml.startsWith('<![CDATA[', p)) {
      const e = xml.indexOf(']]>', p);
      if (e < 0) fail('an unterminated CDATA section');
      stack[stack.length - 1]!.text += xml.slice(p + 9, e);
      p = e + 3;
    } else if (xml.startsWith('<!', p)) {
      const what = /^<!([A-Z]+)/.exec(xml.slice(p, p + 16))?.[1] ?? '';
      throw unsafe('ova', file, `the OVF holds a <!${what}> declaration; DOCTYPE and ENTITY declarations are refused (no entity expansion)`, { field: 'xml', offset: p, actual: what });
    } else if (xml.startsWith('</', p)) {
      const e = xml.indexOf('>', p);
      if (e < 0) fail('an unterminated end tag');
      const name = xml.slice(p + 2, e).trim();
      // A name, not whatever runs up to the next '>': a damaged end tag would otherwise put lines of XML in the message.
      if (!/^[A-Za-z_][\w.:-]*$/.test(name)) fail('a malformed end tag');
      const top = stack.pop()!;
      if (stack.length === 0 || top.name !== local(name)) fail(`the end tag </${name}> does not match <${top.name}>`);
      p = e + 1;
    } else {
      const m = /^<([A-Za-z_][\w.:-]*)/.exec(xml.slice(p, p + 256));
      if (!m) fail('a malformed start tag');
      if (++count > MAX_ELEMENTS) throw unsupported('ova', file, `the OVF holds more than ${MAX_ELEMENTS} elements`, { field: 'xml' });
      const el: Element = { name: local(m![1]!), attrs: new Map(), children: [], text: '' };
      p += m![0].length;
      const attr = /\s*([A-Za-z_][\w.:-]*)\s*=\s*("([^"<]*)"|'([^'<]*)')|\s*(\/?>)/y;
      let closed = false;
      while (true) {
        attr.lastIndex = p;
        const a = attr.exec(xml);
        if (!a) fail(`a malformed attribute in <${el.name}>`);
        p = attr.lastIndex;
        if (a![5]) {
          closed = a![5] === '/>';
          break;
        }
        el.attrs.set(local(a![1]!), decodeEntities(a![3] ?? a![4] ?? '', file));
      }
      stack[stack.length - 1]!.children.push(el);
      if (!closed) {
        stack.push(el);
        if (stack.length > MAX_DEPTH) throw unsupported('ova', file, `the OVF nests elements deeper than ${MAX_DEPTH}`, { field: 'xml', offset: p });
      }
    }
  }
  if (stack.length !== 1) fail(`<${stack[stack.length - 1]!.name}> is never closed`);
  return root;
}

function* walk(e: Element): Generator<Element> {
  yield e;
  for (const c of e.children) yield* walk(c);
}

const UNIT_WORDS: Record<string, number> = { byte: 1, bytes: 1, kilobytes: 2 ** 10, megabytes: 2 ** 20, gigabytes: 2 ** 30, terabytes: 2 ** 40 };

/** Bytes per unit of `capacityAllocationUnits` ("byte", "byte * 2^30", "GigaBytes"). */
export function allocationUnits(units: string | undefined, file: string): number {
  if (units === undefined || units.trim() === '') return 1;
  const u = units.trim().toLowerCase();
  if (u in UNIT_WORDS) return UNIT_WORDS[u]!;
  const m = /^byte\s*\*\s*(\d+)\s*\^\s*(\d+)$/.exec(u);
  if (m) {
    const v = Number(m[1]) ** Number(m[2]);
    if (Number.isSafeInteger(v) && v > 0) return v;
  }
  throw unsupported('ova', file, `the OVF's capacityAllocationUnits "${units}" is not understood`, { field: 'capacityAllocationUnits', actual: units });
}

function count(value: string | undefined, file: string, field: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(Number(value))) throw corrupt('ova', file, `the OVF's ${field} "${value}" is not a whole number`, { field, actual: value });
  return Number(value);
}

/** Parses an OVF descriptor. `file` names it in errors. */
export function parseOvf(xml: string, file: string): OvfDescriptor {
  if (xml.length > MAX_OVF_BYTES) throw unsupported('ova', file, `the OVF is ${xml.length} bytes (at most ${MAX_OVF_BYTES})`, { field: 'size', actual: xml.length });
  const root = parseXml(xml.replace(/^\uFEFF/, ''), file);
  const envelope = root.children.find((c) => c.name === 'Envelope');
  if (!envelope) throw corrupt('ova', file, 'the OVF has no Envelope element', { field: 'Envelope' });
  const out: OvfDescriptor = { files: [], disks: [] };
  for (const e of walk(envelope)) {
    if (e.name === 'References') {
      for (const f of e.children.filter((c) => c.name === 'File')) {
        const id = f.attrs.get('id');
        const href = f.attrs.get('href');
        if (!id || !href) throw corrupt('ova', file, 'an OVF File element lacks its id or href', { field: 'File' });
        const size = count(f.attrs.get('size'), file, `size of File "${id}"`);
        const compression = f.attrs.get('compression');
        const chunkSize = count(f.attrs.get('chunkSize'), file, `chunkSize of File "${id}"`);
        out.files.push({ id, href, ...(size !== undefined ? { size } : {}), ...(compression !== undefined && compression !== 'identity' ? { compression } : {}), ...(chunkSize ? { chunkSize } : {}) });
      }
    } else if (e.name === 'DiskSection') {
      for (const d of e.children.filter((c) => c.name === 'Disk')) {
        const diskId = d.attrs.get('diskId');
        if (!diskId) throw corrupt('ova', file, 'an OVF Disk element lacks its diskId', { field: 'Disk' });
        const capacity = count(d.attrs.get('capacity'), file, `capacity of Disk "${diskId}"`);
        if (capacity === undefined) throw corrupt('ova', file, `the OVF Disk "${diskId}" has no capacity`, { field: 'capacity' });
        const bytes = capacity * allocationUnits(d.attrs.get('capacityAllocationUnits'), file);
        if (!Number.isSafeInteger(bytes)) throw unsupported('ova', file, `the OVF Disk "${diskId}" has a capacity too large`, { field: 'capacity', actual: bytes });
        const populatedSize = count(d.attrs.get('populatedSize'), file, `populatedSize of Disk "${diskId}"`);
        const fileRef = d.attrs.get('fileRef');
        const format = d.attrs.get('format');
        out.disks.push({ diskId, capacity: bytes, ...(fileRef ? { fileRef } : {}), ...(populatedSize !== undefined ? { populatedSize } : {}), ...(format ? { format } : {}) });
      }
    } else if (e.name === 'VirtualSystem' && out.name === undefined) {
      const name = e.children.find((c) => c.name === 'Name')?.text.trim() || e.attrs.get('id');
      if (name) out.name = name;
    }
  }
  return out;
}

/**
 * The tar member names an OVF `href` may stand for, most literal first: the
 * href with leading `./` removed, then, since an href is a URI reference
 * (DSP0243 §7.1), the same with a `file:` scheme dropped and
 * percent-escapes decoded (`vm%20disk.vmdk` is the member `vm disk.vmdk`).
 */
export function hrefMemberNames(href: string): string[] {
  const plain = href.replace(/^(\.\/)+/, '');
  let decoded = plain.replace(/^file:(\/\/)?/i, '');
  try {
    decoded = decodeURIComponent(decoded);
  } catch {
    // A stray '%' that is no escape: the name as written.
  }
  decoded = decoded.replace(/^(\.\/)+/, '');
  return decoded === plain ? [plain] : [plain, decoded];
}

/**
 * Refuses a File whose encoding this package cannot read: an
 * `ovf:compression` other than "gzip" (DSP0243 §7.1 defines only gzip;
 * VMware's API also names bzip2), as ERR_IMG_UNSUPPORTED naming the value.
 * A gzip member is read through ova-gzip.ts; a File split into chunks
 * (`ovf:chunkSize`) through ova-chunks.ts, its chunks joined before they
 * are inflated (the chunks are of the file as stored).
 */
export function refuseEncoding(ref: OvfFile, file: string): void {
  if (ref.compression !== undefined && ref.compression !== 'gzip') {
    throw unsupported('ova', file, `the OVF's file "${ref.href}" is compressed with ovf:compression="${ref.compression}", which is not supported (only "gzip" is read); unpack the OVA and decompress the member first`, { field: 'compression', actual: ref.compression });
  }
}
