/**
 * What compactQcow2 and sparsifyQcow2 refuse, before writing anything:
 * each refusal an ImageError with a stable code naming the field.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageError, MemoryStorage, readU64Be, writeU64Be } from '@img/block';
import { describeQemu, qemuImg, qemuIo, tempDir } from '@img/testkit';
import { afterAll, expect, it } from 'vitest';
import { compactQcow2 } from './compact.js';
import { sparsifyQcow2 } from './sparsify.js';

const tmp = tempDir('qcow2-compact-');
afterAll(() => tmp.cleanup());

function image(): Uint8Array {
  const file = join(tmp.path, 'a.qcow2');
  qemuImg(['create', '-q', '-f', 'qcow2', file, '4M']);
  qemuIo(file, 'qcow2', ['write -P 1 0 1M', 'write -P 0 1M 1M']);
  return new Uint8Array(readFileSync(file));
}

async function refused(bytes: Uint8Array, code: string, field: string | undefined, readOnly = false): Promise<void> {
  for (const op of [compactQcow2, sparsifyQcow2]) {
    const storage = MemoryStorage.from(bytes, { name: 'a.qcow2', readOnly });
    const error = await op(storage).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(ImageError.isInstance(error), String(error)).toBe(true);
    expect((error as ImageError).code).toBe(code);
    if (field) expect((error as ImageError).data.field).toBe(field);
    expect(same(storage.toBytes(), bytes), 'nothing written').toBe(true);
  }
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

describeQemu('compactQcow2 and sparsifyQcow2 refuse what they cannot keep consistent', () => {
  it('a dirty image (ERR_IMG_UNSAFE), one marked corrupt (ERR_IMG_CORRUPT), a read-only storage (ERR_IMG_READ_ONLY)', async () => {
    const bytes = image();
    const dirty = bytes.slice();
    dirty[79]! |= 1; // incompatible_features bit 0: dirty
    await refused(dirty, 'ERR_IMG_UNSAFE', 'incompatible_features');
    const marked = bytes.slice();
    marked[79]! |= 2; // bit 1: corrupt
    await refused(marked, 'ERR_IMG_CORRUPT', 'incompatible_features');
    await refused(bytes, 'ERR_IMG_READ_ONLY', undefined, true);
  });

  it('a cluster two structures claim, and an L2 table past the end of the file (ERR_IMG_CORRUPT)', async () => {
    const bytes = image();
    const l1 = readU64Be(bytes, 40);
    const refcountTable = readU64Be(bytes, 48);
    const crossed = bytes.slice();
    writeU64Be(crossed, l1, refcountTable); // L1 entry 0 -> the refcount table
    await refused(crossed, 'ERR_IMG_CORRUPT', 'L1 entry');
    const past = bytes.slice();
    writeU64Be(past, l1, bytes.length + 1024 * 1024);
    await refused(past, 'ERR_IMG_CORRUPT', 'L1 entry');
  });
});

describeQemu('compactQcow2 and sparsifyQcow2 refuse an L1 entry of flags without an L2 table offset', () => {
  // It maps nothing, but qemu-img check reads the header as that entry's L2 table: a leak given back or a file cut
  // shorter turns words of the header into more corruptions (qcow2 fuzz seed 1119 case 103: 8, then 9 after compact).
  it('in the active L1 table (ERR_IMG_CORRUPT, nothing written)', async () => {
    const bytes = image();
    const l1 = readU64Be(bytes, 40);
    const flagsOnly = bytes.slice();
    flagsOnly.fill(0, l1, l1 + 8);
    flagsOnly[l1] = 0x80; // COPIED, offset 0
    await refused(flagsOnly, 'ERR_IMG_CORRUPT', 'L1 entry');
  });

  it("in a snapshot's L1 table (ERR_IMG_CORRUPT, nothing written)", async () => {
    const file = join(tmp.path, 'snap.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', file, '4M']);
    qemuIo(file, 'qcow2', ['write -P 1 0 1M']);
    qemuImg(['snapshot', '-c', 's1', file]);
    const bytes = new Uint8Array(readFileSync(file));
    const snapshotL1 = readU64Be(bytes, readU64Be(bytes, 64)); // the first snapshot entry's l1_table_offset
    const flagsOnly = bytes.slice();
    flagsOnly.fill(0, snapshotL1, snapshotL1 + 8);
    flagsOnly[snapshotL1] = 0x80;
    await refused(flagsOnly, 'ERR_IMG_CORRUPT', 'snapshot L1 entry');
  });
});
