// @img/qcow2/luks: the LUKS1 machinery encrypted qcow2 images are built on (the header
// codec and its bounds, key slots, the sector cipher, the crypto primitives), for
// @img/luks, whose images are a LUKS1 header and encrypted sectors with no qcow2
// around them. Errors raised here name the format "qcow2"; a caller of another
// format renames them. Applications use the root (@img/qcow2) or @img/luks.
export {
  parseLuksHeader,
  describeLuks,
  checkUnlockable,
  materialBytes,
  openSlot,
  unlockMasterKey,
  unlockLuks,
  sealSlot,
  slotEntry,
  slotEntryOffset,
  luksAreaBytes,
  iterationsFor,
  createLuksArea,
  luksCreateSpecOf,
  LUKS_HASHES,
  type LuksCipherOptions,
  LUKS_HEADER_SIZE,
  LUKS_STRIPES,
  MAX_PBKDF2_ITERATIONS,
  type LuksHeader,
  type LuksKeySlot,
  type LuksCreateSpec,
} from './luks.js';
export { SectorCipher, SECTOR, validKeyBytes, essivKeyValid, type CipherSpec, type CipherMode, type IvGenerator, type CipherAlgorithm } from './sector-cipher.js';
export { blockCipher, CIPHER_ALGORITHMS, type BlockCipher } from './block-cipher.js';
export { qcow2CryptoPrimitives, readyCryptoPrimitives, setQcow2CryptoPrimitives, type Qcow2CryptoPrimitives } from './crypto-primitives.js';
export { changeLuksKeySlots, type LuksKeySlotChange } from './luks-keyslots.js';
