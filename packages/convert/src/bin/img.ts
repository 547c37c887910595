#!/usr/bin/env node
// The img command. Built, this file is replaced by a launcher of the bundled img-main.ts (scripts/bundle-bins.mjs).
// V8's code cache for our modules where Node has one (>= 22.1; a no-op where it is missing): start-up is most of a small conversion.
{
  const mod = (await import('node:module')) as { enableCompileCache?: () => unknown };
  mod.enableCompileCache?.();
}
const { main } = await import('./img-main.js');
await main();
