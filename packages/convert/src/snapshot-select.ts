/**
 * What qemu-img convert -l (and qemu-nbd -l) names: a plain argument is an
 * id, else the first snapshot of that name (the format's own lookup); an
 * argument that starts with "snapshot." is a list of options,
 * `snapshot.id=ID,snapshot.name=NAME` (",," is a comma inside a value),
 * and the snapshot must match every one given.
 */
import { invalidArg, notFoundError, type SnapshotInfo } from '@img/block';

/** The id and name a "snapshot." option list asks for. */
export interface SnapshotSelector {
  id?: string;
  name?: string;
}

/** Parses `snapshot.id=...,snapshot.name=...`; undefined for a plain id or name. */
export function parseSnapshotSelector(arg: string): SnapshotSelector | undefined {
  if (!arg.startsWith('snapshot.')) return undefined;
  const out: SnapshotSelector = {};
  for (const part of splitOptions(arg)) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? '' : part.slice(eq + 1);
    if (key === 'snapshot.id') out.id = value;
    else if (key === 'snapshot.name') out.name = value;
    else throw invalidArg('snapshot', `-l: invalid parameter '${key}' (snapshot.id and snapshot.name are known)`, { field: 'snapshot', actual: key });
  }
  if (out.id === undefined && out.name === undefined) throw invalidArg('snapshot', `-l "${arg}" names neither snapshot.id nor snapshot.name`, { field: 'snapshot', actual: arg });
  return out;
}

/** Splits at single commas; ",," stands for a comma, as in qemu's option lists. */
function splitOptions(text: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c !== ',') current += c;
    else if (text[i + 1] === ',') {
      current += ',';
      i++;
    } else {
      parts.push(current);
      current = '';
    }
  }
  parts.push(current);
  return parts;
}

/** The id of the first snapshot that matches every field of `selector`; ERR_IMG_NOT_FOUND naming `file` if none does. */
export function selectSnapshotId(snapshots: readonly SnapshotInfo[], selector: SnapshotSelector, file: string): string {
  const hit = snapshots.find((s) => (selector.id === undefined || s.id === selector.id) && (selector.name === undefined || s.name === selector.name));
  if (!hit) {
    const wanted = [selector.id !== undefined ? `id "${selector.id}"` : '', selector.name !== undefined ? `name "${selector.name}"` : ''].filter(Boolean).join(' and ');
    throw notFoundError(file, `no snapshot with ${wanted}`, { field: 'snapshot' });
  }
  return hit.id;
}
