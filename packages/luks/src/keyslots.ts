/**
 * Key slot changes of a luks image, as `qemu-img amend` makes them
 * (`state`, `new-secret`, `old-secret`, `keyslot`, `iter-time`: the same
 * options encrypted qcow2 spells `encrypt.*`): a passphrase added in a slot,
 * sealing the master key the current passphrase unlocks, or slots erased,
 * chosen by number or by the passphrase they open. Refusals are qemu-img's
 * sentences. The rules are encrypted qcow2's (`changeLuksKeySlots` of
 * @img/qcow2/luks: qemu's LUKS layer is one for both formats); here the
 * header is at offset 0, so slot entries and key material are written at
 * their offsets in the file.
 *
 * Crash ordering: a new slot's key material is written and flushed before
 * its header entry (an active slot overwritten with `force` is disabled and
 * flushed first); an erased slot's entry is disabled and flushed before its
 * key material is overwritten with random bytes. A crash leaves the old
 * slots or the new ones, never an active entry over material not its own.
 */
import { readOnlyStorageError, type OptionTable, type Storage } from '@img/block';
import { changeLuksKeySlots, type LuksKeySlotChange as SharedKeySlotChange } from '@img/qcow2/luks';
import { readLuksVolume } from './header.js';
import { FORMAT, luksCall } from './luks-errors.js';

/** A change of key slots ({@link amendLuksKeySlots}): the one encrypted qcow2 images take, as qemu-img amend takes both. */
export type LuksKeySlotChange = SharedKeySlotChange;

/** qemu-img amend's options of a luks image (`qemu-img amend -f luks -o help`): typed key, `-o` name, help. */
export const LUKS_AMEND_OPTIONS: OptionTable = [
  { key: 'iterTime', name: 'iter-time', kind: 'num', help: 'Time to spend in PBKDF in milliseconds' },
  { key: 'keyslot', name: 'keyslot', kind: 'num', help: 'Select a single keyslot to modify explicitly' },
  { key: 'newSecret', name: 'new-secret', kind: 'str', help: 'New secret to set in the matching keyslots. Empty string to erase' },
  { key: 'oldSecret', name: 'old-secret', kind: 'str', help: 'Select all keyslots that match this password' },
  { key: 'state', name: 'state', kind: 'str', help: 'Select new state of affected keyslots (active/inactive)' },
];

/**
 * Adds or erases key slots of the luks image in `storage` (writable; the
 * payload is not touched). Returns the slots changed. Refusals are
 * ERR_IMG_INVALID_ARG in qemu-img amend's words ("Refusing to overwrite
 * active keyslot 1 - please erase it first", "No keyslots match given (old)
 * password for erase operation", ...).
 *
 * @example
 * ```ts
 * await amendLuksKeySlots(storage, { state: 'active', passphrase: 'old one', newPassphrase: 'new one' });
 * await amendLuksKeySlots(storage, { state: 'inactive', oldPassphrase: 'old one' });
 * ```
 */
export async function amendLuksKeySlots(storage: Storage, change: LuksKeySlotChange): Promise<number[]> {
  const file = storage.name;
  if (storage.readOnly) throw readOnlyStorageError(FORMAT, file);
  const { header } = await readLuksVolume(storage, await storage.size(), file);
  // The header is at offset 0 of the volume; the slot logic is encrypted qcow2's (its errors renamed).
  return luksCall(() => changeLuksKeySlots(storage, 0, header, change, file));
}
