// A user's shell: bash with `img` and `img-convert` on PATH (the built
// bins, linked as an install would link them), in a scratch directory.
import { spawnSync } from 'node:child_process';
import { mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '@img/testkit';

const bins = fileURLToPath(new URL('../../../packages/convert/dist/bin/', import.meta.url));

export interface ShellResult {
  status: number;
  stdout: string;
  stderr: string;
}

export interface UserShell {
  dir: string;
  /** Runs `script` with bash -o pipefail off (as a user's shell): PIPESTATUS is how a test reads a piped command's own status. */
  sh(script: string, options?: { input?: string; timeoutMs?: number }): ShellResult;
  path: (name: string) => string;
  cleanup(): void;
}

export function userShell(prefix: string): UserShell {
  const tmp = tempDir(prefix);
  const binDir = join(tmp.path, '.bin');
  mkdirSync(binDir);
  for (const name of ['img', 'img-convert']) symlinkSync(join(bins, `${name}.js`), join(binDir, name));
  const work = join(tmp.path, 'work');
  mkdirSync(work);
  return {
    dir: work,
    path: (name) => join(work, name),
    sh(script, options = {}) {
      const r = spawnSync('bash', ['-c', script], {
        cwd: work,
        encoding: 'utf8',
        env: { ...process.env, PATH: `${binDir}:${process.env.PATH ?? ''}`, LC_ALL: 'C' },
        timeout: options.timeoutMs ?? 60_000,
        ...(options.input !== undefined ? { input: options.input } : {}),
      });
      if (r.error) throw r.error;
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    },
    cleanup: () => tmp.cleanup(),
  };
}

/** What every failure a user sees must be: one line per message, no stack, no source. */
export function expectOneLine(stderr: string): string[] {
  const lines = stderr
    .trim()
    .split('\n')
    .filter((l) => l.trim() !== '');
  const bad = lines.filter((l) => /^\s+at |node:internal|\{$|=>|function\s*\(/.test(l) || l.length > 400);
  if (bad.length) throw new Error(`stack or source on stderr:\n${stderr.slice(0, 2000)}`);
  return lines;
}
