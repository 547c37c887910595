import { FileStorage, fileResolver } from '@img/block/node';
import { goldenSuite } from '@img/testkit';
import { openQcow2 } from './index.js';

async function open(path: string) {
  return openQcow2(await FileStorage.open(path), { resolver: fileResolver });
}

goldenSuite({
  format: 'qcow2',
  open,
  openSnapshot: async (path, snapshot) => openQcow2(await FileStorage.open(path), { resolver: fileResolver, snapshot: snapshot.id }),
});
