/**
 * The bounds every reader applies to what an image claims, in one place.
 * An image that exceeds one is refused with ERR_IMG_CORRUPT (or
 * ERR_IMG_UNSUPPORTED where the value is legal but beyond what we accept)
 * before anything is allocated or looped over. The values follow qemu's
 * own limits, so every image qemu writes stays inside them.
 */
export const LIMITS = {
  /** qcow2: largest L1 table, in bytes (qemu: QCOW_MAX_L1_SIZE). */
  qcow2MaxL1TableBytes: 32 * 1024 * 1024,
  /** qcow2: largest refcount table, in bytes (qemu: QCOW_MAX_REFTABLE_SIZE). */
  qcow2MaxRefcountTableBytes: 8 * 1024 * 1024,
  /** qcow2: most internal snapshots (qemu: QCOW_MAX_SNAPSHOTS). */
  qcow2MaxSnapshots: 65536,
  /** qcow2: most extra data in one snapshot table entry, in bytes (qemu: QCOW_MAX_SNAPSHOT_EXTRA_DATA). */
  qcow2MaxSnapshotExtraData: 1024,
  /** qcow2: cluster_bits range (512 B to 2 MiB clusters). */
  qcow2MinClusterBits: 9,
  qcow2MaxClusterBits: 21,
  /** qcow2: a compressed cluster must inflate to exactly one cluster: never more is produced. */
  qcow2CompressedOutputBytes: 'one cluster',
  /** VHD: largest virtual size, in bytes (2040 GiB, as qemu's vpc driver). */
  vhdMaxSize: 2040 * 1024 * 1024 * 1024,
  /** VHD: BAT entries are bounded by what the file can hold (each allocated block lies inside it). */
  vhdBatEntries: 'bounded by the file size',
  /** Backing chains / parent chains: deepest chain opened (cycles are refused whatever the depth). */
  maxChainDepth: 64,
} as const;
