import { it } from 'vitest';
import { FaultStorage, MemoryStorage } from '@img/block';
import { killedBytes, seededBytes } from '@img/testkit';
import { createQcow2 } from './create.js';
import { openQcow2 } from './open.js';
import { checkQcow2 } from './check.js';
it('dbg', async () => {
  const storage = new MemoryStorage({ name: 's.qcow2' });
  const CS = 1024, SIZE = 384 * 1024;
  const disk = await createQcow2(storage, { size: SIZE, compat: 'v3', clusterSize: CS });
  await disk.write(0, seededBytes(90 * 1024, 1));
  await disk.createSnapshot('s1');
  await disk.write(60 * 1024, seededBytes(100 * 1024, 4));
  await disk.createSnapshot('s2');
  await disk.write(10 * 1024, seededBytes(10 * 1024, 5));
  await disk.close();
  const base = storage.toBytes();
  const fault = new FaultStorage(base, 'snap.qcow2');
  const d2 = await openQcow2(fault, { readOnly: false });
  console.log('header', d2.header.l1TableOffset, d2.header.refcountTableOffset, d2.header.snapshotsOffset);
  await d2.createSnapshot('s3');
  await d2.close();
  fault.ops.forEach((o, i) => console.log(i, o.kind, o.kind === 'write' ? `${o.position} (${o.position / CS}) +${o.data.length}` : o.kind === 'truncate' ? o.size : ''));
  for (let n = 0; n <= fault.ops.length; n++) {
    const bytes = killedBytes(base, fault.ops, n);
    const st = MemoryStorage.from(bytes, { name: 'c' });
    const rw = await openQcow2(st, { readOnly: false });
    await rw.write(0, seededBytes(rw.size, 9));
    await rw.close();
    const c = await checkQcow2(MemoryStorage.from(st.toBytes(), { name: 'c' }));
    console.log(n, c.corruptions, c.leaks, c.messages.slice(0, 3).join(' | '));
  }
});
