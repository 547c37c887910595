/**
 * Every write path against a flat in-memory model: random sequences of
 * write / writeZeroes / discard / writeCompressed / resize / reopen /
 * overlapping unawaited writes on images of many shapes; after each
 * sequence the disk must read as the model, and checkQcow2 must find no
 * corruption and no leak.
 */
import { describe, it } from 'vitest';
import fc from 'fast-check';
import { SHAPES, opsArb, runOps, verify, clusterSizeOf } from '../test/write-model.js';

describe('write paths against a flat model', () => {
  for (const shape of SHAPES) {
    it(shape.name, async () => {
      const cs = clusterSizeOf(shape);
      await fc.assert(
        fc.asyncProperty(
          opsArb(shape, cs, () => shape.size, shape.ops ?? 12),
          async (ops) => {
            await verify(shape, await runOps(shape, ops));
          },
        ),
        { seed: Number(process.env.IMG_SEED ?? 424242), numRuns: Number(process.env.IMG_RUNS ?? shape.runs ?? 25), endOnFailure: true },
      );
    });
  }
});
