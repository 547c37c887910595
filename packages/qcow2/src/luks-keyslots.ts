/**
 * LUKS key slot management (qemu-img amend's `encrypt.state`,
 * `encrypt.new-secret`, `encrypt.old-secret`, `encrypt.keyslot`,
 * `encrypt.iter-time` of a qcow2 image; the same without `encrypt.` of a
 * luks volume, whose amend uses {@link changeLuksKeySlots} too): a
 * passphrase added in a slot (an active one only with force), sealing the
 * master key the current passphrase unlocks; or slots erased, chosen by
 * number or by the passphrase they open. A new slot's key material is
 * written and flushed before its header entry; an erased slot's entry is
 * disabled and flushed before its key material is overwritten with random
 * bytes: a crash leaves the old slots or the new ones, and never an active
 * entry over material that is not its own.
 */
import { invalidArg, lentStorage, readOnlyStorageError, unsupported, utf8Encode, type OptionTable } from '@img/block';
import type { Storage } from '@img/block';
import { readyCryptoPrimitives } from './crypto-primitives.js';
import { closeQcow2 } from './io.js';
import { checkUnlockable, iterationsFor, materialBytes, openSlot, sealSlot, slotEntry, slotEntryOffset, unlockMasterKey, type LuksHeader } from './luks.js';
import { openQcow2Image } from './open.js';

const FORMAT = 'qcow2';
const SLOTS = 8;
/** qemu's default PBKDF2 time of a new slot, and its least iterations of one. */
const DEFAULT_ITER_TIME_MS = 2000;
const MIN_SLOT_ITERATIONS = 1000;

/** A change of LUKS key slots ({@link amendQcow2KeySlots}, and @img/luks's amendLuksKeySlots). */
export interface LuksKeySlotChange {
  /** 'active' adds `newPassphrase`; 'inactive' erases the slots `keyslot` or `oldPassphrase` select (qemu's `state`). */
  state: 'active' | 'inactive';
  /**
   * The passphrase that opens the image now (qemu's key-secret of the
   * image). Needed to add a slot (it unlocks the master key the new slot
   * seals); when given to erase, it must open the image, as qemu-img checks
   * on open.
   */
  passphrase?: string | Uint8Array;
  /** The passphrase of the new slot (`new-secret`). */
  newPassphrase?: string | Uint8Array;
  /** Erase the active slots this passphrase opens (`old-secret`); with `keyslot`, that slot only, if it opens. */
  oldPassphrase?: string | Uint8Array;
  /** The slot (0-7) to fill or erase (`keyslot`); by default the first free one is filled. */
  keyslot?: number;
  /** Milliseconds of PBKDF2 the new slot takes to open (`iter-time`, default 2000). */
  iterTimeMs?: number;
  /**
   * qemu-img amend's `--force`: overwrite an active slot, or erase the last
   * active ones (the image then opens with no passphrase: its data is lost).
   */
  force?: boolean;
}

/** A change of key slots of an encrypted qcow2 image ({@link amendQcow2KeySlots}). */
export type Qcow2KeySlotChange = LuksKeySlotChange;

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
 * Refusals are qemu-img amend's sentences ({@link changeLuksKeySlots}).
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
  return changeLuksKeySlots(storage, enc.area.offset, enc.luks, change, file);
}

/**
 * Adds or erases key slots of the LUKS header `h` that lies at `offset` in
 * `storage` (a qcow2 image's encryption header clusters, or offset 0 of a
 * luks volume), as qemu-img amend changes them, in its words: a passphrase
 * given must open the image; adding needs it and `newPassphrase`, fills
 * `keyslot` or the first free slot, and overwrites an active one only with
 * `force`; erasing takes `keyslot` and/or `oldPassphrase` and leaves no slot
 * active only with `force`. Returns the slots changed.
 */
export async function changeLuksKeySlots(storage: Storage, offset: number, h: LuksHeader, change: LuksKeySlotChange, file: string): Promise<number[]> {
  if (storage.readOnly) throw readOnlyStorageError(FORMAT, file);
  if (change.state !== 'active' && change.state !== 'inactive') throw invalidArg(FORMAT, `Parameter 'state' does not accept value '${String(change.state)}'`, { field: 'state', actual: String(change.state) });
  const { keyslot } = change;
  if (keyslot !== undefined && !(Number.isInteger(keyslot) && keyslot >= 0 && keyslot < SLOTS)) {
    throw invalidArg(FORMAT, `Invalid keyslot ${keyslot} specified, must be between 0 and ${SLOTS - 1}`, { field: 'keyslot', actual: keyslot });
  }
  const crypto = await readyCryptoPrimitives();
  if (!crypto) throw unsupported(FORMAT, file, 'changing key slots needs crypto primitives, and this platform has none installed (setQcow2CryptoPrimitives)', { field: 'state' });
  checkUnlockable(crypto, h, file);
  const readArea = (at: number, length: number) => storage.read(offset + at, length);
  // As qemu-img, which opens the image with its key-secret before it amends anything: a passphrase given must open it.
  const master = change.passphrase !== undefined ? await unlockMasterKey(crypto, h, bytesOf(change.passphrase), readArea, file) : undefined;

  if (change.state === 'active') {
    if (change.newPassphrase === undefined) throw invalidArg(FORMAT, "'new-secret' is required to activate a keyslot", { field: 'new-secret' });
    if (change.oldPassphrase !== undefined) throw invalidArg(FORMAT, "'old-secret' must not be given when activating keyslots", { field: 'old-secret' });
    const slot = keyslot ?? h.slots.findIndex((s) => !s.active);
    if (slot < 0) throw invalidArg(FORMAT, "Can't add a keyslot - all keyslots are in use", { field: 'keyslot' });
    const entry = h.slots[slot]!;
    if (entry.active && !change.force) throw invalidArg(FORMAT, `Refusing to overwrite active keyslot ${slot} - please erase it first`, { field: 'keyslot', actual: slot });
    if (!master) throw invalidArg(FORMAT, `${file}: adding a key slot needs the image's current passphrase (its key-secret in --image-opts; API: passphrase)`, { file, field: 'passphrase' });
    const iterations = await iterationsFor(crypto, h.hash, h.spec.keyBytes, change.iterTimeMs ?? DEFAULT_ITER_TIME_MS, MIN_SLOT_ITERATIONS);
    const sealed = await sealSlot(crypto, h.spec, h.hash, master, bytesOf(change.newPassphrase), iterations);
    if (entry.active) {
      // Overwritten with force: disabled first, so no crash leaves it active over the new material.
      await storage.write(offset + slotEntryOffset(slot), slotEntry(false, entry.keyOffset));
      await storage.flush();
    }
    await storage.write(offset + entry.keyOffset, sealed.material);
    await storage.flush();
    await storage.write(offset + slotEntryOffset(slot), slotEntry(true, entry.keyOffset, sealed));
    await storage.flush();
    return [slot];
  }

  if (change.newPassphrase !== undefined) throw invalidArg(FORMAT, "'new-secret' must not be given when erasing keyslots", { field: 'new-secret' });
  const activeCount = h.slots.filter((s) => s.active).length;
  const opens = async (i: number) => (await openSlot(crypto, h, h.slots[i]!, bytesOf(change.oldPassphrase!), readArea)) !== undefined;
  let chosen: number[];
  if (keyslot !== undefined) {
    if (!h.slots[keyslot]!.active) throw invalidArg(FORMAT, `Given keyslot ${keyslot} is already erased (inactive)`, { field: 'keyslot', actual: keyslot });
    if (change.oldPassphrase !== undefined && !(await opens(keyslot))) {
      throw invalidArg(FORMAT, `Given keyslot ${keyslot} doesn't contain the given old password for erase operation`, { field: 'old-secret', actual: keyslot });
    }
    if (activeCount === 1 && !change.force) {
      throw invalidArg(FORMAT, `Attempt to erase the only active keyslot ${keyslot} which will erase all the data in the image irreversibly - refusing operation`, { field: 'keyslot', actual: keyslot });
    }
    chosen = [keyslot];
  } else if (change.oldPassphrase !== undefined) {
    chosen = [];
    for (let i = 0; i < SLOTS; i++) if (h.slots[i]!.active && (await opens(i))) chosen.push(i);
    if (chosen.length === 0) throw invalidArg(FORMAT, 'No keyslots match given (old) password for erase operation', { field: 'old-secret' });
    if (chosen.length === activeCount && !change.force) {
      throw invalidArg(FORMAT, 'All the active keyslots match the (old) password that was given and erasing them will erase all the data in the image irreversibly - refusing operation', { field: 'old-secret' });
    }
  } else {
    throw invalidArg(FORMAT, 'To erase keyslot(s), either explicit keyslot index or the password currently contained in them must be given', { field: 'keyslot' });
  }
  for (const i of chosen) {
    const keyOffset = h.slots[i]!.keyOffset;
    await storage.write(offset + slotEntryOffset(i), slotEntry(false, keyOffset));
    await storage.flush();
    await storage.write(offset + keyOffset, crypto.randomBytes(materialBytes(h.spec.keyBytes)));
    await storage.flush();
  }
  return chosen;
}
