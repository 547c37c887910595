/**
 * Where a streamOptimized stream may end. An end-of-stream marker is an
 * all-zero sector (VMDK 5.0 technote), which is also what zero padding and
 * a zero-filled truncated download look like, and a pipe's end says
 * nothing about whether the writer finished. So the stream reader asks
 * this module, which knows from the header what a complete stream holds:
 *
 * - a header whose gdOffset is GD_AT_END (VMware's exporters, ovftool,
 *   VirtualBox, this package's writers): the footer marker, the footer
 *   (a header with the real gdOffset) and then the end-of-stream marker,
 *   as a file reader requires them at the end of the file;
 * - a header with a real gdOffset whose directory and tables come before
 *   the first grain (qemu's layout, which has no footer and no
 *   end-of-stream marker): every grain those tables map, up to the last
 *   one;
 * - a header with a real gdOffset past the first grain: the stream has
 *   passed the directory.
 *
 * A footer seen in the stream is enough in the two last cases too.
 */
import { corrupt, hex, type ByteStreamReader } from '@img/block';
import { ENTRY_BYTES, GTE_ZEROED, parseEntries } from './grain-table.js';
import { GD_AT_END, SECTOR, hasSparseMagic, type SparseHeader } from './sparse-header.js';

const FORMAT = 'vmdk';
/** Largest grain directory read from the front of a stream (4 Mi tables: 128 TiB of 64 KiB grains). */
const MAX_FRONT_DIRECTORY_BYTES = 16 << 20;

type Expectation = { kind: 'footer' } | { kind: 'grains'; count: number; last: number } | { kind: 'directory'; end: number };

/** What a stream must hold before it may end, and what has been seen of it. */
export class StreamEnd {
  #expect: Expectation;
  #needsEos: boolean;
  #footer = false;
  #grains = 0;
  #lastGrainSeen = false;
  #name: string;

  private constructor(expect: Expectation, needsEos: boolean, name: string) {
    this.#expect = expect;
    this.#needsEos = needsEos;
    this.#name = name;
  }

  /**
   * Reads the stream up to the first grain (byte `overHead * 512`), taking
   * in the grain directory and tables when the header places them there.
   */
  static async readFront(r: ByteStreamReader, h: SparseHeader, name: string): Promise<StreamEnd> {
    const firstGrain = h.overHead * SECTOR;
    if (h.gdOffset === GD_AT_END) {
      await r.skipTo(firstGrain, 'the first grain');
      return new StreamEnd({ kind: 'footer' }, true, name);
    }
    const gdAt = h.gdOffset * SECTOR;
    const tables = Math.ceil(h.capacity / (h.grainSize * h.numGTEsPerGT));
    const gdBytes = tables * ENTRY_BYTES;
    if (gdAt >= firstGrain) {
      await r.skipTo(firstGrain, 'the first grain');
      return new StreamEnd({ kind: 'directory', end: gdAt + gdBytes }, false, name);
    }
    if (gdAt < r.position || gdAt + gdBytes > firstGrain || gdBytes > MAX_FRONT_DIRECTORY_BYTES) {
      // A directory that overlaps the header or the first grain, or is too big to hold: only a footer tells the end.
      await r.skipTo(firstGrain, 'the first grain');
      return new StreamEnd({ kind: 'footer' }, false, name);
    }
    await r.skipTo(gdAt, 'the grain directory');
    const gd = parseEntries(await r.exact(gdBytes, 'the grain directory'), tables);
    const tableBytes = h.numGTEsPerGT * ENTRY_BYTES;
    const starts = [...new Set(gd.filter((s) => s !== 0))].sort((a, b) => a - b);
    let count = 0;
    let last = 0;
    for (const s of starts) {
      const at = s * SECTOR;
      if (at < r.position || at + tableBytes > firstGrain) {
        // A table elsewhere (the redundant copy's place, or among the grains): not qemu's layout.
        await r.skipTo(firstGrain, 'the first grain');
        return new StreamEnd({ kind: 'footer' }, false, name);
      }
      await r.skipTo(at, 'a grain table');
      const gt = parseEntries(await r.exact(tableBytes, 'a grain table'), h.numGTEsPerGT);
      for (const e of gt) {
        if (e <= GTE_ZEROED) continue;
        count++;
        if (e > last) last = e;
      }
    }
    await r.skipTo(firstGrain, 'the first grain');
    return new StreamEnd({ kind: 'grains', count, last: last * SECTOR }, false, name);
  }

  /** A grain marker at byte `at` was read whole. */
  grain(at: number): void {
    this.#grains++;
    if (this.#expect.kind === 'grains' && at === this.#expect.last) this.#lastGrainSeen = true;
  }

  /**
   * A footer marker at byte `at` and the sector after it, `footer`: it
   * must be a header (magic "KDMV").
   */
  footer(at: number, footer: Uint8Array): void {
    if (!hasSparseMagic(footer)) {
      throw corrupt(FORMAT, this.#name, `the footer marker at ${hex(at)} is not followed by a footer (a sparse extent header)`, { field: 'footer', offset: at + SECTOR });
    }
    this.#footer = true;
  }

  /** Whether everything the header promises has been read, at stream byte `position`. */
  #complete(position: number): boolean {
    if (this.#footer) return true;
    const e = this.#expect;
    if (e.kind === 'grains') return this.#grains >= e.count && (e.count === 0 || this.#lastGrainSeen);
    if (e.kind === 'directory') return position >= e.end;
    return false;
  }

  /** Whether an end-of-stream marker at `position` ends the stream (otherwise an all-zero sector there is padding). */
  endsAt(position: number): boolean {
    return this.#complete(position);
  }

  /** Whether the input may end at `position` without an end-of-stream marker; false means truncation. */
  mayStopAt(position: number): boolean {
    return !this.#needsEos && this.#complete(position);
  }

  /** The error for an input that ended at `position` before the stream was complete. */
  truncated(position: number): Error {
    const e = this.#expect;
    let what: string;
    if (this.#footer) what = 'after the footer but before the end-of-stream marker';
    else if (e.kind === 'footer') what = 'before the grain directory, footer and end-of-stream marker that end a streamOptimized VMDK';
    else if (e.kind === 'grains') what = `after ${this.#grains} of the ${e.count} grains its grain tables map (the last at ${hex(e.last)})`;
    else what = `before its grain directory, which ends at ${hex(e.end)}`;
    return corrupt(FORMAT, this.#name, `the stream ends at ${hex(position)}, ${what}: the image is truncated`, { field: 'end of stream', offset: position });
  }
}
