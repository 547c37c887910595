// Differences the campaign expects: each is written up, with its reason, in
// README.md (Deliberate differences). A difference matching one of these is
// counted as documented; any other is new and fails the run.

/** { id, match, reason }: `match` is tested against "<case description> :: <check>: <detail>". */
export const KNOWN = [
  {
    id: 'vhd-small-blocks',
    match: /block_size=(512|1024|2048)\b/,
    reason: 'qemu-img 7.2 sizes the VHD sector bitmap as floor(block_size / 4096) sectors, so it misreads blocks below 4 KiB that img writes as the spec says',
  },
  {
    id: 'snapshot-size',
    match: /snapshot convert: snapshot \S+: sizes differ .* contents agree over the shorter/,
    reason: 'qemu-img convert -l reads a snapshot at the current virtual size; img reads it at the size recorded in the snapshot, which qemu-img snapshot -a restores',
  },
  {
    id: 'luks-preallocation',
    match: /preallocation with encryption: img refuses it \(exit \d+\); qemu-img makes the image, which reads not as zeros/,
    reason: 'qemu-img 7.2 preallocates a LUKS qcow2 with clusters of zeros in the file, which read as their decryption, not as zeros; img refuses preallocation with encryption (ERR_IMG_UNSUPPORTED)',
  },
  {
    id: 'luks-keyslot-minus-one',
    match: /amend -o state=active,new-secret=sec1,keyslot=-1: img says "Invalid keyslot -1 specified, must be between 0 and 7", qemu-img "Invalid keyslot 4294967295 specified/,
    reason: 'qemu-img 7.2 reads keyslot=-1 into an unsigned 32-bit field and prints 4294967295; img names the value given (packages/luks README, Differences from qemu-img); both refuse it, exit 1',
  },
  {
    id: 'measure-host-holes',
    match: /subformat=fixed.* :: measure: -O qcow2.*\.required:/,
    reason: 'a fixed VHD: qemu-img 7.2 reads it as raw and counts its 512-byte footer as data (one more cluster required); img reads it as vpc, without the footer (vhd README)',
  },
];

/** The documented reason for a difference, or undefined when it is new. */
export function knownReason(line) {
  return KNOWN.find((k) => k.match.test(line));
}
