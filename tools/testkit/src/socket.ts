import { createConnection } from 'node:net';

/**
 * Waits until a Unix socket accepts a connection (a server started in
 * another process, such as qemu-nbd), at most `timeoutMs`. The socket file
 * appears when the server binds it, before it listens: a connection made
 * between the two is refused, so waiting for the file alone is not enough.
 * Resolves true when a connection was accepted (and closed at once).
 */
export async function waitForSocket(path: string, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection(path);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}
