// The test page: what a web app does with the SDK. Files arrive through
// <input type=file>; each (qcow2, VHD, streamOptimized VMDK, raw) is opened through BlobStorage, its guest bytes
// hashed with WebCrypto and its extents listed; a qcow2 is converted to a
// dynamic VHD in memory and read back (an encrypted one, *-luks.qcow2, is
// opened with its passphrase); a deflate-compressed qcow2 is
// written in memory for the Node side to hand to qemu-img. Results go to
// window.__imgResults (and, as JSON, into #results).
import { BlobStorage, BlobTarget, openRaw, sparseCopy, type Disk } from '@img/block';
import { createQcow2, openQcow2, qcow2Codecs } from '@img/qcow2';
import { createVhd, openVhd } from '@img/vhd';
import { openVmdk, vmdkCodecs } from '@img/vmdk';

export interface FileResult {
  name: string;
  format: string;
  size: number;
  sha256?: string;
  extents?: Array<{ offset: number; length: number; kind: string }>;
  /** qcow2 only: the same bytes after qcow2 -> dynamic VHD in memory, read back through a Blob. */
  vhdSha256?: string;
  vhdSize?: number;
  /** The converted VHD itself (base64, when it is at most 8 MiB), for qemu-img on the Node side. */
  vhdBase64?: string;
  error?: string;
  /** Milliseconds for this file: open, hash, extents and (qcow2) the VHD round trip. */
  ms?: number;
}

export interface PageResults {
  codecs: string;
  /** The codecs @img/vmdk's compressed grains use in the page. */
  vmdkCodecs: string;
  hasNodeGlobals: boolean;
  files: FileResult[];
  /** A qcow2 written here with deflate clusters (hex of nothing: base64), and what its guest holds. */
  written?: { qcow2Base64: string; guestSha256: string; readBackSha256: string };
  error?: string;
  ms: number;
}

declare global {
  interface Window {
    __imgResults?: PageResults;
  }
}

function hex(buf: ArrayBuffer): string {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function base64(bytes: Uint8Array): string {
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(bin);
}

async function sha256Of(disk: Disk, size = disk.size): Promise<string> {
  // The fixtures are small: one buffer, one digest.
  const all = new Uint8Array(size);
  const step = 1 << 20;
  for (let at = 0; at < size; at += step) await disk.readInto(at, all.subarray(at, Math.min(size, at + step)));
  return hex(await crypto.subtle.digest('SHA-256', all));
}

async function open(file: File): Promise<{ format: string; disk: Disk }> {
  const storage = new BlobStorage(file);
  // An encrypted test image (*-luks.qcow2) opens with the passphrase the test made it with.
  if (file.name.endsWith('-luks.qcow2')) return { format: 'qcow2', disk: await openQcow2(storage, { readOnly: true, passphrase: 'browser pass' }) };
  if (file.name.endsWith('.qcow2')) return { format: 'qcow2', disk: await openQcow2(storage, { readOnly: true }) };
  if (file.name.endsWith('.vhd')) return { format: 'vhd', disk: await openVhd(storage, { readOnly: true }) };
  // A streamOptimized VMDK holds its descriptor and grains in the one file: no resolver needed (nor given).
  if (file.name.endsWith('.vmdk')) return { format: 'vmdk', disk: await openVmdk(storage, { readOnly: true }) };
  return { format: 'raw', disk: await openRaw(storage, { readOnly: true }) };
}

async function inspect(file: File): Promise<FileResult> {
  const { format, disk } = await open(file);
  try {
    const result: FileResult = { name: file.name, format, size: disk.size, sha256: await sha256Of(disk), extents: [] };
    for await (const e of disk.extents()) result.extents!.push({ offset: e.offset, length: e.length, kind: e.kind });
    if (format === 'qcow2') {
      const out = new BlobTarget({ name: 'converted.vhd' });
      const vhd = await createVhd(out, { size: disk.size });
      await sparseCopy(disk, vhd);
      await vhd.close();
      // Back through a Blob, as a download would be and a later upload read.
      const blob = await out.toBlob({ chunkSize: 1 << 20 });
      const back = await openVhd(new BlobStorage(blob, { name: 'converted.vhd' }), { readOnly: true });
      if (blob.size <= 8 << 20) result.vhdBase64 = base64(new Uint8Array(await blob.arrayBuffer()));
      result.vhdSize = back.size;
      result.vhdSha256 = await sha256Of(back, disk.size);
      await back.close();
    }
    return result;
  } finally {
    await disk.close();
  }
}

/** Writes a small qcow2 with deflate clusters (CompressionStream) and reads it back (DecompressionStream). */
async function writeCompressed(): Promise<NonNullable<PageResults['written']>> {
  const clusterSize = 65536;
  const guest = new Uint8Array(4 * clusterSize);
  const text = new TextEncoder().encode('a qcow2 cluster compressed in a browser; ');
  for (let at = 0; at < 3 * clusterSize; at += text.length) guest.set(text.subarray(0, Math.min(text.length, 3 * clusterSize - at)), at);
  crypto.getRandomValues(guest.subarray(3 * clusterSize, 3 * clusterSize + 65536)); // does not shrink: stored plain
  const out = new BlobTarget({ name: 'written.qcow2' });
  const disk = await createQcow2(out, { size: guest.length, clusterSize });
  await disk.writeCompressed(0, guest);
  await disk.close();
  const blob = await out.toBlob();
  const back = await openQcow2(new BlobStorage(blob), { readOnly: true });
  const readBackSha256 = await sha256Of(back);
  await back.close();
  return { qcow2Base64: base64(new Uint8Array(await blob.arrayBuffer())), guestSha256: hex(await crypto.subtle.digest('SHA-256', guest)), readBackSha256 };
}

const input = document.querySelector<HTMLInputElement>('#files')!;
const output = document.querySelector<HTMLElement>('#results')!;
input.addEventListener('change', () => {
  void (async () => {
    const started = performance.now();
    const results: PageResults = {
      codecs: qcow2Codecs().name,
      vmdkCodecs: vmdkCodecs().name,
      hasNodeGlobals: typeof (globalThis as { process?: unknown }).process !== 'undefined' || typeof (globalThis as { Buffer?: unknown }).Buffer !== 'undefined',
      files: [],
      ms: 0,
    };
    try {
      for (const file of input.files ?? []) {
        const t = performance.now();
        try {
          results.files.push(await inspect(file));
        } catch (e) {
          results.files.push({ name: file.name, format: '?', size: -1, error: `${(e as { code?: string }).code ?? ''} ${String(e)}` });
        }
        results.files[results.files.length - 1]!.ms = Math.round(performance.now() - t);
      }
      results.written = await writeCompressed();
    } catch (e) {
      results.error = String((e as Error).stack ?? e);
    }
    results.ms = Math.round(performance.now() - started);
    window.__imgResults = results;
    output.textContent = JSON.stringify({ ...results, files: results.files.map((f) => ({ ...f, vhdBase64: undefined })), written: results.written ? '(base64 qcow2)' : undefined });
  })();
});
document.body.dataset.ready = 'true';
