/** qemu's cache modes: qemu-img's -t (and -T for a source) of convert, commit, rebase and amend. */
export type CacheMode = 'none' | 'directsync' | 'writeback' | 'writethrough' | 'unsafe';

const CACHE_MODES: readonly string[] = ['none', 'directsync', 'writeback', 'writethrough', 'unsafe'] satisfies readonly CacheMode[];

/** Whether `value` names one of qemu's cache modes. */
export function isCacheMode(value: string): value is CacheMode {
  return CACHE_MODES.includes(value);
}

/** The modes, for a message that lists them. */
export function cacheModeNames(): string {
  return CACHE_MODES.join(', ');
}
