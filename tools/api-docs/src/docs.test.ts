// The committed API reference (docs/api) is what TypeDoc makes of the packages' TSDoc today,
// and TypeDoc finds no broken link in it.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

it('docs/api is generated from the current TSDoc (pnpm docs)', () => {
  const script = fileURLToPath(new URL('./generate.mjs', import.meta.url));
  const r = spawnSync(process.execPath, [script, '--check'], { encoding: 'utf8' });
  expect(r.status, r.stdout + r.stderr).toBe(0);
  expect(r.stdout).toContain('docs/api is up to date');
}, 180_000);
