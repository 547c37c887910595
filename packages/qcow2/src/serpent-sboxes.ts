/**
 * Serpent's eight 4-bit S-boxes (the AES submission's tables) and the
 * bit-sliced circuits serpent.ts runs them as: each output bit's algebraic
 * normal form (the XOR of the products of input bits its truth table
 * gives), written out as word operations, so one call substitutes all 32
 * nibbles of a block at once. scripts/serpent-circuits.mjs writes the
 * circuits from the tables (and serpent-rounds.ts); block-ciphers.test.ts
 * checks each of them, and its inverse, against the table for all 16
 * inputs, and that the script would write what is here.
 */

/** S0..S7: entry v is the image of nibble v. */
export const SERPENT_SBOXES: readonly (readonly number[])[] = [
  [3, 8, 15, 1, 10, 6, 5, 11, 14, 13, 4, 2, 7, 0, 9, 12],
  [15, 12, 2, 7, 9, 0, 5, 10, 1, 11, 14, 8, 6, 13, 3, 4],
  [8, 6, 7, 9, 3, 12, 10, 15, 13, 1, 14, 4, 0, 11, 5, 2],
  [0, 15, 11, 8, 12, 9, 6, 3, 13, 1, 2, 4, 10, 7, 5, 14],
  [1, 15, 8, 3, 12, 0, 11, 6, 2, 5, 4, 10, 9, 14, 7, 13],
  [15, 5, 2, 11, 4, 10, 9, 12, 0, 3, 14, 8, 13, 6, 7, 1],
  [7, 2, 12, 5, 8, 4, 6, 11, 14, 9, 1, 15, 13, 3, 10, 0],
  [1, 13, 15, 0, 14, 8, 2, 11, 7, 4, 12, 10, 9, 3, 5, 6],
];

/** S0, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s0(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m012 = x0 & m12;
  const m23 = x2 & x3;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(x0 ^ m01 ^ x2 ^ m02 ^ m12 ^ m012 ^ x3 ^ m023 ^ m123);
  x[1] = ~(x0 ^ m02 ^ m12 ^ m012 ^ m13 ^ m023 ^ m123);
  x[2] = x1 ^ m01 ^ m02 ^ m012 ^ x3 ^ m13 ^ m123;
  x[3] = x0 ^ x1 ^ x2 ^ x3 ^ m03;
}

/** S1, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s1(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(x0 ^ x1 ^ m12 ^ m03 ^ m23 ^ m023 ^ m123);
  x[1] = ~(x0 ^ m01 ^ x2 ^ m02 ^ x3 ^ m13 ^ m013 ^ m023 ^ m123);
  x[2] = ~(x1 ^ m01 ^ x2 ^ x3);
  x[3] = ~(x1 ^ m02 ^ x3 ^ m03 ^ m013 ^ m023 ^ m123);
}

/** S2, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s2(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  x[0] = x1 ^ x2 ^ m02 ^ x3;
  x[1] = x0 ^ x1 ^ x2 ^ m12 ^ m012 ^ m03 ^ m013 ^ m23 ^ m023;
  x[2] = x0 ^ x1 ^ m12 ^ x3 ^ m13 ^ m013 ^ m23 ^ m023;
  x[3] = ~(x0 ^ x1 ^ x2 ^ m012 ^ m13);
}

/** S3, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s3(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = x0 ^ x1 ^ m12 ^ x3 ^ m03 ^ m23 ^ m023 ^ m123;
  x[1] = x0 ^ x1 ^ m02 ^ m03 ^ m013 ^ m23 ^ m023;
  x[2] = x0 ^ m01 ^ x2 ^ m012 ^ x3 ^ m13 ^ m013;
  x[3] = x0 ^ x1 ^ m01 ^ x2 ^ m02 ^ m012 ^ x3 ^ m23 ^ m023;
}

/** S4, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s4(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(x1 ^ m01 ^ x2 ^ x3 ^ m03 ^ m13);
  x[1] = x0 ^ m02 ^ m12 ^ x3 ^ m13 ^ m23 ^ m023 ^ m123;
  x[2] = x0 ^ m01 ^ x2 ^ m12 ^ m012 ^ m13 ^ m013 ^ m23 ^ m123;
  x[3] = x0 ^ x1 ^ x2 ^ m12 ^ m03 ^ m13 ^ m013;
}

/** S5, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s5(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m12 = x1 & x2;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(x1 ^ m01 ^ x2 ^ x3 ^ m03 ^ m13);
  x[1] = ~(x0 ^ m01 ^ x2 ^ x3 ^ m13 ^ m013 ^ m23);
  x[2] = ~(x1 ^ m02 ^ x3 ^ m013 ^ m23 ^ m023 ^ m123);
  x[3] = ~(x0 ^ x1 ^ x2 ^ m012 ^ x3 ^ m03 ^ m023);
}

/** S6, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s6(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m123 = x1 & m23;
  x[0] = ~(x0 ^ x1 ^ x2 ^ m02 ^ m12 ^ m012 ^ x3 ^ m013 ^ m123);
  x[1] = ~(x1 ^ x2 ^ m03);
  x[2] = ~(x0 ^ m01 ^ x2 ^ m12 ^ m012 ^ m13 ^ m013 ^ m23 ^ m123);
  x[3] = x1 ^ m01 ^ x2 ^ m02 ^ m012 ^ x3 ^ m23 ^ m123;
}

/** S7, bit-sliced: bit j of the four words is one nibble (word i its bit i). */
function s7(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(m01 ^ x2 ^ m03 ^ m13 ^ m23 ^ m023 ^ m123);
  x[1] = x1 ^ m01 ^ x2 ^ m02 ^ m12 ^ x3 ^ m03 ^ m013 ^ m023;
  x[2] = x0 ^ x1 ^ x2 ^ m012 ^ x3 ^ m03 ^ m13 ^ m013 ^ m123;
  x[3] = x0 ^ x1 ^ x2 ^ m02 ^ m012 ^ m03;
}

/** The inverse of S0. */
function si0(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(m01 ^ x2 ^ m12 ^ m03 ^ m13 ^ m013 ^ m23 ^ m023 ^ m123);
  x[1] = x0 ^ x1 ^ x2 ^ m02 ^ m13 ^ m023 ^ m123;
  x[2] = ~(x0 ^ x1 ^ m01 ^ x2 ^ x3);
  x[3] = ~(x0 ^ m12 ^ x3 ^ m013 ^ m23 ^ m023 ^ m123);
}

/** The inverse of S1. */
function si1(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m012 = x0 & m12;
  const m23 = x2 & x3;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(x0 ^ x1 ^ m01 ^ m012 ^ m13 ^ m023 ^ m123);
  x[1] = x1 ^ x2 ^ m012 ^ x3 ^ m03 ^ m13 ^ m023 ^ m123;
  x[2] = ~(x0 ^ x1 ^ m02 ^ m12 ^ m012 ^ x3 ^ m023);
  x[3] = x0 ^ x2 ^ x3 ^ m13;
}

/** The inverse of S2. */
function si2(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  x[0] = x0 ^ x1 ^ x2 ^ m12 ^ m13;
  x[1] = x1 ^ m01 ^ x2 ^ m03 ^ m013 ^ m23 ^ m023;
  x[2] = ~(x0 ^ m01 ^ x2 ^ x3 ^ m03 ^ m13 ^ m013 ^ m023);
  x[3] = ~(m01 ^ m12 ^ m012 ^ x3 ^ m023);
}

/** The inverse of S3. */
function si3(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = x0 ^ x2 ^ m12 ^ x3 ^ m03 ^ m13 ^ m123;
  x[1] = x1 ^ x2 ^ m12 ^ m012 ^ x3 ^ m03 ^ m023 ^ m123;
  x[2] = m01 ^ m02 ^ m12 ^ m03 ^ m13 ^ m013 ^ m23 ^ m023;
  x[3] = x0 ^ x1 ^ x2 ^ m02 ^ m012 ^ m03 ^ m013 ^ m23;
}

/** The inverse of S4. */
function si4(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m12 = x1 & x2;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  x[0] = ~(x0 ^ x1 ^ x2 ^ x3 ^ m03 ^ m013 ^ m23 ^ m023);
  x[1] = m01 ^ x2 ^ m02 ^ x3 ^ m03 ^ m023;
  x[2] = ~(x0 ^ x1 ^ m01 ^ x2 ^ m02 ^ m012 ^ x3 ^ m13 ^ m013);
  x[3] = x1 ^ m01 ^ x2 ^ m03 ^ m013 ^ m23;
}

/** The inverse of S5. */
function si5(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m23 = x2 & x3;
  const m023 = x0 & m23;
  x[0] = x0 ^ m12 ^ x3 ^ m013;
  x[1] = x0 ^ x1 ^ m02 ^ m12 ^ m012 ^ x3 ^ m03 ^ m013;
  x[2] = x0 ^ m01 ^ x2 ^ m13 ^ m013 ^ m023;
  x[3] = ~(x1 ^ m01 ^ x2 ^ m012 ^ m03);
}

/** The inverse of S6. */
function si6(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m123 = x1 & m23;
  x[0] = ~(x0 ^ m01 ^ m02 ^ m12 ^ m012 ^ x3 ^ m013 ^ m123);
  x[1] = ~(x1 ^ x2 ^ m02 ^ x3);
  x[2] = ~(x0 ^ x1 ^ m12 ^ m13 ^ m013 ^ m23 ^ m123);
  x[3] = ~(x1 ^ m01 ^ x2 ^ m12 ^ m012 ^ x3 ^ m03 ^ m013 ^ m23 ^ m123);
}

/** The inverse of S7. */
function si7(x: Int32Array): void {
  const x0 = x[0]!;
  const x1 = x[1]!;
  const x2 = x[2]!;
  const x3 = x[3]!;
  const m01 = x0 & x1;
  const m02 = x0 & x2;
  const m12 = x1 & x2;
  const m03 = x0 & x3;
  const m13 = x1 & x3;
  const m23 = x2 & x3;
  const m012 = x0 & m12;
  const m013 = x0 & m13;
  const m023 = x0 & m23;
  const m123 = x1 & m23;
  x[0] = ~(x0 ^ x1 ^ m12 ^ m13 ^ m013 ^ m23 ^ m123);
  x[1] = ~(x0 ^ x2 ^ m12 ^ x3 ^ m03 ^ m13 ^ m023 ^ m123);
  x[2] = x1 ^ m02 ^ x3 ^ m013 ^ m23 ^ m023;
  x[3] = m01 ^ x2 ^ m012 ^ m03 ^ m13 ^ m013;
}

/** S0..S7 as circuits on a block's four words (in place). */
export const SERPENT_SBOX_CIRCUITS: readonly ((x: Int32Array) => void)[] = [s0, s1, s2, s3, s4, s5, s6, s7];
/** Their inverses, in the same order. */
export const SERPENT_INVERSE_CIRCUITS: readonly ((x: Int32Array) => void)[] = [si0, si1, si2, si3, si4, si5, si6, si7];
