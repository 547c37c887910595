// The public API of @img/luks (file helpers: @img/luks/node).
export { openLuks, type LuksOpenOptions } from './open.js';
export { LuksDisk } from './disk.js';
export { createLuks, luksCreateSpec, LUKS_CREATE_OPTIONS, type LuksCreateOptions } from './create.js';
export { measureLuks } from './measure.js';
export { luksDriver } from './driver.js';
export { probeLuks, readLuksVolume, LUKS_MAGIC, LUKS_VERSION, type LuksVolume } from './header.js';
export type { LuksHeader, LuksKeySlot } from '@img/qcow2/luks';
export { amendLuksKeySlots, LUKS_AMEND_OPTIONS, type LuksKeySlotChange } from './keyslots.js';
