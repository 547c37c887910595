/**
 * The subcommands of img, loaded once img knows it runs one (see img.ts).
 * Each lives in its own file under commands/.
 */
import { convertMain } from './img-convert.js';
import { amend } from './commands/amend.js';
import { bench } from './commands/bench.js';
import { bitmap } from './commands/bitmap.js';
import { check } from './commands/check.js';
import { commit } from './commands/commit.js';
import { compact } from './commands/compact.js';
import { compare } from './commands/compare.js';
import { create } from './commands/create.js';
import { dd } from './commands/dd.js';
import { info } from './commands/info.js';
import { inspect } from './commands/inspect.js';
import { map } from './commands/map.js';
import { measure } from './commands/measure.js';
import { rebase } from './commands/rebase.js';
import { resize } from './commands/resize.js';
import { serve } from './commands/serve.js';
import type { Handler } from './commands/shared.js';
import { snapshot } from './commands/snapshot.js';
import { sparsify } from './commands/sparsify.js';

/** Each subcommand's body, by name. */
export const commands: Record<string, Handler> = {
  info,
  map,
  check,
  compare,
  create,
  resize,
  commit,
  rebase,
  snapshot,
  measure,
  amend,
  bitmap,
  inspect,
  dd,
  sparsify,
  compact,
  serve,
  bench,
  // As qemu-img convert: nothing on stdout or stderr when it succeeds (img-convert prints a summary line).
  convert: (argv, io) => convertMain('img convert', argv, io, { summary: false }),
};
