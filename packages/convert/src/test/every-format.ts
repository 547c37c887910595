/**
 * The four formats a test runs one case for, each with the file extension
 * it uses and qemu-img's name for it, and the fixture every such case
 * starts from: a 32 MiB raw disk (`writes` as qemu-io commands) converted
 * by qemu-img into each of the other formats.
 */
import { qemuImg, qemuIo } from '@img/testkit';

/** [img's format name, file extension, qemu-img's format name]. */
export const EVERY_FORMAT = [
  ['raw', 'img', 'raw'],
  ['qcow2', 'qcow2', 'qcow2'],
  ['vhd', 'vhd', 'vpc'],
  ['vmdk', 'vmdk', 'vmdk'],
] as const;

/** Writes `disk.img` (32 MiB, `writes` applied) and its qemu-img conversions `disk.qcow2`, `disk.vhd`, `disk.vmdk` where `at` says. */
export function makeEveryFormat(at: (name: string) => string, writes: string[] = []): void {
  qemuImg(['create', '-q', '-f', 'raw', at('disk.img'), '32M']);
  if (writes.length) qemuIo(at('disk.img'), 'raw', writes);
  for (const [, ext, qemuFormat] of EVERY_FORMAT) if (ext !== 'img') qemuImg(['convert', '-O', qemuFormat, at('disk.img'), at(`disk.${ext}`)]);
}
