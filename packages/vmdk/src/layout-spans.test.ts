import { describe, expect, it } from 'vitest';
import { LayoutSpans } from './layout-spans.js';

const G = 65536; // grain bytes
const T = 2048; // table bytes

/** The overlaps a plain sort of every span finds: the oracle for the chunked sweep. */
function naive(grains: number[], tables: Array<[number, boolean]>, limit: number): string[] {
  const spans = [...grains.map((g) => ({ at: g, kind: 0 })), ...tables.map(([t, r]) => ({ at: t, kind: r ? 2 : 1 }))].sort((a, b) => a.at - b.at || a.kind - b.kind);
  const out: string[] = [];
  let end = 0;
  let prev: { at: number; kind: number } | undefined;
  for (const s of spans) {
    if (prev && s.at < end) {
      out.push(`${s.at}:${s.kind}:${s.kind === 0 && prev.kind === 0 && prev.at === s.at}`);
      if (out.length >= limit) break;
    }
    const e = s.at + (s.kind === 0 ? G : T);
    if (e > end) {
      end = e;
      prev = s;
    }
  }
  return out;
}

function swept(grains: number[], tables: Array<[number, boolean]>, limit: number): string[] {
  const spans = new LayoutSpans(G, T);
  for (const [t, r] of tables) spans.addTable(t, r);
  for (const g of grains) spans.addGrain(g);
  return spans.overlaps(limit).map((o) => `${o.offset}:${o.what === 'grain' ? 0 : o.what === 'grain table' ? 1 : 2}:${o.shared}`);
}

describe('LayoutSpans', () => {
  it('grains in file order after their tables: no overlap, and one of each kind when damaged', () => {
    const tables: Array<[number, boolean]> = [
      [4096, true],
      [8192, false],
    ];
    const grains = Array.from({ length: 5000 }, (_, i) => 65536 + i * G);
    expect(swept(grains, tables, 10)).toEqual([]);
    const shared = [...grains.slice(0, 10), grains[3]!, ...grains.slice(10)];
    expect(swept(shared, tables, 10)).toEqual([`${grains[3]}:0:true`]);
    const onTable = [8192 - 512, ...grains];
    expect(swept(onTable, tables, 10)).toEqual([`8192:1:false`, `65536:0:false`]); // a grain runs over the table and the first grain
    const halfway = [...grains, grains[4999]! + G / 2];
    expect(swept(halfway, tables, 10)).toEqual([`${grains[4999]! + G / 2}:0:false`]);
  });

  it('grains in any order across many chunks find what a plain sort finds, up to the limit', () => {
    let seed = 12345;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    for (const count of [0, 1, 1023, 1024, 1025, 7000, 40000]) {
      // Distinct sector-aligned starts, mostly a grain apart, some landing inside another grain or on a table.
      const grains = Array.from({ length: count }, (_, i) => (next() % 20 === 0 ? (next() % (count * 2 + 64)) * 512 * 64 : (1000 + i) * G));
      for (let i = grains.length - 1; i > 0; i--) {
        const j = next() % (i + 1);
        [grains[i], grains[j]] = [grains[j]!, grains[i]!];
      }
      const tables: Array<[number, boolean]> = Array.from({ length: 40 }, (_, i) => [(i * 7 + 1) * 512 * 64, i % 2 === 0]);
      for (const limit of [1, 100, 1e9]) expect(swept(grains, tables, limit)).toEqual(naive(grains, tables, limit));
    }
  });
});
