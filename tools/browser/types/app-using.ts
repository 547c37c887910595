// The root README's browser example as a browser app writes it, with
// `await using`: lib ["ES2022", "DOM", "esnext.disposable"] and no Node
// types (tsconfig.using.json), the setup the README names for it.
import { BlobStorage, BlobTarget, sparseCopy } from '@img/block';
import { openQcow2 } from '@img/qcow2';
import { createVhd } from '@img/vhd';

/** A qcow2 in a Blob (a picked File, a fetch() answer) to a dynamic VHD, as a Blob to download. */
export async function qcow2ToVhd(image: Blob): Promise<Blob> {
  await using src = await openQcow2(new BlobStorage(image), { readOnly: true });
  const out = new BlobTarget({ name: 'disk.vhd' });
  const dst = await createVhd(out, { size: src.size });
  await sparseCopy(src, dst);
  await dst.close();
  return out.toBlob();
}
