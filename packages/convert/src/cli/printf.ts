/**
 * Numbers as C's printf writes them, where qemu-img's output uses it and
 * JavaScript's own formatting differs: printf rounds the exact binary value
 * half to even ("%.2f" of 3.125 is "3.12"), toFixed rounds a tie up.
 */

/** `%.<digits>f` of a finite, non-negative number. */
export function printfFixed(value: number, digits: number): string {
  if (!Number.isFinite(value) || value < 0) return value.toFixed(digits);
  // Up to 100 significant digits: the exact decimal value of any double of this size (finitely many binary digits).
  const exact = value.toPrecision(100);
  const [whole = '0', fraction = ''] = exact.includes('e') ? [value.toFixed(0), ''] : exact.split('.');
  const kept = fraction.slice(0, digits).padEnd(digits, '0');
  const rest = fraction.slice(digits);
  let scaled = BigInt(whole + kept);
  const half = rest.length > 0 && rest[0] === '5' && /^5(0*)$/.test(rest);
  const above = rest.length > 0 && (rest[0]! > '5' || (rest[0] === '5' && !half));
  if (above || (half && scaled % 2n === 1n)) scaled++;
  const text = scaled.toString().padStart(digits + 1, '0');
  return digits === 0 ? text : `${text.slice(0, -digits)}.${text.slice(-digits)}`;
}

/**
 * `%<width>s` (`%-<width>s` with `left`) as C's printf pads a string: to a
 * width in bytes of its UTF-8 form, so a non-ASCII name gets fewer spaces
 * than its characters suggest, and a string at or past the width none.
 */
export function printfString(value: string, width: number, left = false): string {
  const pad = ' '.repeat(Math.max(0, width - new TextEncoder().encode(value).length));
  return left ? value + pad : pad + value;
}
