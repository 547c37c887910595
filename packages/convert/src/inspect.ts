/**
 * inspectImage: what an upload service needs to know before it converts
 * an image from a stranger. It looks at the bytes (every registered
 * format's probe plus a few foreign signatures), opens the image without
 * following any name inside it, and checks its metadata. It never calls a
 * resolver: nothing outside the given storage is ever opened.
 */
import { ERROR_CODES, ImageError, lentStorage, readAscii, unsafe, type Disk, type FormatRegistryLike, type ImageInfo, type Resolver, type Storage } from '@img/block';
import { identify, lookDescription, probeBytes } from './probe.js';

export type FindingCode = 'format-mismatch' | 'multiple-formats' | 'unknown-format' | 'backing-file' | 'data-file' | 'parent-reference' | 'encrypted' | 'unsupported' | 'corrupt' | 'leaks';

export interface SafetyFinding {
  code: FindingCode;
  /** `unsafe` findings make the image unsafe to process; `info` ones do not. */
  severity: 'unsafe' | 'info';
  message: string;
  /** The ImageError code behind it, where there was one. */
  errorCode?: string;
  field?: string;
  offset?: number;
}

export interface InspectResult {
  /** The format the bytes say (undefined if none matched confidently and none was declared). */
  format: string | undefined;
  declared: string | undefined;
  virtualSize: number | undefined;
  /** True when there is no `unsafe` finding. */
  safe: boolean;
  findings: SafetyFinding[];
  info?: ImageInfo;
}

export interface InspectOptions {
  /** The format the caller expects (e.g. what the upload said it is). */
  format?: string;
  registry: FormatRegistryLike;
  /** Run the format's consistency check too (default true; cost follows the metadata size). */
  check?: boolean;
  /**
   * Also read every allocated byte (cost follows the allocated data): finds
   * what only reading shows, such as compressed clusters that inflate to the
   * wrong size (decompression bombs are bounded, never allocated, but still
   * an unusable image).
   */
  deep?: boolean;
}

/** A resolver that opens nothing: every name inside an inspected `format` image is refused. */
const refuseAll =
  (format: string): Resolver =>
  async (request) => {
    throw unsafe(format, request.from.name, `refusing to open ${request.kind} "${request.name}" named inside an inspected image`, {
      field: request.kind,
      actual: request.name,
    });
  };

/** Signatures of formats we do not open but must not confuse with ours. */
async function foreignSignatures(storage: Storage, size: number): Promise<string[]> {
  const found: string[] = [];
  if (size >= 1024) {
    const gpt = await storage.read(512, 8);
    if (readAscii(gpt, 0, 8) === 'EFI PART') found.push('gpt');
  }
  if (size >= 0x8006) {
    const iso = await storage.read(0x8001, 5);
    if (readAscii(iso, 0, 5) === 'CD001') found.push('iso');
  }
  return found;
}

/** A qcow2 left dirty with lazy refcounts: its refcounts may lag behind its L2 tables (spec: "dirty bit"). */
function staleRefcounts(info: ImageInfo | undefined): boolean {
  return info?.dirty === true && info.formatSpecific?.['lazy-refcounts'] === true;
}

function finding(code: FindingCode, message: string, extra: Partial<SafetyFinding> = {}): SafetyFinding {
  return { code, severity: code === 'leaks' ? 'info' : 'unsafe', message, ...extra };
}

function fromError(e: unknown): SafetyFinding {
  if (!ImageError.isInstance(e)) return finding('corrupt', `could not be read: ${(e as Error)?.message ?? String(e)}`);
  const extra: Partial<SafetyFinding> = { errorCode: e.code };
  if (typeof e.data.field === 'string') extra.field = e.data.field;
  if (typeof e.data.offset === 'number') extra.offset = e.data.offset;
  const text = e.message;
  if (/encrypt/i.test(text)) return finding('encrypted', text, extra);
  if (e.code === ERROR_CODES.UNSAFE) {
    if (/data file/i.test(text)) return finding('data-file', text, extra);
    if (/parent/i.test(text)) return finding('parent-reference', text, extra);
    if (/backing/i.test(text)) return finding('backing-file', text, extra);
    return finding('unsupported', text, extra);
  }
  if (e.code === ERROR_CODES.UNSUPPORTED) return finding('unsupported', text, extra);
  return finding('corrupt', text, extra);
}

/**
 * Inspects an image without trusting it.
 *
 * @example
 * ```ts
 * const report = await inspectImage(storage, { registry: defaultRegistry(), format: 'qcow2' });
 * if (!report.safe) throw new Error(report.findings.map((f) => f.message).join('; '));
 * ```
 */
export async function inspectImage(storage: Storage, options: InspectOptions): Promise<InspectResult> {
  const { registry } = options;
  const declared = options.format === undefined ? undefined : (registry.get(options.format)?.name ?? options.format);
  const findings: SafetyFinding[] = [];
  const { head, tail, end, size } = await probeBytes(storage);
  // Registered formats that probe confidently, and the signature of any container format, registered or not.
  const identity = identify(registry, head, size, tail, end);
  const detected = identity.formats[0];

  if (identity.formats.length > 1) {
    findings.push(finding('multiple-formats', `the bytes look like more than one format (${identity.formats.map((f) => lookDescription(identity, f)).join(', ')})`));
  }
  if (detected && detected !== 'raw') {
    const foreign = await foreignSignatures(storage, size);
    if (foreign.length) findings.push(finding('multiple-formats', `a ${detected} image that also carries ${foreign.join(' and ')} signatures`));
  }
  if (declared !== undefined && detected !== undefined && detected !== declared) {
    findings.push(finding('format-mismatch', `declared ${declared} but the bytes are ${lookDescription(identity, detected)}`, { field: 'format' }));
  }
  if (declared !== undefined && declared !== 'raw' && detected === undefined) {
    findings.push(finding('format-mismatch', `declared ${declared} but the bytes are not a ${declared} image`, { field: 'format' }));
  }
  const format = detected ?? declared ?? 'raw';
  const driver = registry.get(format);
  if (!driver) {
    // A container no driver here opens (QED, VDI, ...): never read as anything else.
    if (!findings.some((f) => f.code === 'format-mismatch')) {
      findings.push(finding('unknown-format', `the bytes are ${lookDescription(identity, format)}, a format this library does not open`, { field: 'format' }));
    }
    return { format: detected, declared, virtualSize: undefined, safe: false, findings };
  }

  let info: ImageInfo | undefined;
  let virtualSize: number | undefined;
  let opened = false;
  let disk: Disk | undefined;
  // Lent: openImageFile goes on to open the image from the same storage.
  const lent = lentStorage(storage);
  try {
    // noBacking: read the image's own metadata without following its backing file / parent.
    disk = await driver.open(lent, { readOnly: true, untrusted: true, noBacking: true, resolver: refuseAll(driver.name), formats: registry });
    opened = true;
    virtualSize = disk.size;
    info = (await disk.info?.()) ?? { format: disk.format, virtualSize: disk.size };
    if (options.deep) {
      const chunk = new Uint8Array(1 << 20);
      try {
        for await (const e of disk.extents({ topOnly: true })) {
          if (e.kind !== 'data') continue;
          for (let pos = e.offset; pos < e.offset + e.length; pos += chunk.length) {
            const n = Math.min(chunk.length, e.offset + e.length - pos);
            await disk.readInto(pos, chunk.subarray(0, n));
          }
        }
      } catch (e) {
        findings.push(fromError(e));
      }
    }
  } catch (e) {
    findings.push(fromError(e));
  } finally {
    // Closing the disk releases what it holds (caches, workers) but not the lent storage.
    await disk?.close().catch(() => undefined);
  }
  if (info) {
    if (info.backingFile !== undefined) {
      const code: FindingCode = driver.name === 'vhd' ? 'parent-reference' : 'backing-file';
      findings.push(finding(code, `the image refers to ${driver.name === 'vhd' ? 'a parent' : 'a backing file'} "${info.backingFile}"`, { field: code === 'backing-file' ? 'backing_file' : 'parent locator' }));
    }
    const dataFile = info.formatSpecific?.['data-file'];
    if (typeof dataFile === 'string') findings.push(finding('data-file', `the image keeps its data in an external file "${dataFile}"`, { field: 'data_file' }));
    if (info.formatSpecific?.corrupt === true) {
      // The bit forbids writing, not reading (qemu converts such an image): the check below judges the metadata.
      findings.push(finding('corrupt', 'the image is marked corrupt (a writer found inconsistent metadata); it is only read, and the check judges it', { field: 'incompatible_features', severity: 'info' }));
    }
    if (info.formatSpecific?.type === 'differencing' && info.backingFile === undefined) {
      findings.push(finding('parent-reference', 'a differencing disk refers to a parent image', { field: 'disk type' }));
    }
  }
  if (opened && (options.check ?? true) && driver.check) {
    try {
      const result = await driver.check(lent, { resolver: refuseAll(driver.name), formats: registry });
      if (result.corruptions > 0) {
        const text = `check found ${result.corruptions} corruption${result.corruptions === 1 ? '' : 's'}${result.messages[0] ? `: ${result.messages[0]}` : ''}`;
        // Lazy refcounts left dirty are stale by design (the spec has the next writer rebuild them); reading
        // never consults them, so what the check counts there is not a reason to refuse.
        if (staleRefcounts(info)) findings.push(finding('corrupt', `${text} (expected: the image was left dirty with lazy refcounts)`, { severity: 'info' }));
        else findings.push(finding('corrupt', text));
      }
      if (result.leaks > 0) findings.push(finding('leaks', `check found ${result.leaks} leaked cluster${result.leaks === 1 ? '' : 's'} (harmless)`));
    } catch (e) {
      findings.push(fromError(e));
    }
  }
  const safe = !findings.some((f) => f.severity === 'unsafe');
  return { format: detected ?? (opened ? format : undefined), declared, virtualSize, safe, findings, ...(info ? { info } : {}) };
}

/** One line saying why an image is unsafe, for errors and the CLI. */
export function unsafeSummary(result: InspectResult): string {
  const bad = result.findings.filter((f) => f.severity === 'unsafe');
  return bad.map((f) => `${f.code}: ${f.message}`).join('; ');
}
