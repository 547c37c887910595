#!/usr/bin/env node
// Writes Serpent's bit-sliced S-box circuits (the end of src/serpent-sboxes.ts, after its tables) and its
// written-out rounds (src/serpent-rounds.ts) from the S-box tables in src/serpent-sboxes.ts: each output bit of
// an S-box is the XOR of the products of input bits its algebraic normal form names (the Moebius transform of
// its truth table), one word operation per product for all 32 nibbles of a block at once.
//   node scripts/serpent-circuits.mjs          rewrite both files
//   node scripts/serpent-circuits.mjs --check  fail if either differs from what it would write
import { readFileSync, writeFileSync } from 'node:fs';

const src = new URL('../src/', import.meta.url);
const sboxesFile = new URL('serpent-sboxes.ts', src);
const roundsFile = new URL('serpent-rounds.ts', src);
const check = process.argv.includes('--check');

const sboxesText = readFileSync(sboxesFile, 'utf8');
const tableText = /export const SERPENT_SBOXES[^=]*= \[([\s\S]*?)\n\];/.exec(sboxesText)[1];
const TABLES = [...tableText.matchAll(/\[([\d, ]+)\]/g)].map((m) => m[1].split(',').map(Number));
if (TABLES.length !== 8 || TABLES.some((t) => t.length !== 16)) throw new Error('serpent-sboxes.ts: eight tables of 16 expected');

const bits = (m) => [0, 1, 2, 3].filter((i) => m & (1 << i));
const inverse = (t) => t.reduce((inv, v, i) => ((inv[v] = i), inv), new Array(16));

/** The monomials (subsets of input bits, as masks) of output bit k's algebraic normal form. */
function anf(table, k) {
  const f = table.map((v) => (v >> k) & 1);
  for (let i = 0; i < 4; i++) for (let v = 0; v < 16; v++) if (v & (1 << i)) f[v] ^= f[v ^ (1 << i)];
  return [...f.keys()].filter((m) => f[m]);
}

/** A circuit's lines: products as consts (named by `name`; `sorted`: all made first, by bit count, else as first used), then the four outputs as expressions. */
function circuit(table, name, sorted = false) {
  const lines = [];
  const made = new Map();
  const term = (m) => {
    if (bits(m).length === 1) return `x${bits(m)[0]}`;
    if (made.has(m)) return made.get(m);
    const lo = m & -m;
    const rest = term(m ^ lo);
    const n = name(m, made.size);
    lines.push(`const ${n} = x${bits(lo)[0]} & ${rest};`);
    made.set(m, n);
    return n;
  };
  if (sorted) {
    const products = [...new Set([0, 1, 2, 3].flatMap((k) => anf(table, k)))].filter((m) => bits(m).length > 1);
    for (const m of products.sort((a, b) => bits(a).length - bits(b).length || a - b)) term(m);
  }
  const outputs = [0, 1, 2, 3].map((k) => {
    const monomials = anf(table, k);
    const terms = monomials.filter((m) => m !== 0).map(term);
    const e = terms.length ? terms.join(' ^ ') : '0';
    return monomials.includes(0) ? (terms.length > 1 ? `~(${e})` : `~${e}`) : e;
  });
  return { lines, outputs };
}

// The circuits as functions on a four-word array, for serpent-sboxes.ts (key schedule and tests).
const sboxFunction = (table, fn, doc) => {
  const { lines, outputs } = circuit(table, (m) => `m${bits(m).join('')}`, true);
  return [`/** ${doc} */`, `function ${fn}(x: Int32Array): void {`, ...[0, 1, 2, 3].map((i) => `  const x${i} = x[${i}]!;`), ...lines.map((l) => `  ${l}`), ...outputs.map((e, k) => `  x[${k}] = ${e};`), '}'].join('\n');
};

function circuitsText() {
  const parts = [];
  TABLES.forEach((t, i) => parts.push(sboxFunction(t, `s${i}`, `S${i}, bit-sliced: bit j of the four words is one nibble (word i its bit i).`)));
  TABLES.forEach((t, i) => parts.push(sboxFunction(inverse(t), `si${i}`, `The inverse of S${i}.`)));
  return `${parts.join('\n\n')}

/** S0..S7 as circuits on a block's four words (in place). */
export const SERPENT_SBOX_CIRCUITS: readonly ((x: Int32Array) => void)[] = [s0, s1, s2, s3, s4, s5, s6, s7];
/** Their inverses, in the same order. */
export const SERPENT_INVERSE_CIRCUITS: readonly ((x: Int32Array) => void)[] = [si0, si1, si2, si3, si4, si5, si6, si7];
`;
}

const LT = [
  'x0 = (x0 << 13) | (x0 >>> 19);',
  'x2 = (x2 << 3) | (x2 >>> 29);',
  'x1 = x1 ^ x0 ^ x2;',
  'x3 = x3 ^ x2 ^ (x0 << 3);',
  'x1 = (x1 << 1) | (x1 >>> 31);',
  'x3 = (x3 << 7) | (x3 >>> 25);',
  'x0 = x0 ^ x1 ^ x3;',
  'x2 = x2 ^ x3 ^ (x1 << 7);',
  'x0 = (x0 << 5) | (x0 >>> 27);',
  'x2 = (x2 << 22) | (x2 >>> 10);',
];
const INVERSE_LT = [
  'x2 = (x2 >>> 22) | (x2 << 10);',
  'x0 = (x0 >>> 5) | (x0 << 27);',
  'x2 = x2 ^ x3 ^ (x1 << 7);',
  'x0 = x0 ^ x1 ^ x3;',
  'x3 = (x3 >>> 7) | (x3 << 25);',
  'x1 = (x1 >>> 1) | (x1 << 31);',
  'x3 = x3 ^ x2 ^ (x0 << 3);',
  'x1 = x1 ^ x0 ^ x2;',
  'x2 = (x2 >>> 3) | (x2 << 29);',
  'x0 = (x0 >>> 13) | (x0 << 19);',
];

const addKey = (off, ind) => [0, 1, 2, 3].map((i) => `${ind}x${i} ^= k[${off + i === 0 ? 'o' : `o + ${off + i}`}]!;`);
const inline = (table, ind) => {
  const { lines, outputs } = circuit(table, (_m, n) => `t${n}`);
  return [`${ind}{`, ...lines.map((l) => `${ind}  ${l}`), ...outputs.map((e, k) => `${ind}  const y${k} = ${e};`), ...[0, 1, 2, 3].map((k) => `${ind}  x${k} = y${k};`), `${ind}}`];
};

function roundsText() {
  const ind = '    ';
  const out = [
    '/**',
    " * Serpent's 32 rounds on a block's four words, eight rounds to a pass",
    ' * (S0..S7 in turn), with every S-box circuit (serpent-sboxes.ts) and the',
    ' * linear transform written out on local variables: no call and no',
    ' * typed-array traffic inside a round, which makes a block two to three',
    ' * times faster than calling the circuits. Written by',
    ' * scripts/serpent-circuits.mjs from the S-box tables; block-ciphers.test.ts',
    ' * checks the whole cipher against the NESSIE vectors.',
    ' */',
    '',
    '/** Encrypts the block in `x` (four words) with round keys `k`, in place. */',
    'export function serpentEncryptWords(k: Int32Array, x: Int32Array): void {',
    ...[0, 1, 2, 3].map((i) => `  let x${i} = x[${i}]!;`),
    '  for (let o = 0; o < 128; o += 32) {',
  ];
  for (let r = 0; r < 8; r++) {
    out.push(`${ind}// Round o / 4 + ${r}: key, S${r}, linear transform.`, ...addKey(4 * r, ind), ...inline(TABLES[r], ind));
    if (r === 7) out.push(`${ind}if (o === 96) break;`);
    out.push(...LT.map((l) => ind + l));
  }
  out.push('  }', ...[0, 1, 2, 3].map((i) => `  x[${i}] = x${i} ^ k[${128 + i}]!;`), '}', '');
  out.push(
    '/** Decrypts the block in `x` (four words) with round keys `k`, in place. */',
    'export function serpentDecryptWords(k: Int32Array, x: Int32Array): void {',
    ...[0, 1, 2, 3].map((i) => `  let x${i} = x[${i}]! ^ k[${128 + i}]!;`),
    '  for (let o = 96; o >= 0; o -= 32) {',
  );
  for (let r = 7; r >= 0; r--) {
    out.push(`${ind}// Round o / 4 + ${r}: inverse linear transform, inverse S${r}, key.`);
    if (r === 7) out.push(`${ind}if (o !== 96) {`, ...INVERSE_LT.map((l) => `${ind}  ${l}`), `${ind}}`);
    else out.push(...INVERSE_LT.map((l) => ind + l));
    out.push(...inline(inverse(TABLES[r]), ind), ...addKey(4 * r, ind));
  }
  out.push('  }', ...[0, 1, 2, 3].map((i) => `  x[${i}] = x${i};`), '}', '');
  return out.join('\n');
}

const marker = '/** S0, bit-sliced:';
const sboxesNext = sboxesText.slice(0, sboxesText.indexOf(marker)) + circuitsText();
const roundsNext = roundsText();
let stale = false;
for (const [file, now, next] of [
  [sboxesFile, sboxesText, sboxesNext],
  [roundsFile, readFileSync(roundsFile, 'utf8'), roundsNext],
]) {
  if (now === next) continue;
  stale = true;
  if (!check) writeFileSync(file, next);
  console.log(`${check ? 'differs' : 'wrote'}: ${file.pathname}`);
}
if (check && stale) process.exitCode = 1;
