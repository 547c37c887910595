import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A fresh temporary directory and a function that removes it. */
export function tempDir(prefix = 'img-test-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** /dev/shm where it is a tmpfs (Linux), else undefined: where tests reach the code paths of memory-backed files. */
export function shmDir(): string | undefined {
  try {
    return statfsSync('/dev/shm').type === 0x01021994 ? '/dev/shm' : undefined;
  } catch {
    return undefined;
  }
}
