/**
 * LUKS key slot management (qemu-img amend's `encrypt.state`,
 * `encrypt.new-secret`, `encrypt.old-secret`, `encrypt.keyslot`,
 * `encrypt.iter-time`): a passphrase added in a free slot, sealing the
 * master key the current passphrase unlocks; or slots erased, chosen by
 * number or by the passphrase they open. A new slot's key material is
 * written and flushed before its header entry; an erased slot's entry is
 * disabled and flushed before its key material is overwritten with random
 * bytes: a crash leaves the old slots or the new ones, and never an active
 * entry over material that is not its own.
 */
import { invalidArg, lentStorage, unsupported, utf8Encode, type OptionTable } from '@img/block';
import type { Storage } from '@img/block';
import { qcow2CryptoPrimitives } from './crypto-primitives.js';
import { closeQcow2 } from './io.js';
import { checkUnlockable, iterationsFor, materialBytes, openSlot, sealSlot, slotEntry, slotEntryOffset, unlockMasterKey } from './luks.js';
import { openQcow2Image } from './open.js';

const FORMAT = 'qcow2';
const SLOTS = 8;

/** A change of key slots ({@link amendQcow2KeySlots}). */
export interface Qcow2KeySlotChange {
  /** 'active' adds `newPassphrase`; 'inactive' erases the slots `keyslot` or `oldPassphrase` select. */
  state: 'active' | 'inactive';
  /** The passphrase that opens the image now: adding a slot seals the master key it unlocks. */
  passphrase?: string | Uint8Array;
  /** The passphrase of the new slot. */
  newPassphrase?: string | Uint8Array;
  /** Erase every active slot this passphrase opens. */
  oldPassphrase?: string | Uint8Array;
  /** The slot (0-7) to fill or erase; by default the first free one is filled. */
  keyslot?: number;
  /** Milliseconds of PBKDF2 the new slot takes to open (default 2000). */
  iterTimeMs?: number;
  /** Erase even the last active slots (the image then opens with no passphrase: its data is lost). */
  force?: boolean;
}

/** qemu-img amend's `encrypt.*` options: typed key, `-o` name, help. */
export const QCOW2_AMEND_KEYSLOT_OPTIONS: OptionTable = [
  { key: 'encryptIterTime', name: 'encrypt.iter-time', kind: 'num', help: 'Time to spend in PBKDF in milliseconds' },
  { key: 'encryptKeyslot', name: 'encrypt.keyslot', kind: 'num', help: 'Select a single keyslot to modify explicitly' },
  { key: 'encryptNewSecret', name: 'encrypt.new-secret', kind: 'str', help: 'New secret to set in the matching keyslots' },
  { key: 'encryptOldSecret', name: 'encrypt.old-secret', kind: 'str', help: 'Select all keyslots that match this password' },
  { key: 'encryptState', name: 'encrypt.state', kind: 'str', help: 'Select new state of affected keyslots (active/inactive)' },
];

const bytesOf = (p: string | Uint8Array) => (typeof p === 'string' ? utf8Encode(p) : p);

/**
 * Adds or erases LUKS key slots of the qcow2 image in `storage` (opened
 * writable; the image's data is not touched). Returns the slots changed.
 *
 * @example
 * ```ts
 * await amendQcow2KeySlots(storage, { state: 'active', passphrase: 'old one', newPassphrase: 'new one' });
 * await amendQcow2KeySlots(storage, { state: 'inactive', oldPassphrase: 'old one' });
 * ```
 */
export async function amendQcow2KeySlots(storage: Storage, change: Qcow2KeySlotChange): Promise<number[]> {
  const file = storage.name;
  const core = await openQcow2Image(lentStorage(storage), { readOnly: true, noBacking: true, noDataFile: true });
  const enc = core.encryption;
  await closeQcow2(core);
  if (!enc?.luks || !enc.area) throw unsupported(FORMAT, file, `${file} is not a LUKS image: it has no key slots to change`, { field: 'encrypt.state' });
  const h = enc.luks;
  const area = enc.area;
  const crypto = qcow2CryptoPrimitives();
  if (!crypto) throw unsupported(FORMAT, file, 'changing key slots needs crypto primitives, and this platform has none installed (setQcow2CryptoPrimitives)', { field: 'encrypt.state' });
  checkUnlockable(crypto, h, file);
  const readArea = (at: number, length: number) => storage.read(area.offset + at, length);
  const { keyslot } = change;
  if (keyslot !== undefined && !(Number.isInteger(keyslot) && keyslot >= 0 && keyslot < SLOTS)) throw invalidArg(FORMAT, `encrypt.keyslot ${keyslot} is not a slot (0 to 7)`, { field: 'encrypt.keyslot' });

  if (change.state === 'active') {
    if (change.newPassphrase === undefined) throw invalidArg(FORMAT, 'encrypt.state=active needs encrypt.new-secret, the passphrase of the new slot', { field: 'encrypt.new-secret' });
    if (change.oldPassphrase !== undefined) throw invalidArg(FORMAT, 'encrypt.old-secret selects slots to erase: it goes with encrypt.state=inactive', { field: 'encrypt.old-secret' });
    const slot = keyslot ?? h.slots.findIndex((s) => !s.active);
    if (slot < 0) throw invalidArg(FORMAT, "Can't add a keyslot - all keyslots are in use", { field: 'encrypt.keyslot' });
    if (h.slots[slot]!.active) throw invalidArg(FORMAT, `Refusing to overwrite active keyslot ${slot} - please erase it first`, { field: 'encrypt.keyslot', actual: slot });
    if (change.passphrase === undefined) throw invalidArg(FORMAT, `${file}: adding a key slot needs the image's current passphrase (encrypt.key-secret in --image-opts)`, { field: 'passphrase' });
    const master = await unlockMasterKey(crypto, h, bytesOf(change.passphrase), readArea, file);
    const iterations = await iterationsFor(crypto, h.hash, h.spec.keyBytes, change.iterTimeMs ?? 2000, 1000);
    const sealed = await sealSlot(crypto, h.spec, h.hash, master, bytesOf(change.newPassphrase), iterations);
    const keyOffset = h.slots[slot]!.keyOffset;
    await storage.write(area.offset + keyOffset, sealed.material);
    await storage.flush();
    await storage.write(area.offset + slotEntryOffset(slot), slotEntry(true, keyOffset, sealed));
    await storage.flush();
    return [slot];
  }
  if (change.state !== 'inactive') throw invalidArg(FORMAT, `invalid encrypt.state "${String(change.state)}" (active or inactive)`, { field: 'encrypt.state' });
  if (change.newPassphrase !== undefined) throw invalidArg(FORMAT, 'encrypt.new-secret goes with encrypt.state=active', { field: 'encrypt.new-secret' });
  if (keyslot === undefined && change.oldPassphrase === undefined) throw invalidArg(FORMAT, 'encrypt.state=inactive needs encrypt.keyslot or encrypt.old-secret to say which slots to erase', { field: 'encrypt.keyslot' });
  const chosen: number[] = [];
  for (let i = 0; i < SLOTS; i++) {
    const s = h.slots[i]!;
    if (!s.active || (keyslot !== undefined && i !== keyslot)) continue;
    if (change.oldPassphrase !== undefined && !(await openSlot(crypto, h, s, bytesOf(change.oldPassphrase), readArea))) continue;
    chosen.push(i);
  }
  if (chosen.length === 0) {
    throw invalidArg(FORMAT, keyslot !== undefined && change.oldPassphrase === undefined ? `keyslot ${keyslot} is not active: nothing to erase` : 'No keyslots match the given (old) password', {
      field: change.oldPassphrase !== undefined ? 'encrypt.old-secret' : 'encrypt.keyslot',
    });
  }
  const left = h.slots.filter((s) => s.active).length - chosen.length;
  if (left === 0 && !change.force) {
    throw invalidArg(FORMAT, 'erasing these keyslots would leave none active: no passphrase would open the image and its data would be lost (force it with --force)', { field: 'encrypt.state' });
  }
  for (const i of chosen) {
    const keyOffset = h.slots[i]!.keyOffset;
    await storage.write(area.offset + slotEntryOffset(i), slotEntry(false, keyOffset));
    await storage.flush();
    await storage.write(area.offset + keyOffset, crypto.randomBytes(materialBytes(h.spec.keyBytes)));
    await storage.flush();
  }
  return chosen;
}
