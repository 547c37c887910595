/**
 * The hook a conversion hands its source to once it is open (convertFile's
 * `onSourceOpen`), before the output is touched.
 */
import type { Disk } from '@img/block';

/** Calls `hook` with the freshly opened `source`; a hook that throws closes the source before its error goes on. */
export async function sourceOpened(source: Disk, hook: ((source: Disk) => void | Promise<void>) | undefined): Promise<void> {
  if (!hook) return;
  try {
    await hook(source);
  } catch (e) {
    await source.close().catch(() => undefined);
    throw e;
  }
}
