/**
 * Typed access to tools/make-corpus/vhd-writers.mjs: VHDs laid out as real
 * writers (Hyper-V, Windows, Virtual PC, vhd-util, any creator) lay them out,
 * written independently of @img/vhd so they can judge it.
 */
export interface VhdWriterImage {
  bytes: Uint8Array;
  /** The guest disk as the footer's current size describes it. */
  content: Uint8Array;
  size: number;
  tableOffset?: number;
  blockAt?: Map<number, number>;
  bitmapBytes?: number;
}

export interface VhdWriters {
  writers: Record<string, () => VhdWriterImage>;
  vhdImage: (spec: Record<string, unknown>) => VhdWriterImage;
}

/** Loads the writer presets and the image builder. */
export async function loadVhdWriters(): Promise<VhdWriters> {
  return (await import(new URL('../../make-corpus/vhd-writers.mjs', import.meta.url).href)) as VhdWriters;
}
