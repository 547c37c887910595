import { describe, expect, it } from 'vitest';
import type { SnapshotInfo } from '@img/block';
import { parseSnapshotSelector, selectSnapshotId } from './snapshot-select.js';

const snap = (id: string, name: string): SnapshotInfo => ({ id, name, vmStateSize: 0, dateSec: 0, dateNsec: 0, vmClockNsec: 0, diskSize: 0 });

describe('convert -l snapshot options', () => {
  it('parses qemu option lists, ",," being a comma inside a value', () => {
    expect(parseSnapshotSelector('s1')).toBeUndefined();
    expect(parseSnapshotSelector('snapshot.name=a,,b,snapshot.id=7')).toEqual({ name: 'a,b', id: '7' });
    expect(parseSnapshotSelector('snapshot.id=')).toEqual({ id: '' });
    expect(() => parseSnapshotSelector('snapshot.size=1')).toThrow(/invalid parameter 'snapshot.size'/);
  });

  it('selects the first snapshot that matches every field', () => {
    const table = [snap('1', 's1'), snap('2', 's1'), snap('3', '1')];
    expect(selectSnapshotId(table, { name: 's1' }, 'f')).toBe('1');
    expect(selectSnapshotId(table, { id: '2', name: 's1' }, 'f')).toBe('2');
    expect(selectSnapshotId(table, { name: '1' }, 'f')).toBe('3');
    expect(() => selectSnapshotId(table, { id: '1', name: '1' }, 'f')).toThrow(/no snapshot with id "1" and name "1"/);
  });
});
