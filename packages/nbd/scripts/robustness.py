#!/usr/bin/python3
"""Malformed and hostile NBD clients against one server, then a check that it
still answers correctly. Loopback only (a Unix socket), every loop bounded.

    robustness.py SOCKET REFERENCE.raw

SOCKET is a read-only export named "" of the image whose bytes REFERENCE.raw
holds. Needs python3-libnbd (the `nbd` module that nbdsh uses). Exits 0 when
every probe got the answer the protocol asks for and the server still serves
the right bytes; prints one line per probe.
"""
import os
import socket
import struct
import sys

import nbd

SOCK, REFERENCE = sys.argv[1], sys.argv[2]
URI = "nbd+unix:///?socket=" + SOCK
REF = open(REFERENCE, "rb").read()
SIZE = len(REF)
IHAVEOPT = b"IHAVEOPT"
REQUEST_MAGIC = 0x25609513
failures = []


def probe(name, fn):
    try:
        fn()
        print("ok   " + name)
    except Exception as e:  # noqa: BLE001 - each probe reports and the run goes on
        failures.append(name)
        print("FAIL %s: %r" % (name, e))


def raw():
    """A raw socket past the server's greeting; returns it and the greeting flags."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(SOCK)
    hello = recv_exact(s, 18)
    assert hello[:16] == b"NBDMAGIC" + IHAVEOPT, hello
    return s, struct.unpack(">H", hello[16:])[0]


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(out), n))
        out += chunk
    return out


def option(s, opt, data):
    s.sendall(IHAVEOPT + struct.pack(">II", opt, len(data)) + data)


def option_reply(s):
    magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
    assert magic == 0x3E889045565A9, hex(magic)
    return opt, rtype, recv_exact(s, length)


def closed(s):
    """True when the server closed the connection (the answer to a violation)."""
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


# --- Handshake: malformed options ---------------------------------------------

def unknown_client_flags():
    s, _ = raw()
    s.sendall(struct.pack(">I", 0xFFFFFFFF))
    assert closed(s), "unknown client flags must end the connection"


def bad_option_magic():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3) + b"NOTMAGIC" + struct.pack(">II", 1, 0))
    assert closed(s)


def unknown_option():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3))
    option(s, 0x7777, b"xyz")
    opt, rtype, _ = option_reply(s)
    assert opt == 0x7777 and rtype == 2**31 + 1, (opt, rtype)  # NBD_REP_ERR_UNSUP
    option(s, 2, b"")  # NBD_OPT_ABORT
    assert option_reply(s)[1] == 1  # ACK
    s.close()


def oversized_option():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3))
    s.sendall(IHAVEOPT + struct.pack(">II", 3, 1 << 20))  # NBD_OPT_LIST with 1 MiB of data
    s.sendall(b"\0" * (1 << 20))
    _, rtype, _ = option_reply(s)
    assert rtype in (2**31 + 9, 2**31 + 3), rtype  # TOO_BIG or INVALID, and the connection goes on
    option(s, 3, b"")
    _, rtype, data = option_reply(s)
    assert rtype == 2, rtype  # NBD_REP_SERVER: still haggling
    s.close()


def truncated_go():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3))
    option(s, 7, struct.pack(">I", 1000) + b"ab")  # a name longer than the option
    _, rtype, _ = option_reply(s)
    assert rtype == 2**31 + 3, rtype  # NBD_REP_ERR_INVALID
    s.close()


def meta_context_before_structured():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3))
    q = b"base:allocation"
    option(s, 10, struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", len(q)) + q)
    _, rtype, _ = option_reply(s)
    assert rtype == 2**31 + 3, rtype
    s.close()


def too_many_options():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3))
    for _ in range(600):  # over the server's 512
        try:
            option(s, 0x7777, b"")
        except (BrokenPipeError, ConnectionResetError):
            break
    answered = 0
    try:
        while answered < 600:
            option_reply(s)
            answered += 1
    except (EOFError, ConnectionResetError, socket.timeout):
        pass
    assert answered < 600, "the server answered more options than its limit"


def cut_mid_option():
    for cut in range(1, 16):
        s, _ = raw()
        s.sendall(struct.pack(">I", 3) + (IHAVEOPT + struct.pack(">II", 7, 6) + b"\0\0\0\0\0\0")[:cut])
        s.close()


# --- Option haggling through libnbd ------------------------------------------

def list_and_contexts():
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(URI)
    names = []
    h.opt_list(lambda name, desc: names.append(name) or 0)
    assert names == [""], names
    for query, expect in (("qemu:", "qemu:allocation-depth"), ("base:", "base:allocation"), ("nope:", None)):
        h.clear_meta_contexts()
        h.add_meta_context(query)
        found = []
        h.opt_list_meta_context(lambda ctx: found.append(ctx) or 0)
        assert (expect in found) if expect else found == [], (query, found)
    h.set_export_name("no-such-export")
    try:
        h.opt_info()
        raise AssertionError("NBD_OPT_INFO for an unknown export succeeded")
    except nbd.Error:
        pass
    h.opt_abort()


# --- Transmission: bad requests (libnbd's own checks off) ---------------------

def connect(strict=False):
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(URI)
    if not strict:
        h.set_strict_mode(0)
    return h


def expect_error(what, fn, errnos):
    """The request must fail with one of `errnos` (names: libnbd gives them as strings or numbers)."""
    import errno as E
    try:
        fn()
    except nbd.Error as e:
        got = e.errno if isinstance(e.errno, str) else E.errorcode.get(e.errno, str(e.errno))
        assert got in errnos, (what, e.string, got)
        return
    raise AssertionError("%s succeeded" % what)


def bad_requests():
    h = connect()
    expect_error("a read past the end", lambda: h.pread(512, SIZE), ("EINVAL", "ENOSPC"))
    expect_error("a read across the end", lambda: h.pread(4096, SIZE - 512), ("EINVAL", "ENOSPC"))
    expect_error("a 64 MiB read", lambda: h.pread(64 << 20, 0), ("EOVERFLOW", "EINVAL"))
    expect_error("a write to a read-only export", lambda: h.pwrite(b"x" * 512, 0), ("EPERM", "EROFS"))
    expect_error("a trim of a read-only export", lambda: h.trim(4096, 0), ("EPERM", "EROFS", "EINVAL"))
    expect_error("write zeroes to a read-only export", lambda: h.zero(4096, 0), ("EPERM", "EROFS", "EINVAL"))
    expect_error("an unknown command flag", lambda: h.pread(512, 0, 0x40), ("EINVAL",))
    expect_error("block status of 0 bytes", lambda: h.block_status(0, 0, lambda *a: 0), ("EINVAL",))
    expect_error("block status past the end", lambda: h.block_status(512, SIZE, lambda *a: 0), ("EINVAL",))
    # After all that the connection still serves.
    assert h.pread(4096, 0) == REF[:4096]
    h.shutdown()


def abrupt_disconnects():
    for i in range(20):
        h = nbd.NBD()
        h.connect_uri(URI)
        for k in range(8):
            h.aio_pread(nbd.Buffer(1 << 20), (k << 20) % max(1, SIZE - (1 << 20)))
        h.poll(0)
        del h  # closes the socket with replies in flight


def half_written_requests():
    for cut in (1, 10, 27):
        s, _ = raw()
        s.sendall(struct.pack(">I", 3))
        option(s, 1, b"")  # NBD_OPT_EXPORT_NAME ""
        recv_exact(s, 10)  # size and flags (no zero padding: NO_ZEROES was asked)
        req = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 0, 1, 0, 512)
        s.sendall(req[:cut])
        s.close()


def garbage_request():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3))
    option(s, 1, b"")
    recv_exact(s, 10)
    s.sendall(b"\xde\xad\xbe\xef" * 7)
    assert closed(s), "a request without the magic must end the connection"


def oversized_write_header():
    s, _ = raw()
    s.sendall(struct.pack(">I", 3))
    option(s, 1, b"")
    recv_exact(s, 10)
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 1, 2, 0, 0xFFFFFFFF))
    assert closed(s), "a 4 GiB write must end the connection, not be buffered"


for name, fn in [
    ("unknown client flags", unknown_client_flags),
    ("bad option magic", bad_option_magic),
    ("unknown option", unknown_option),
    ("oversized option", oversized_option),
    ("truncated NBD_OPT_GO", truncated_go),
    ("meta context before structured replies", meta_context_before_structured),
    ("too many options", too_many_options),
    ("cut mid-option", cut_mid_option),
    ("LIST, LIST_META_CONTEXT, unknown export", list_and_contexts),
    ("bad requests", bad_requests),
    ("abrupt disconnects with reads in flight", abrupt_disconnects),
    ("half-written requests", half_written_requests),
    ("garbage request", garbage_request),
    ("oversized write header", oversized_write_header),
]:
    probe(name, fn)


def still_correct():
    h = connect(strict=True)
    assert h.get_size() == SIZE
    step = max(4096, SIZE // 16)
    for off in range(0, SIZE, step):
        n = min(step, SIZE - off, 1 << 20)
        assert h.pread(n, off) == REF[off:off + n], "bytes at %d differ" % off
    h.shutdown()


probe("still serves the right bytes", still_correct)
if failures:
    print("%d probe(s) failed: %s" % (len(failures), ", ".join(failures)))
    sys.exit(1)
