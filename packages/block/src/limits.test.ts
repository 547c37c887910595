import { describe, expect, it } from 'vitest';
import { LIMITS } from './limits.js';

describe('LIMITS', () => {
  it('holds the documented bounds', () => {
    expect(LIMITS.qcow2MaxL1TableBytes).toBe(2 ** 25);
    expect(LIMITS.qcow2MaxRefcountTableBytes).toBe(2 ** 23);
    expect(LIMITS.qcow2MaxSnapshots).toBe(65536);
    expect(LIMITS.qcow2MaxSnapshotExtraData).toBe(1024);
    expect(LIMITS.vhdMaxSize).toBe(2040 * 2 ** 30);
    expect(LIMITS.maxChainDepth).toBe(64);
  });
});
