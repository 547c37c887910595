// Bundles main.ts for the browser (a classic script, so index.html also works opened from disk).
import { build } from 'esbuild';

await build({
  entryPoints: [new URL('./main.ts', import.meta.url).pathname],
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: 'chrome120',
  outfile: new URL('./dist/main.js', import.meta.url).pathname,
  logLevel: 'info',
});
