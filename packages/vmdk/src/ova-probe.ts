/**
 * probeOva: is the head of a file an OVA? An OVA is a tar archive
 * (DSP0243 §5.3) whose first member should be the `.ovf`. Its name may
 * be longer than the 100 bytes of the ustar name field, so the GNU
 * long-name ('L') and pax ('x') headers before a member are followed, as
 * the reader does. An archive whose `.ovf` lies beyond the probed bytes
 * (a VMDK stored first, against the spec but found in the wild) still
 * probes as an OVA, less surely: opening it reads the member table, and
 * a tar with no `.ovf` at all is refused there rather than taken for a
 * raw disk.
 */
import { MAX_TAR_EXTENDED_HEADER, longNameOf, parsePax, parseTarHeader } from './ova.js';

const BLOCK = 512;
/** Score of a tar archive whose `.ovf` member the probed bytes show. */
export const OVA_PROBE_CERTAIN = 100;
/** Score of a tar archive whose `.ovf` member (if any) lies beyond the probed bytes: still above a raw disk's. */
export const OVA_PROBE_TAR = 60;

/**
 * Scores the first bytes of a file as an OVA: {@link OVA_PROBE_CERTAIN}
 * when a tar header among them names a `.ovf` member (long names
 * followed), {@link OVA_PROBE_TAR} for any other tar archive, 0 otherwise.
 *
 * @example
 * ```ts
 * const head = await storage.read(0, 4096);
 * if (probeOva(head) > 0) await openOva(storage);
 * ```
 */
export function probeOva(head: Uint8Array): number {
  let pax: Map<string, string> | undefined;
  let longName: string | undefined;
  let pos = 0;
  let headers = 0;
  while (pos + BLOCK <= head.length) {
    const block = head.subarray(pos, pos + BLOCK);
    if (block.every((b) => b === 0)) break;
    let header;
    try {
      header = parseTarHeader(block, 'probe', pos);
    } catch {
      break; // not a tar header (or the head ends in the middle of something else)
    }
    headers++;
    const dataAt = pos + BLOCK;
    if (header.type === 'x' || header.type === 'L') {
      if (header.size > MAX_TAR_EXTENDED_HEADER) break;
      const body = head.subarray(dataAt, dataAt + header.size);
      if (body.length < header.size) break; // the record runs past the probed bytes
      if (header.type === 'L') longName = longNameOf(body);
      else {
        try {
          pax = parsePax(body, 'probe', dataAt);
        } catch {
          break;
        }
      }
    } else if (header.type !== 'g') {
      let name = header.name;
      if (longName !== undefined) name = longName;
      const path = pax?.get('path');
      if (path !== undefined) name = path;
      const isFile = header.type === '0' || header.type === '\0' || header.type === '7';
      if (isFile && /\.ovf$/i.test(name)) return OVA_PROBE_CERTAIN;
      const paxSize = pax?.get('size');
      const size = paxSize !== undefined && /^\d+$/.test(paxSize) ? Number(paxSize) : header.size;
      pax = undefined;
      longName = undefined;
      pos = dataAt + Math.ceil(size / BLOCK) * BLOCK;
      continue;
    }
    pos = dataAt + Math.ceil(header.size / BLOCK) * BLOCK;
  }
  return headers > 0 ? OVA_PROBE_TAR : 0;
}
