// Test fixtures of the OVA tests (not built into dist: tsconfig.build.json leaves test-*.ts out).
import { serializeTarHeader } from './ova-write-tar.js';

/** A ustar archive of `members` in order (name, bytes), each padded to 512 bytes, with the two-block end. */
export function tarOf(members: [string, Uint8Array][]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [name, data] of members) parts.push(serializeTarHeader({ name, size: data.length }), data, new Uint8Array((512 - (data.length % 512)) % 512));
  parts.push(new Uint8Array(1024));
  return Buffer.concat(parts);
}
