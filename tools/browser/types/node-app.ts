// A Node program's use of the SDK (lib ESNext, @types/node): the same
// shipped types, where the platform already declares Symbol.asyncDispose.
import { FileStorage } from '@img/block/node';
import { openQcow2 } from '@img/qcow2';
import { installNodeCodecs, poolSize } from '@img/qcow2/node';
import { openVhdFile } from '@img/vhd/node';

export async function firstSector(path: string): Promise<Uint8Array> {
  installNodeCodecs();
  await using disk = await openQcow2(await FileStorage.open(path), { readOnly: true });
  await using vhd = await openVhdFile(path.replace(/\.qcow2$/, '.vhd'));
  return poolSize() > 0 ? disk.read(0, 512) : vhd.read(0, 512);
}
