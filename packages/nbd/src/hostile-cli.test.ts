// The bins (img info/map/convert/compare) against a hostile server: exit status 1 (compare: 2), one line on stderr, no stack,
// and a conversion that fails mid-copy leaves no output that looks complete (as for any failing input).
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from '@img/testkit';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import * as P from './protocol.js';
import { startEvilServer, type EvilPeer, type EvilServer } from './test-evil-server.js';
import { MessageBuilder } from './wire.js';

const img = fileURLToPath(new URL('../../convert/dist/bin/img.js', import.meta.url));
const tmp = tempDir('img-nbd-hostile-cli-');
afterAll(() => tmp.cleanup());
let server: EvilServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const image = new Uint8Array(4 << 20).map((_, i) => (i >> 9) & 0xff);

function run(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [img, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('close', (code) => resolve({ status: code ?? -1, stdout, stderr }));
  });
}

async function fails(script: (peer: EvilPeer) => Promise<unknown>, args: (uri: string) => string[], pattern: RegExp, status = 1) {
  server = await startEvilServer(script);
  const r = await run(args(server.uri()));
  expect(r.status, r.stderr).toBe(status);
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(pattern);
  expect(lines[0]).toContain(server.uri());
  return r;
}

/** A correct server of `image` until a read at or past `from`, answered by `evil`. */
const failsAfter = (from: number, evil: (p: EvilPeer, cookie: bigint) => Promise<unknown>) => async (p: EvilPeer) => {
  await p.handshake({ size: BigInt(image.length) });
  const req = await p.serve(image, (r) => r.type === P.CMD_READ && r.offset >= from);
  if (req) await evil(p, req.cookie);
};

describe.skipIf(!existsSync(img))('img against a hostile server', () => {
  it('info: a bad greeting, an absurd option reply', async () => {
    await fails(
      (p) => p.greet({ magic: 1n }).then(() => p.stall()),
      (u) => ['info', u],
      /^img info: ERR_IMG_IO: .*greeting starts with 0x1, not NBDMAGIC \(offset 0\)/,
    );
    await server!.close();
    await fails(
      async (p) => {
        await p.greet();
        await p.clientFlags();
        await p.optionReply((await p.option()).option, P.REP_ACK, new Uint8Array(0), 2 ** 32 - 1);
        await p.stall();
      },
      (u) => ['info', u],
      /over the 65536-byte limit/,
    );
  });

  it('map: block status that does not advance', async () => {
    await fails(
      async (p) => {
        await p.handshake({ size: BigInt(image.length) });
        await p.serve(image, (r) => {
          if (r.type !== P.CMD_BLOCK_STATUS) return false;
          void p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, new MessageBuilder().u32(7).u32(0).u32(0));
          return true;
        });
        await p.stall();
      },
      (u) => ['map', '-f', 'raw', u],
      /descriptor of length 0/,
    );
  });

  it('convert: a server that fails or closes mid-copy leaves no output', async () => {
    for (const [fmt, evil, pattern] of [
      ['qcow2', (p: EvilPeer, c: bigint) => p.simple(c, P.EIO), /answered READ of \d+ bytes at offset 0x[0-9a-f]+ \(cookie \d+\) with EIO/],
      ['raw', async (p: EvilPeer) => p.socket.end(), /closed the connection with \d+ request\(s\) unanswered/],
    ] as const) {
      await server?.close();
      const out = join(tmp.path, `out.${fmt}`);
      await fails(failsAfter(2 << 20, evil), (u) => ['convert', '-f', 'raw', '-O', fmt, u, out], pattern);
      expect(existsSync(out)).toBe(false);
    }
  });

  it('compare: a read answered with a gap', async () => {
    const ref = join(tmp.path, 'ref.raw');
    writeFileSync(ref, image);
    await fails(
      failsAfter(0, (p, c) => p.chunk(c, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_HOLE, new MessageBuilder().u64(0).u32(512))),
      (u) => ['compare', '-f', 'raw', '-F', 'raw', u, ref],
      /bytes unanswered/,
      2, // compare's status for an error, as qemu-img's (1 is "images differ")
    );
  });
});
