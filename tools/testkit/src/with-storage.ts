/**
 * withStorage: opens a storage, hands it to `use`, and closes it however
 * `use` ends. The one-shot functions (check, bitmap edits, amend) leave
 * the storage they are given open, so tests that open one inline close it
 * here.
 *
 * openOwning: the other half of the convention. An open that succeeds owns
 * its storage (the disk closes it); one that refuses leaves it with the
 * caller, which closes it here before the refusal goes on.
 */

/** Awaits `opening`, runs `use` with the storage, and closes it after, whatever `use` did. */
export async function withStorage<S extends { close(): Promise<void> }, T>(opening: Promise<S> | S, use: (storage: S) => Promise<T>): Promise<T> {
  const storage = await opening;
  try {
    return await use(storage);
  } finally {
    await storage.close();
  }
}

/** Awaits `opening` and hands the storage to `open`: its result on success; on a refusal, the storage closed and the refusal thrown. */
export async function openOwning<S extends { close(): Promise<void> }, T>(opening: Promise<S> | S, open: (storage: S) => Promise<T>): Promise<T> {
  const storage = await opening;
  try {
    return await open(storage);
  } catch (e) {
    await storage.close();
    throw e;
  }
}
