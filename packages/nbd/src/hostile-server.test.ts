// NbdStorage against a server that breaks the protocol on purpose (src/test-evil-server.ts): every case must end in
// one ImageError naming the server, the field and where, within bounded time and memory; never another exception.
import { ImageError } from '@img/block';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_RANGES } from './client.js';
import { NbdStorage } from './index.js';
import * as P from './protocol.js';
import { startEvilServer, type EvilPeer, type EvilServer } from './test-evil-server.js';
import { MessageBuilder } from './wire.js';

let server: EvilServer | undefined;
const open: NbdStorage[] = [];
afterEach(async () => {
  await server?.close();
  server = undefined;
  await Promise.allSettled(open.splice(0).map((s) => s.close()));
});

const FAST = { timeoutMs: 2000, requestTimeoutMs: 2000 };

async function connect(script: (peer: EvilPeer) => Promise<unknown>, options = FAST): Promise<NbdStorage> {
  server = await startEvilServer(script);
  const s = await NbdStorage.connect(server.uri(), options);
  open.push(s);
  return s;
}

/** The promise rejects with one ImageError of `code`, one line naming the server and matching `pattern`. */
async function expectImageError(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<ImageError> {
  const e = await promise.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(ImageError.isInstance(e), `not an ImageError: ${String(e)}`).toBe(true);
  const err = e as ImageError;
  expect(err.code).toBe(code);
  expect(err.message).toMatch(pattern);
  expect(err.message).toContain(`127.0.0.1:${server!.port}`);
  for (const c of ['\n', '\r', '\u001b']) expect(err.message).not.toContain(c);
  return err;
}

const connectFails = (script: (peer: EvilPeer) => Promise<unknown>, code: string, pattern: RegExp, options = FAST) =>
  (async () => {
    server = await startEvilServer(script);
    return expectImageError(NbdStorage.connect(server.uri(), options), code, pattern);
  })();

const image = new Uint8Array(1 << 20).map((_, i) => (i * 7) & 0xff);

describe('a hostile server during the handshake', () => {
  it('bad magics and oldstyle negotiation', async () => {
    await connectFails((p) => p.greet({ magic: 0x4142434445464748n }).then(() => p.stall()), 'ERR_IMG_IO', /NBDMAGIC \(offset 0\)/);
    await server!.close();
    await connectFails((p) => p.greet({ second: 0x00420281861253n }).then(() => p.stall()), 'ERR_IMG_UNSUPPORTED', /oldstyle.*offset 8/);
    await server!.close();
    await connectFails((p) => p.greet({ second: 1n }).then(() => p.stall()), 'ERR_IMG_IO', /IHAVEOPT belongs \(offset 8\)/);
    await server!.close();
    await connectFails((p) => p.greet({ flags: 0 }).then(() => p.stall()), 'ERR_IMG_UNSUPPORTED', /FIXED_NEWSTYLE/);
  });

  it('option replies of absurd length, truncated, for another option, or without end', async () => {
    const e = await connectFails(
      async (p) => {
        await p.greet();
        await p.clientFlags();
        const { option } = await p.option();
        await p.optionReply(option, P.REP_ACK, new Uint8Array(0), 2 ** 32 - 1);
        await p.stall();
      },
      'ERR_IMG_IO',
      /4294967295 bytes of data, over the 65536-byte limit/,
    );
    expect(e.data).toMatchObject({ field: 'option reply length', offset: 18 + 16 });
    await server!.close();
    await connectFails(
      async (p) => {
        await p.greet();
        await p.clientFlags();
        const { option } = await p.option();
        await p.optionReply(option, P.REP_INFO, new Uint8Array(10), 100);
        p.socket.end();
      },
      'ERR_IMG_IO',
      /closed the connection during the handshake/,
    );
    await server!.close();
    await connectFails(
      async (p) => {
        await p.greet();
        await p.clientFlags();
        await p.option();
        await p.optionReply(P.OPT_GO, P.REP_ACK);
        await p.stall();
      },
      'ERR_IMG_IO',
      /NBD_OPT_STRUCTURED_REPLY at offset 18 is for option 7/,
    );
    await server!.close();
    await connectFails(
      async (p) => {
        await p.greet();
        await p.clientFlags();
        const { option } = await p.option();
        for (let i = 0; i < 10000 && !p.socket.destroyed; i++) await p.optionReply(option, P.REP_INFO, new MessageBuilder().u16(99));
      },
      'ERR_IMG_IO',
      /drew more than 64 replies/,
      // Not a timeout case: the client gives up after 64 replies, which a loaded machine (a full suite on 2 cores) took past FAST's 2 s to send.
      { timeoutMs: 15000, requestTimeoutMs: 15000 },
    );
  });

  it('a malformed NBD_REP_META_CONTEXT, and one naming a context not asked for', async () => {
    const meta = (body: MessageBuilder) => async (p: EvilPeer) => {
      await p.greet();
      await p.clientFlags();
      await p.optionReply((await p.option()).option, P.REP_ACK);
      const { option } = await p.option();
      await p.optionReply(option, P.REP_META_CONTEXT, body);
      await p.optionReply(option, P.REP_ACK);
      await p.stall();
    };
    await connectFails(meta(new MessageBuilder().u16(1)), 'ERR_IMG_IO', /NBD_REP_META_CONTEXT at offset \d+ names ""/);
    await server!.close();
    await connectFails(meta(new MessageBuilder().u32(1).string('qemu:dirty-bitmap:x')), 'ERR_IMG_IO', /names "qemu:dirty-bitmap:x"/);
  });

  it('export sizes: 0 and odd work, 2^63-1 and 2^64-1 are refused, none is refused', async () => {
    let s = await connect((p) => p.handshake({ size: 0n }).then(() => p.serve(image)));
    expect(await s.size()).toBe(0);
    expect((await s.read(0, 512)).length).toBe(0);
    await s.close();
    await server!.close();
    s = await connect((p) => p.handshake({ size: 1000001n }).then(() => p.serve(new Uint8Array(1000001).fill(3))));
    expect([...(await s.read(999999, 512))]).toEqual([3, 3]);
    await s.close();
    for (const size of [2n ** 63n - 1n, 2n ** 64n - 1n]) {
      await server!.close();
      await connectFails((p) => p.handshake({ size }).then(() => p.stall()), 'ERR_IMG_UNSUPPORTED', new RegExp(`export size ${size} .*past the 2\\^53-1`));
    }
    await server!.close();
    await connectFails(
      (p) =>
        p.handshake({}, async (q) => {
          await q.optionReply(P.OPT_GO, P.REP_ACK);
          await q.stall();
        }),
      'ERR_IMG_IO',
      /without NBD_INFO_EXPORT/,
    );
  });

  it('block sizes that are 0, not powers of two or contradict each other', async () => {
    const cases: Array<[[number, number, number], RegExp]> = [
      [[0, 4096, 1 << 20], /minimum block size 0 is not a power of two/],
      [[3, 4096, 1 << 20], /minimum block size 3/],
      [[1 << 20, 1 << 20, 1 << 20], /minimum block size 1048576/],
      [[512, 0, 1 << 20], /preferred block size 0/],
      [[4096, 512, 1 << 20], /preferred block size 512 is not a power of two at least the minimum 4096/],
      [[4096, 4096, 1000], /maximum block size 1000 is not a multiple/],
      [[512, 4096, 0], /maximum block size 0/],
      [[1, 1, 256], /maximum block size 256 is under 512/],
    ];
    for (const [blockSize, pattern] of cases) {
      await server?.close();
      const e = await connectFails((p) => p.handshake({ blockSize }).then(() => p.stall()), 'ERR_IMG_IO', pattern);
      expect(e.data.field).toBe('NBD_INFO_BLOCK_SIZE');
    }
  });

  it('a maximum block size is honoured, and 0xffffffff is taken as 32 MiB', async () => {
    for (const [max, expected] of [
      [65536, 65536],
      [0xffffffff, 1 << 20],
    ] as const) {
      await server?.close();
      const lengths: number[] = [];
      const s = await connect((p) =>
        p.handshake({ blockSize: [512, 4096, max], size: BigInt(image.length) }).then(() =>
          p.serve(image, (r) => {
            lengths.push(r.length);
            return false;
          }),
        ),
      );
      expect(Buffer.from(await s.read(0, image.length)).equals(image)).toBe(true);
      expect(Math.max(...lengths)).toBe(expected);
    }
  });

  it('a refusal with control characters in its message is one clean line', async () => {
    await connectFails(
      (p) =>
        p.handshake({}, async (q) => {
          await q.optionReply(P.OPT_GO, P.REP_ERR_UNKNOWN, new MessageBuilder().string('no\nsuch\u001b[31m export'));
          await q.stall();
        }),
      'ERR_IMG_IO',
      /refused export "": no such \[31m export/,
    );
  });

  it('a server that stalls or dribbles during the handshake is given up after timeoutMs', async () => {
    await connectFails((p) => p.stall(), 'ERR_IMG_IO', /within 300 ms/, { timeoutMs: 300, requestTimeoutMs: 0 });
    await server!.close();
    await connectFails(
      async (p) => {
        const hello = new MessageBuilder().u64(P.NBDMAGIC).u64(P.IHAVEOPT).u16(3).build();
        for (const b of hello) {
          await p.send(new Uint8Array([b]));
          await new Promise((r) => setTimeout(r, 50));
        }
        await p.stall();
      },
      'ERR_IMG_IO',
      /within 300 ms/,
      { timeoutMs: 300, requestTimeoutMs: 0 },
    );
  });

  it('1 GiB of garbage ends at the first 18 bytes', async () => {
    let sent = 0;
    await connectFails(
      async (p) => {
        const junk = new Uint8Array(1 << 20).fill(0x5a);
        while (sent < 2 ** 30 && !p.socket.destroyed) {
          await p.send(junk);
          sent += junk.length;
        }
      },
      'ERR_IMG_IO',
      /greeting starts with 0x5a5a5a5a5a5a5a5a/,
    );
    expect(sent).toBeLessThan(2 ** 30);
  });
});

/** A storage over a server that answers correctly until `evil` picks a request, which `then` answers. */
async function evilAfter(evil: (r: { type: number }) => boolean, then: (peer: EvilPeer, req: { cookie: bigint; offset: number; length: number; type: number }) => Promise<unknown>, options = FAST) {
  return connect(async (p) => {
    await p.handshake({ size: BigInt(image.length) });
    const req = await p.serve(image, evil);
    if (req) await then(p, req);
  }, options);
}
const isRead = (r: { type: number }) => r.type === P.CMD_READ;
const isStatus = (r: { type: number }) => r.type === P.CMD_BLOCK_STATUS;

describe('a hostile server during transmission', () => {
  it('replies for a cookie never sent, and twice for one', async () => {
    let s = await evilAfter(isRead, (p) => p.simple(999n, 0).then(() => p.stall()));
    let e = await expectImageError(s.read(0, 512), 'ERR_IMG_IO', /simple reply for cookie 999, which no request in flight has/);
    expect(e.data.field).toBe('cookie');
    await server!.close();
    s = await evilAfter(isRead, async (p, req) => {
      await p.readReply(req as never, image);
      await p.readReply(req as never, image);
      await p.stall();
    });
    expect(await s.read(0, 512)).toEqual(image.subarray(0, 512));
    e = await expectImageError(s.read(512, 512), 'ERR_IMG_IO', /structured reply chunk for cookie 1, which no request in flight has/);
  });

  it('error replies fail the request only: EIO, ENOSPC, unknown errnos, structured or simple', async () => {
    const errnos = [P.EIO, P.ENOSPC, 12345, P.EPERM];
    let n = 0;
    const s = await connect(async (p) => {
      await p.handshake({ size: BigInt(image.length) });
      for (;;) {
        const req = await p.serve(image, (r) => r.offset === 4096);
        if (!req) return;
        const errno = errnos[n++ % errnos.length]!;
        if (n % 2) await p.simple(req.cookie, errno);
        else await p.chunk(req.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, new MessageBuilder().u32(errno).u16(9).string('disk\nfull'));
      }
    });
    const e = await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /answered READ of 512 bytes at offset 0x1000 \(cookie 1\) with EIO$/);
    expect(e.data).toMatchObject({ errno: 5, offset: 4096 });
    await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /with ENOSPC \(disk full\)/);
    await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /with error 12345$/);
    await expectImageError(s.read(4096, 512), 'ERR_IMG_READ_ONLY', /read-only/);
    expect(await s.read(0, 4096)).toEqual(image.subarray(0, 4096));
  });

  const readChunkCases: Array<[string, (p: EvilPeer, r: { cookie: bigint; offset: number; length: number }) => Promise<unknown>, RegExp]> = [
    ['a data chunk of 2^32-1 bytes', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, new MessageBuilder().u64(r.offset), 2 ** 32 - 1), /has length 4294967295/],
    ['a data chunk too short for its offset', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, new MessageBuilder().u32(0)), /has length 4/],
    ['a data chunk before the request', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, new MessageBuilder().u64(r.offset - 1).bytes(new Uint8Array(r.length))), /at offset 4095: .*outside/],
    ['a data chunk past the request', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, new MessageBuilder().u64(r.offset + 1).bytes(new Uint8Array(r.length))), /outside the 512-byte request/],
    ['a data chunk at offset 2^64-1', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, new MessageBuilder().u64(2n ** 64n - 1n).bytes(new Uint8Array(1))), /at offset 18446744073709551615/],
    ['a hole past the request', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_HOLE, new MessageBuilder().u64(r.offset).u32(2 ** 32 - 1)), /outside the 512-byte request/],
    ['a hole of 0 bytes', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_HOLE, new MessageBuilder().u64(r.offset).u32(0)), /outside/],
    [
      'overlapping chunks',
      async (p, r) => {
        await p.chunk(r.cookie, 0, P.REPLY_TYPE_OFFSET_HOLE, new MessageBuilder().u64(r.offset).u32(300));
        await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_DATA, new MessageBuilder().u64(r.offset + 256).bytes(new Uint8Array(256)));
      },
      /overlap bytes 0\.\.300/,
    ],
    ['a success that answers nothing', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE), /512 bytes unanswered, the first at offset 4096/],
    [
      'a success with a gap',
      async (p, r) => {
        await p.chunk(r.cookie, 0, P.REPLY_TYPE_OFFSET_HOLE, new MessageBuilder().u64(r.offset).u32(100));
        await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_OFFSET_HOLE, new MessageBuilder().u64(r.offset + 200).u32(312));
      },
      /100 bytes unanswered, the first at offset 4196/,
    ],
    ['a NONE chunk with a payload', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE, new Uint8Array(4)), /NONE chunk .* has length 4/],
    ['a block status answering a read', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, new MessageBuilder().u32(7).u32(512).u32(0)), /not a block status/],
    ['an unknown chunk type', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, 77, new Uint8Array(3)), /chunk type 77 .* does not know/],
    ['an error chunk of 2^32-1 bytes', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, new MessageBuilder().u32(5).u16(0), 2 ** 32 - 1), /has length 4294967295, outside 6\.\.4110/],
    ['an error chunk whose message overruns it', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, new MessageBuilder().u32(5).u16(50).string('x')), /message of 50 bytes in 1/],
    ['an error chunk with error 0', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR, new MessageBuilder().u32(0).u16(0)), /has error 0/],
    ['an error offset outside the request', (p, r) => p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_ERROR_OFFSET, new MessageBuilder().u32(5).u16(0).u64(0)), /names an offset outside/],
    ['a simple success when structured replies were agreed', (p, r) => p.simple(r.cookie, 0, new Uint8Array(r.length)), /simple success reply to READ/],
    ['a reply magic of garbage', (p) => p.send(new Uint8Array(64).fill(0xee)), /magic 0xeeeeeeee/],
    [
      'a close in the middle of a chunk',
      async (p, r) => {
        await p.send(new MessageBuilder().u32(P.STRUCTURED_REPLY_MAGIC).u16(1).u16(1).u64(r.cookie).u32(520).u64(r.offset).bytes(new Uint8Array(100)));
        p.socket.end();
      },
      /closed the connection with 1 request\(s\) unanswered, the first READ of 512 bytes at offset 0x1000 \(cookie 1\)/,
    ],
    [
      'a reset in the middle of a reply',
      async (p) => {
        await p.send(new Uint8Array([0x66, 0x8e]));
        p.socket.resetAndDestroy();
      },
      /connection failed: .*ECONNRESET|closed the connection/,
    ],
  ];

  for (const [name, answer, pattern] of readChunkCases) {
    it(`a read answered with ${name}`, async () => {
      const s = await evilAfter(isRead, async (p, r) => {
        await answer(p, r);
        await p.stall();
      });
      const e = await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', pattern);
      expect(e.data.offset ?? 4096).toBe(4096);
      // The connection is over: later requests fail at once with the same error.
      await expect(s.read(0, 1)).rejects.toBe(e);
    });
  }

  it('an unknown error chunk type fails the request, and the connection goes on', async () => {
    let first = true;
    const s = await evilAfter(
      (r) => isRead(r) && first,
      async (p, r) => {
        first = false;
        await p.chunk(r.cookie, P.REPLY_FLAG_DONE, 0x8000 + 99, new MessageBuilder().u32(5).u16(2).string('no'));
        await p.serve(image);
      },
    );
    await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /with EIO \(no\)/);
    expect(await s.read(0, 512)).toEqual(image.subarray(0, 512));
  });

  const statusCases: Array<[string, MessageBuilder, number | undefined, RegExp]> = [
    ['a zero-length extent (no progress)', new MessageBuilder().u32(7).u32(0).u32(0), undefined, /descriptor of length 0/],
    ['a chunk of 2^32-1 bytes (an endless list)', new MessageBuilder().u32(7).u32(4096).u32(0), 2 ** 32 - 1, /has length 4294967295, not 4 \+ 8 per descriptor/],
    ['no descriptor', new MessageBuilder().u32(7), undefined, /has length 4,/],
    ['a context never chosen', new MessageBuilder().u32(8).u32(4096).u32(0), undefined, /context 8, which was not chosen/],
  ];
  for (const [name, body, length, pattern] of statusCases) {
    it(`block status answered with ${name}`, async () => {
      const s = await evilAfter(isStatus, async (p, r) => {
        await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, body, length);
        await p.stall();
      });
      await expectImageError(s.ranges(0, image.length), 'ERR_IMG_IO', pattern);
    });
  }

  it('block status: a repeated context, a missing one, and extents that overflow the request', async () => {
    let n = 0;
    const s = await connect(async (p) => {
      await p.handshake({ size: BigInt(image.length) });
      for (;;) {
        const r = await p.request();
        if (!r) return;
        n++;
        const one = new MessageBuilder().u32(7).u32(4096).u32(0);
        if (n === 1) {
          await p.chunk(r.cookie, 0, P.REPLY_TYPE_BLOCK_STATUS, one);
          await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, new MessageBuilder().u32(7).u32(4096).u32(0));
        } else await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE);
      }
    });
    await expectImageError(s.ranges(0, image.length), 'ERR_IMG_IO', /repeats the context/);
    await server!.close();
    n = 1;
    const t = await connect(async (p) => {
      await p.handshake({ size: BigInt(image.length) });
      const r = await p.request();
      if (r) await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_NONE);
      await p.stall();
    });
    await expectImageError(t.ranges(0, image.length), 'ERR_IMG_IO', /without a block status for base:allocation/);
    await server!.close();
    // Descriptors summing past the request (and past 2^32) are cut at its end.
    const u = await connect(async (p) => {
      await p.handshake({ size: BigInt(image.length) });
      const r = await p.request();
      if (r) await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, new MessageBuilder().u32(7).u32(4096).u32(0).u32(0xffffffff).u32(3).u32(0xffffffff).u32(0));
      await p.serve(image);
    });
    expect(await u.ranges(0, image.length)).toEqual([
      { offset: 0, length: 4096, data: true },
      { offset: 4096, length: image.length - 4096, data: false },
    ]);
  });

  it('block status in one-byte extents: ranges() stops collecting at MAX_RANGES and reports the rest as data', async () => {
    const s = await connect(
      async (p) => {
        await p.handshake({ size: BigInt(image.length) });
        for (;;) {
          const r = await p.request();
          if (!r) return;
          const body = new MessageBuilder().u32(7);
          for (let i = 0; i < 100_000; i++) body.u32(1).u32(i % 2 ? 0 : P.STATE_ZERO | P.STATE_HOLE);
          await p.chunk(r.cookie, P.REPLY_FLAG_DONE, P.REPLY_TYPE_BLOCK_STATUS, body);
        }
        // Building and sending 800 KB of descriptors took over 2 s on a loaded 2-core machine: not what this test is about.
      },
      { timeoutMs: 20_000, requestTimeoutMs: 20_000 },
    );
    const ranges = await s.ranges(0, image.length);
    expect(ranges.length).toBe(MAX_RANGES + 1);
    expect(ranges[MAX_RANGES]).toEqual({ offset: MAX_RANGES, length: image.length - MAX_RANGES, data: true });
    expect(ranges.every((r, i) => r.offset === i && (i === MAX_RANGES || r.length === 1))).toBe(true);
  });

  it('without structured replies: simple reads, all data for ranges(), and a close mid-payload', async () => {
    const s = await connect(async (p) => {
      await p.handshake({ size: BigInt(image.length), structured: false });
      for (;;) {
        const r = await p.request();
        if (!r) return;
        if (r.offset === 0) await p.simple(r.cookie, 0, image.subarray(0, r.length));
        else {
          await p.simple(r.cookie, 0, image.subarray(r.offset, r.offset + 100));
          p.socket.end();
          return;
        }
      }
    });
    expect(await s.ranges(0, image.length)).toEqual([{ offset: 0, length: image.length, data: true }]);
    expect(Buffer.from(await s.read(0, 4096)).equals(image.subarray(0, 4096))).toBe(true);
    await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /closed the connection with 1 request\(s\) unanswered, the first READ of 512 bytes at offset 0x1000/);
  });

  const STALL = { timeoutMs: 2000, requestTimeoutMs: 300 };

  it('a server that never answers is given up after requestTimeoutMs, and close() returns', async () => {
    const s = await evilAfter(isRead, (p) => p.stall(), STALL);
    const e = await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /no request was answered in full within 300 ms; the oldest is READ of 512 bytes at offset 0x1000 \(cookie 1\)/);
    expect(e.data).toMatchObject({ field: 'reply', offset: 4096, cookie: '1' });
    await s.close();
  });

  it('a server that stalls in the middle of a chunk is given up after requestTimeoutMs', async () => {
    const s = await evilAfter(
      isRead,
      async (p, r) => {
        await p.send(new MessageBuilder().u32(P.STRUCTURED_REPLY_MAGIC).u16(1).u16(1).u64(r.cookie).u32(520).u64(r.offset).bytes(new Uint8Array(100)));
        await p.stall();
      },
      STALL,
    );
    await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /within 300 ms/);
  });

  it('a server that dribbles a byte every 50 ms is given up after requestTimeoutMs', async () => {
    // Each byte is progress, but no reply is whole in time.
    const s = await evilAfter(
      isRead,
      async (p, r) => {
        const reply = new MessageBuilder()
          .u32(P.STRUCTURED_REPLY_MAGIC)
          .u16(P.REPLY_FLAG_DONE)
          .u16(P.REPLY_TYPE_OFFSET_DATA)
          .u64(r.cookie)
          .u32(8 + r.length)
          .u64(r.offset)
          .bytes(new Uint8Array(r.length))
          .build();
        for (const b of reply) {
          if (p.socket.destroyed) return;
          await p.send(new Uint8Array([b]));
          await new Promise((t) => setTimeout(t, 50));
        }
      },
      STALL,
    );
    await expectImageError(s.read(4096, 512), 'ERR_IMG_IO', /within 300 ms/);
  });

  it('a server that keeps its end open after DISC does not hold close()', async () => {
    const s = await connect(async (p) => {
      await p.handshake({ size: BigInt(image.length) });
      await p.serve(image);
      await p.stall();
    });
    expect(await s.read(0, 16)).toEqual(image.subarray(0, 16));
    const started = Date.now();
    await s.close();
    expect(Date.now() - started).toBeLessThan(1900);
  });
});
