// A browser app's use of the SDK, type-checked against the shipped .d.ts
// under lib ["ES2022", "DOM"] with no Node types (tsconfig.json here).
import { BlobStorage, BlobTarget, sparseCopy, storageToBlob, type Disk } from '@img/block';
import { createQcow2, openQcow2, qcow2Codecs, type Qcow2Disk } from '@img/qcow2';
import { createVhd, openVhd } from '@img/vhd';
import { openVmdk, vmdkCodecs, type VmdkDisk } from '@img/vmdk';

/** A streamOptimized VMDK from the user's file into a qcow2 in memory. */
export async function vmdkToQcow2(file: File): Promise<Blob> {
  const vmdk: VmdkDisk = await openVmdk(new BlobStorage(file));
  const out = new BlobTarget({ name: 'out.qcow2' });
  const qcow2: Disk = await createQcow2(out, { size: vmdk.size });
  await sparseCopy(vmdk, qcow2);
  await qcow2.close();
  await vmdk[Symbol.asyncDispose]();
  return vmdkCodecs().name === 'web' ? out.toBlob() : file;
}

export async function toVhd(file: File): Promise<Blob> {
  const disk: Qcow2Disk = await openQcow2(new BlobStorage(file), { readOnly: true });
  const out = new BlobTarget({ name: 'out.vhd' });
  const vhd: Disk = await createVhd(out, { size: disk.size });
  await sparseCopy(disk, vhd);
  await vhd.close();
  await disk[Symbol.asyncDispose]();
  const back = await openVhd(new BlobStorage(await out.toBlob()), { readOnly: true });
  const name: string = qcow2Codecs().name;
  await back.close();
  return name === 'web' ? out.toBlob() : storageToBlob(new BlobStorage(file));
}
