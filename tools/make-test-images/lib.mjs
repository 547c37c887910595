// Helpers for fixture recipes: run qemu-img / qemu-io, hash an image's
// raw export, read its map and snapshots.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export function run(cmd, args, options = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, ...options });
  if (r.error) throw r.error;
  if (r.status !== 0 && !options.allowFail) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stderr}`);
  }
  return r;
}

export function qemuImg(...args) {
  return run('qemu-img', args).stdout;
}

// qemu 7.2 resolves some names found inside an image (external data files)
// against its working directory, not the image's: run it beside the image.
function beside(path) {
  return { cwd: dirname(path) };
}

/** qemu-io -f fmt -c cmd -c cmd file */
export function qemuIo(file, format, ...commands) {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  args.push(file);
  const r = run('qemu-io', args);
  if (/error|failed/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io ${commands.join('; ')} on ${file}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

export function qemuVersion() {
  return qemuImg('--version').split('\n')[0].trim();
}

async function sha256File(path) {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * 1024 * 1024 })) hash.update(chunk);
  return hash.digest('hex');
}

/** sha256 of `qemu-img convert -O raw` (optionally of a snapshot). */
export async function rawSha256(path, format, snapshot) {
  const dir = mkdtempSync(join(tmpdir(), 'mkimg-'));
  try {
    const out = join(dir, 'out.raw');
    const args = ['convert', '-f', format, '-O', 'raw'];
    if (snapshot !== undefined) args.push('-l', `snapshot.id=${snapshot}`);
    args.push(path, out);
    run('qemu-img', args, beside(path));
    return await sha256File(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function qemuMap(path, format) {
  return JSON.parse(run('qemu-img', ['map', '--output=json', '-f', format, path], beside(path)).stdout);
}

export function qemuInfo(path, format) {
  return JSON.parse(run('qemu-img', ['info', '--output=json', '-f', format, path], beside(path)).stdout);
}

export { execFileSync };

/** Deterministic, incompressible bytes (xorshift32), the same on every run. */
export function noise(length, seed) {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
