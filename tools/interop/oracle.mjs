// The comparisons of direction 1: what img reports about an image against
// what qemu-img reports, field by field. Each returns a list of differences
// ({ check, detail }); an empty list is agreement.
import { copyFileSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { compareArgs, firstDifference, imageArgs, img, json, run } from './lib.mjs';

/**
 * Paths where two JSON values differ. Keys qemu prints that img lacks count;
 * with `extraOk`, object keys only img prints do not (img info describes
 * more than qemu-img 7.2 does for some formats: README).
 */
export function jsonDiff(ours, theirs, at = '', extraOk = false) {
  if (typeof ours !== 'object' || typeof theirs !== 'object' || ours === null || theirs === null) {
    if (extraOk && theirs === undefined) return [];
    return Object.is(ours, theirs) ? [] : [`${at || '.'}: img ${JSON.stringify(ours)} qemu ${JSON.stringify(theirs)}`];
  }
  const out = [];
  const keys = extraOk && !Array.isArray(ours) ? Object.keys(theirs) : [...new Set([...Object.keys(ours), ...Object.keys(theirs)])];
  for (const k of keys) out.push(...jsonDiff(ours[k], theirs[k], Array.isArray(ours) ? `${at}[${k}]` : `${at}.${k}`, extraOk));
  return out;
}

/** Flips one byte of a copy of `raw` at a data byte, so a compare must answer "different". */
function flippedCopy(raw, into) {
  copyFileSync(raw, into);
  const fd = openSync(into, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, 0);
    b[0] ^= 0xff;
    writeSync(fd, b, 0, 1, 0);
  } finally {
    closeSync(fd);
  }
  return into;
}

/**
 * Every comparison of one image. With `pass` the image is LUKS-encrypted:
 * both tools get the passphrase (lib.mjs imageArgs) for every command that
 * reads data; info reads metadata only and is run without it.
 */
export function compareRead(ctx, path, fmt, pass) {
  const diffs = [];
  const d = (check, detail) => diffs.push({ check, detail });
  const { budget, heap, dir } = ctx;
  const q = (argv) => run(budget, 'qemu-img', argv, { cwd: dir });
  const i = (argv) => img(budget, heap, argv, { cwd: dir });
  const a = imageArgs(fmt, path, pass);

  // Contents: img convert -O raw against qemu-img convert -O raw.
  const qraw = join(dir, 'qemu.raw');
  const iraw = join(dir, 'img.raw');
  const qc = q(['convert', ...a.flags, '-O', 'raw', a.name, qraw]);
  if (qc.status !== 0) throw new Error(`qemu-img convert failed: ${qc.stderr.trim()}`);
  const ic = i(['convert', ...a.flags, '-O', 'raw', a.name, iraw]);
  if (ic.status !== 0) d('convert', `img convert -O raw exits ${ic.status}: ${ic.stderr.trim().split('\n')[0]}`);
  else {
    const at = firstDifference(iraw, qraw);
    if (at !== -1) d('convert', `raw contents differ at ${at}`);
  }

  // Internal snapshots: each read as qemu-img convert -l reads it, and the same list.
  if (fmt === 'qcow2') {
    const ql = q(['snapshot', '-l', ...(pass === undefined ? [] : a.flags), a.name]);
    const il = i(['snapshot', '-l', ...(pass === undefined ? [] : a.flags), a.name]);
    if (il.stdout !== ql.stdout) d('snapshot -l', `img lists ${JSON.stringify(il.stdout.trim().split('\n').slice(2))}, qemu-img ${JSON.stringify(ql.stdout.trim().split('\n').slice(2))}`);
    for (const line of ql.stdout.split('\n').slice(2)) {
      const name = line.trim().split(/\s+/)[1];
      if (!name) continue;
      const qs = join(dir, 'qemu-snap.raw');
      const is = join(dir, 'img-snap.raw');
      if (q(['convert', '-l', `snapshot.name=${name}`, ...a.flags, '-O', 'raw', a.name, qs]).status !== 0) continue;
      const r = i(['convert', '-l', name, ...a.flags, '-O', 'raw', a.name, is]);
      if (r.status !== 0) d('snapshot convert', `img convert -l ${name} exits ${r.status}: ${r.stderr.trim().split('\n')[0]}`);
      else {
        const at = firstDifference(is, qs);
        // A snapshot taken before a resize: qemu-img reads it at the image's current size, img at the size it was taken at (README).
        if (typeof at === 'string' && firstDifference(is, qs, true) === -1) d('snapshot convert', `snapshot ${name}: sizes differ (${at}), contents agree over the shorter`);
        else if (at !== -1) d('snapshot convert', `snapshot ${name}: raw contents differ at ${at}`);
      }
    }
  }

  // compare: the same answer on the equal raw and on a copy with one byte flipped.
  const flipped = flippedCopy(qraw, join(dir, 'flipped.raw'));
  for (const [other, label] of [
    [qraw, 'equal'],
    [flipped, 'flipped'],
  ]) {
    const ia = i(['compare', ...compareArgs(fmt, path, other, pass)]);
    const qa = q(['compare', ...compareArgs(fmt, path, other, pass)]);
    if (ia.status !== qa.status) d('compare', `${label}: img exits ${ia.status}, qemu-img ${qa.status} (${ia.stderr.trim().split('\n')[0] ?? ''})`);
  }

  // info: the whole JSON.
  const ii = i(['info', '-f', fmt, '--output=json', path]);
  const qi = q(['info', '-f', fmt, '--output=json', path]);
  if (ii.status !== qi.status) d('info', `img exits ${ii.status}, qemu-img ${qi.status}: ${ii.stderr.trim()}`);
  else for (const line of jsonDiff(json(ii.stdout), json(qi.stdout), '', true)) d('info', line);

  // info as people read it (luks: every line, the key slots included; the other formats' human forms are not compared).
  if (fmt === 'luks') {
    const ih = i(['info', '-f', fmt, path]);
    const qh = q(['info', '-f', fmt, path]);
    if (ih.status !== qh.status) d('info (human)', `img exits ${ih.status}, qemu-img ${qh.status}: ${ih.stderr.trim()}`);
    else if (ih.stdout !== qh.stdout) {
      const [il, ql] = [ih.stdout.split('\n'), qh.stdout.split('\n')];
      const at = il.findIndex((line, n) => line !== ql[n]);
      d('info (human)', `line ${at + 1}: img ${JSON.stringify(il[at])} qemu-img ${JSON.stringify(ql[at] ?? '')}`);
    }
  }

  // info --backing-chain: every layer.
  const ib = i(['info', '-f', fmt, '--backing-chain', '--output=json', path]);
  const qb = q(['info', '-f', fmt, '--backing-chain', '--output=json', path]);
  if (ib.status !== qb.status) d('info --backing-chain', `img exits ${ib.status}, qemu-img ${qb.status}: ${ib.stderr.trim()}`);
  else for (const line of jsonDiff(json(ib.stdout), json(qb.stdout), '', true)) d('info --backing-chain', line);

  // map: entry by entry.
  const im = i(['map', '--output=json', ...a.flags, a.name]);
  const qm = q(['map', '--output=json', ...a.flags, a.name]);
  if (im.status !== qm.status) d('map', `img exits ${im.status}, qemu-img ${qm.status}: ${im.stderr.trim()}`);
  else {
    const a = json(im.stdout) ?? [];
    const b = json(qm.stdout) ?? [];
    const lines = jsonDiff(a, b);
    if (lines.length) d('map', `${a.length} entries vs ${b.length}; first: ${lines[0]}`);
  }

  // measure: the space a qcow2 or raw copy needs.
  for (const argv of [
    ['-O', 'qcow2'],
    ['-O', 'qcow2', '-o', 'cluster_size=4k'],
    ['-O', 'raw'],
  ]) {
    const im = i(['measure', '--output=json', ...a.flags, ...argv, a.name]);
    const qm = q(['measure', '--output=json', ...a.flags, ...argv, a.name]);
    if (im.status !== qm.status) d('measure', `${argv.join(' ')}: img exits ${im.status}, qemu-img ${qm.status}: ${im.stderr.trim()}`);
    else for (const line of jsonDiff(json(im.stdout), json(qm.stdout))) d('measure', `${argv.join(' ')}: ${line}`);
  }

  // check: exit code and counts.
  const ik = i(['check', '--output=json', ...a.flags, a.name]);
  const qk = q(['check', '--output=json', ...a.flags, a.name]);
  // 63: qemu-img has no check for the format (vpc, some VMDK subformats); img's own check is not compared, but for luks, which neither tool checks.
  if (qk.status === 63) {
    if (fmt === 'luks' && ik.status !== 63) d('check', `img exits ${ik.status}, qemu-img 63 (no check for luks): ${(ik.stderr || ik.stdout).trim().split('\n')[0]}`);
    return diffs;
  }
  if (ik.status !== qk.status) d('check', `img exits ${ik.status}, qemu-img ${qk.status}: ${(ik.stderr || ik.stdout).trim().split('\n')[0]}`);
  else if (qk.status === 0 || qk.status === 2 || qk.status === 3) {
    // With --image-opts qemu-img's filename is the option string as given, img's the file's name: not compared.
    const [ij, qj] = [json(ik.stdout), json(qk.stdout)];
    if (pass !== undefined) for (const j of [ij, qj]) if (j) delete j.filename;
    for (const line of jsonDiff(ij, qj)) d('check', line);
  }
  return diffs;
}
