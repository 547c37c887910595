/**
 * `img info`'s human output, line for line as qemu-img 7.2 prints it
 * (block/qapi.c's image info dump): the same lines in the same order, sizes
 * through formatSize, the snapshot table's columns, and "Format specific
 * information" as qemu dumps a QAPI object, in the order its QDict keeps
 * the keys.
 */
import { formatSize, type ImageInfo, type SnapshotInfo } from '@img/block';
import { printfString } from './printf.js';

/** qemu's name for a format where it differs from ours: VHD is "vpc" to qemu-img. */
export function qemuFormatName(format: string): string {
  return format === 'vhd' ? 'vpc' : format;
}

export interface InfoLayer {
  data: ImageInfo;
  /** Bytes the file occupies on its device (st_blocks * 512). */
  /** Bytes the file takes on its disk; undefined where there is no file (an NBD export), which qemu-img calls unavailable. */
  actual: number | undefined;
  path: string;
  /** The backing file's actual path cannot be determined (a relative name in an image read over NBD). */
  backingUnresolved?: boolean;
}

/** The human `info` text of one image. */
export function humanInfo({ data, actual, path, backingUnresolved }: InfoLayer): string {
  const lines = [`image: ${path}`, `file format: ${qemuFormatName(data.format)}`, `virtual size: ${formatSize(data.virtualSize)} (${data.virtualSize} bytes)`, `disk size: ${actual === undefined ? 'unavailable' : formatSize(actual)}`];
  if (data.encrypted) lines.push('encrypted: yes');
  if (data.clusterSize !== undefined) lines.push(`cluster_size: ${data.clusterSize}`);
  if (data.dirty) lines.push('cleanly shut down: no');
  if (data.backingFile !== undefined) {
    const full = data.fullBackingFile;
    const where = backingUnresolved ? ' (cannot determine actual path)' : full !== undefined && full !== data.backingFile ? ` (actual path: ${full})` : '';
    lines.push(`backing file: ${data.backingFile}${where}`);
  }
  if (data.backingFormat !== undefined) lines.push(`backing file format: ${data.backingFormat}`);
  if (data.snapshots?.length) lines.push('Snapshot list:', ...snapshotTable(data.snapshots));
  if (data.formatSpecific) {
    lines.push('Format specific information:');
    dumpValue(data.formatSpecific, 1, lines);
  }
  return lines.join('\n') + '\n';
}

/**
 * The snapshot table (`info`, `snapshot -l`): a header line and one line per
 * snapshot, as qemu's bdrv_snapshot_dump prints them: the header with
 * "%-10s%-17s%8s%20s%13s%11s", each snapshot with "%-9s %-16s %8s%20s%13s%11s"
 * (widths in bytes: a UTF-8 name is padded by its bytes; a name of 17 bytes
 * or more is followed by the one space and the size's own padding).
 */
export function snapshotTable(snapshots: readonly SnapshotInfo[]): string[] {
  const s = printfString;
  const lines = [`${s('ID', 10, true)}${s('TAG', 17, true)}${s('VM SIZE', 8)}${s('DATE', 20)}${s('VM CLOCK', 13)}${s('ICOUNT', 11)}`];
  for (const snap of snapshots) {
    const icount = snap.icount === undefined || snap.icount < 0 ? '' : String(snap.icount);
    lines.push(`${s(snap.id, 9, true)} ${s(snap.name, 16, true)} ${s(formatSize(snap.vmStateSize), 8)}${s(localDate(snap.dateSec), 20)}${s(formatClock(snap.vmClockNsec), 13)}${s(icount, 11)}`);
  }
  return lines;
}

/** "2026-11-21 12:51:07" in local time, as strftime("%Y-%m-%d %H:%M:%S") with localtime(). */
function localDate(sec: number): string {
  const d = new Date(sec * 1000);
  const two = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** The guest clock as hours:minutes:seconds.milliseconds (hours at least two digits). */
function formatClock(nsec: number): string {
  const ms = Math.floor(nsec / 1e6);
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor(ms / 60_000) % 60;
  const s = Math.floor(ms / 1000) % 60;
  return `${String(h).padStart(2, '0')}:${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}.${String(ms % 1000).padStart(3, '0')}`;
}

/**
 * qemu's hash for QDict keys (tdb_hash, from gdbm): its dictionaries iterate
 * their 512 buckets in order, so this decides the order in which qemu-img
 * prints an object's members.
 */
function qdictBucket(key: string): number {
  const bytes = new TextEncoder().encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  return ((Math.imul(1103515243, value) + 12345) >>> 0) % 512;
}

/**
 * An object's keys in the order qemu's QDict yields them: by bucket, and
 * within a bucket the key inserted last first (keys are inserted in the
 * order the object lists them).
 */
export function qdictOrder(keys: readonly string[]): string[] {
  return keys
    .map((key, index) => ({ key, index, bucket: qdictBucket(key) }))
    .sort((a, b) => a.bucket - b.bucket || b.index - a.index)
    .map((k) => k.key);
}

function isComposite(value: unknown): value is object {
  return typeof value === 'object' && value !== null;
}

function scalar(value: unknown): string {
  if (typeof value === 'number' && !Number.isInteger(value)) return value.toFixed(6);
  return String(value);
}

/** qemu's dump of a QAPI value: `key: value`, composites on their own lines one level (4 spaces) deeper, list items as `[i]:`. */
function dumpValue(value: object, level: number, out: string[]): void {
  const pad = ' '.repeat(level * 4);
  const entries: Array<[string, unknown]> = Array.isArray(value) ? value.map((v, i) => [`[${i}]`, v]) : qdictOrder(Object.keys(value).filter((k) => (value as Record<string, unknown>)[k] !== undefined)).map((k) => [k.replace(/-/g, ' '), (value as Record<string, unknown>)[k]]);
  for (const [label, v] of entries) {
    if (isComposite(v)) {
      out.push(`${pad}${label}:`);
      dumpValue(v, level + 1, out);
    } else {
      out.push(`${pad}${label}: ${scalar(v)}`);
    }
  }
}

/** A copy of a JSON value with every object's keys in qemu's QDict order, so `--output=json` lists fields as qemu-img does. */
export function qdictSorted(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(qdictSorted);
  if (!isComposite(value)) return value;
  const record = value as Record<string, unknown>;
  return Object.fromEntries(qdictOrder(Object.keys(record)).map((k) => [k, qdictSorted(record[k])]));
}

/**
 * JSON as qemu's pretty printer writes it (`--output=json`): four-space
 * indents, and an empty list or object opened and closed on lines of their
 * own (`"flags": [` then `]`), where JSON.stringify writes `[]`.
 */
export function qemuJson(value: unknown): string {
  // A line ending in [] or {} (or with a comma after) is an empty container: a string value would end in a quote.
  return qemuJsonEscapes(JSON.stringify(value, null, 4)).replace(/^( *)(.*)(\[\]|\{\})(,?)$/gm, (_line, indent: string, head: string, empty: string, comma: string) => `${indent}${head}${empty[0]}\n${indent}${empty[1]}${comma}`);
}

/**
 * A copy of a JSON value with every object key spelled as qemu spells its
 * JSON keys (`virtual-size`, `dirty-flag`): a camelCase key of the API
 * (`clustersReleased`) becomes `clusters-released`. For the commands qemu-img
 * lacks (sparsify, compact, inspect), whose output is the API's result, so
 * that every `--output=json` of img reads alike.
 */
export function qemuStyleKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(qemuStyleKeys);
  if (!isComposite(value)) return value;
  return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), qemuStyleKeys(v)]));
}

/**
 * JSON text from JSON.stringify with its strings escaped as qemu's JSON
 * writer (qobject/qjson.c) escapes them: every character outside printable
 * ASCII as \uXXXX in upper-case hex (a character past U+FFFF as its
 * surrogate pair, DEL too), where JSON.stringify writes non-ASCII as it is
 * and control characters in lower case. Outside strings JSON text is ASCII,
 * so the whole text can be rewritten.
 */
export function qemuJsonEscapes(json: string): string {
  return json.replace(/\\(?:\\|u([0-9a-f]{4}))/g, (escape, hex?: string) => (hex === undefined ? escape : `\\u${hex.toUpperCase()}`)).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`);
}
