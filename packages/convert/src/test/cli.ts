// Runs the built commands as a user would: node dist/bin/<cmd>.js.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The built command's script (node dist/bin/<name>.js). */
export const bin = (name: string) => fileURLToPath(new URL(`../../dist/bin/${name}.js`, import.meta.url));

export interface RunResult {
  status: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: 'img' | 'img-convert', args: string[], options: { input?: Buffer; cwd?: string } = {}): RunResult {
  const r = spawnSync(process.execPath, [bin(cmd), ...args], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    ...(options.input ? { input: options.input } : {}),
    ...(options.cwd ? { cwd: options.cwd } : {}),
  });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
