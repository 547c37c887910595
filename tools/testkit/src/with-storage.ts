/**
 * withStorage: opens a storage, hands it to `use`, and closes it however
 * `use` ends. The one-shot functions (check, bitmap edits, amend) leave
 * the storage they are given open, so tests that open one inline close it
 * here.
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
