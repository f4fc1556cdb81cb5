"""Demikernel's acceptance scenarios, rewritten for our queue API (API.md).

Sources (reference/demikernel.md sections 3 and 6):

1. ``examples/rust/tcp-push-pop`` / ``udp-push-pop``: 10 x 64 B of 0x65, stream semantics
   for plain TCP, one element per pop with ``framing=True`` and for UDP (``addr`` = sender).
2. ``tcp-ping-pong`` (1024 rounds of 64 B) and ``udp-ping-pong`` (64 rounds).
3. ``tcp-echo``: a server in another process, 1000 framed messages of 1..8192 random bytes.
4. The push-pop scenarios over AF_INET6 (::1) and AF_UNIX (stream and datagram).
5. ``examples/tcp-wait``: close / async_close / peer close / peer reset while push, pop,
   accept or connect are pending.
6. ``tests/rust/tcp-tests``: bind/listen/accept/connect/push/pop/close in every socket state.
7. ``tests/c/syscalls.c``: every public call with bad arguments; the LibOS keeps working.

Two-sided data scenarios run the other side in a child process (``subprocess``, a script
written to ``tmp_path``) using the queue API too. The state and wait matrices run in one
process, with plain kernel sockets as peers where a reset is needed. Every wait has a timeout
and every loop is bounded, so nothing can hang.

Parametrized over ``libos_name``; only ``posix`` for now (add ``"shm"`` to the fixture).
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from queueapi import LibOS, Opcode, QResult, SGArray

ROOT = Path(__file__).resolve().parent.parent
T = 5.0  # seconds: the timeout of every single wait
CHILD_T = 30.0  # seconds: the longest a child process may run

FAMILIES = ["AF_INET", "AF_INET6", "AF_UNIX"]


# =============================================================================================
# Fixtures and helpers
# =============================================================================================
@pytest.fixture(params=["posix", "shm"])
def libos_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def los(libos_name: str):
    lib = LibOS(libos_name)
    yield lib
    lib.shutdown_libos()


def _ipv6_ok() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def need_family(family: str) -> None:
    if family == "AF_INET6" and not _ipv6_ok():
        pytest.skip("IPv6 loopback (::1) is not available")


def unix_dir(tmp_path: Path) -> Path:
    """A directory for AF_UNIX socket paths: tmp_path, unless its paths are too long."""
    if len(str(tmp_path)) < 80:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="dq", dir="/tmp"))


def local_addr(family: str, tmp_path: Path, name: str) -> Any:
    if family == "AF_INET":
        return ("127.0.0.1", 0)
    if family == "AF_INET6":
        return ("::1", 0)
    return str(unix_dir(tmp_path) / name)


def norm(addr: Any) -> Any:
    """An address as comparable value (JSON turns tuples into lists)."""
    if isinstance(addr, list):
        addr = tuple(addr)
    if isinstance(addr, tuple) and len(addr) == 4:  # AF_INET6: host, port, flowinfo, scope
        return addr[:2]
    if isinstance(addr, bytes):
        return addr.decode()
    return addr


def wait_ok(los: LibOS, qt: int, opcode: Opcode, timeout: float = T) -> QResult:
    r = los.wait(qt, timeout=timeout)
    assert r.opcode == opcode, r
    assert r.ret == 0, r
    return r


def is_pending(los: LibOS, qt: int, timeout: float = 0) -> bool:
    try:
        los.wait(qt, timeout=timeout)
    except TimeoutError:
        return True
    return False


def pop_exact(los: LibOS, qd: int, n: int) -> bytes:
    """Stream semantics: pop until ``n`` bytes are in (bounded)."""
    buf = bytearray()
    for _ in range(4 * n + 10):
        if len(buf) >= n:
            break
        r = wait_ok(los, los.pop(qd, n - len(buf)), Opcode.POP)
        assert len(r.sga) > 0, f"unexpected end of stream after {len(buf)} of {n} bytes"
        assert len(r.sga) <= n - len(buf), "pop returned more than the size asked for"
        buf += r.sga.tobytes()
    assert len(buf) == n
    return bytes(buf)


def expect_oserror(code: int, fn: Callable[[], Any]) -> OSError:
    with pytest.raises(OSError) as ei:
        fn()
    assert ei.value.errno == code, f"expected {errno.errorcode[code]}, got {ei.value!r}"
    return ei.value


def expect_failed(r: QResult, *codes: int) -> None:
    assert r.opcode == Opcode.FAILED, r
    assert r.ret in codes, f"expected one of {[errno.errorcode[c] for c in codes]}, got {r!r}"
    assert r.sga is None, "a failed token must carry no data"


def memory_round_trip(los: LibOS, qd: int, payload: bytes = b"still alive") -> None:
    """The LibOS still works: an element pushed to memory queue ``qd`` pops out unchanged."""
    wait_ok(los, los.push(qd, payload), Opcode.PUSH)
    r = wait_ok(los, los.pop(qd), Opcode.POP, timeout=2)
    assert r.sga.tobytes() == payload


def stream_listener(los: LibOS, family: str, tmp_path: Path, framing: bool = False,
                    backlog: int = 16) -> tuple[int, Any]:
    lq = los.socket(getattr(socket, family), socket.SOCK_STREAM, framing=framing)
    los.bind(lq, local_addr(family, tmp_path, "srv.sock"))
    los.listen(lq, backlog)
    return lq, los.getsockname(lq)


def connected_pair(los: LibOS, framing: bool = False) -> tuple[int, int, int]:
    """(client, server, listener) qds connected over 127.0.0.1, all on ``los``."""
    lq = los.socket(framing=framing)
    los.bind(lq, ("127.0.0.1", 0))
    los.listen(lq, 16)
    cq = los.socket(framing=framing)
    aqt = los.accept(lq)
    wait_ok(los, los.connect(cq, los.getsockname(lq)), Opcode.CONNECT)
    r = wait_ok(los, aqt, Opcode.ACCEPT)
    return cq, r.new_qd, lq


def plain_peer_pair(los: LibOS, small_buffers: bool = False) -> tuple[int, socket.socket, socket.socket]:
    """A queue-API client connected to a plain kernel socket: (qd, conn, listener)."""
    ls = socket.socket()
    if small_buffers:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by conn
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    ls.settimeout(T)
    qd = los.socket()
    if small_buffers:
        los.setsockopt(qd, socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    wait_ok(los, los.connect(qd, ls.getsockname()), Opcode.CONNECT)
    conn, _ = ls.accept()
    conn.settimeout(T)
    return qd, conn, ls


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST (SO_LINGER on, 0 seconds)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def fill_until_pending(los: LibOS, qd: int, chunk: int = 256 * 1024, limit: int = 400) -> int:
    """Push large elements until one does not complete at once; return its token."""
    data = b"\xab" * chunk
    for _ in range(limit):
        qt = los.push(qd, data)
        try:
            r = los.wait(qt, timeout=0)
        except TimeoutError:
            return qt
        assert r.opcode == Opcode.PUSH, r
    pytest.fail(f"{limit} pushes of {chunk} B never pended; the peer reads nothing")


def full_backlog_connect(los: LibOS) -> tuple[int, int, int]:
    """A connect left pending: the listener's accept queue (backlog 0) holds one connection
    nobody accepts, so the kernel drops our SYN. Returns (qd, qt, listener); skips if the
    connect completes at once anyway."""
    lq = los.socket()
    los.bind(lq, ("127.0.0.1", 0))
    los.listen(lq, 0)
    addr = los.getsockname(lq)
    first = los.socket()
    wait_ok(los, los.connect(first, addr), Opcode.CONNECT)
    qd = los.socket()
    qt = los.connect(qd, addr)
    if not is_pending(los, qt, timeout=0.2):
        pytest.skip("connect completed at once on loopback; cannot hold it pending")
    return qd, qt, lq


# ---------------------------------------------------------------------------------------------
# The other side: a child process running the queue API
# ---------------------------------------------------------------------------------------------
CHILD_SRC = r'''
import json, socket, sys
from queueapi import LibOS, Opcode

T = 10.0

def A(a):
    return tuple(a) if isinstance(a, list) else a

def fam(name):
    return getattr(socket, name)

def ok(los, qt, opcode):
    r = los.wait(qt, timeout=T)
    assert r.opcode == opcode and r.ret == 0, r
    return r

def say(obj):
    print(json.dumps(obj), flush=True)

def pop_exact(los, qd, n):
    buf = bytearray()
    for _ in range(4 * n + 10):
        if len(buf) >= n:
            break
        r = ok(los, los.pop(qd, n - len(buf)), Opcode.POP)
        assert len(r.sga) > 0, "unexpected end of stream"
        buf += r.sga.tobytes()
    assert len(buf) == n, (len(buf), n)
    return bytes(buf)

def stream_push_client(los, family, addr, framing, count, size, fill):
    qd = los.socket(fam(family), socket.SOCK_STREAM, framing=framing)
    ok(los, los.connect(qd, A(addr)), Opcode.CONNECT)
    for _ in range(count):
        ok(los, los.push(qd, bytes([fill]) * size), Opcode.PUSH)
    los.close(qd)

def dgram_push_client(los, family, server, bind, count, size, fill):
    qd = los.socket(fam(family), socket.SOCK_DGRAM)
    los.bind(qd, A(bind))
    say(los.getsockname(qd))
    for _ in range(count):
        ok(los, los.pushto(qd, bytes([fill]) * size, A(server)), Opcode.PUSH)
    los.close(qd)

def stream_pingpong_client(los, family, addr, rounds, size):
    qd = los.socket(fam(family), socket.SOCK_STREAM)
    ok(los, los.connect(qd, A(addr)), Opcode.CONNECT)
    for i in range(rounds):
        ping = bytes([i % 251]) * size
        ok(los, los.push(qd, ping), Opcode.PUSH)
        pong = pop_exact(los, qd, size)
        assert pong == ping, (i, pong[:8])
    los.close(qd)

def dgram_pingpong_client(los, family, server, bind, rounds, size):
    qd = los.socket(fam(family), socket.SOCK_DGRAM)
    los.bind(qd, A(bind))
    server = A(server)
    for i in range(rounds):
        ping = bytes([i % 251]) * size
        ok(los, los.pushto(qd, ping, server), Opcode.PUSH)
        r = ok(los, los.pop(qd), Opcode.POP)
        assert r.sga.tobytes() == ping, (i, len(r.sga))
        assert tuple(r.addr)[:2] == tuple(server)[:2], (r.addr, server)
    los.close(qd)

def echo_server(los, family, bind, framing):
    lq = los.socket(fam(family), socket.SOCK_STREAM, framing=framing)
    los.bind(lq, A(bind))
    los.listen(lq, 8)
    say(los.getsockname(lq))
    qd = ok(los, los.accept(lq), Opcode.ACCEPT).new_qd
    n = 0
    for _ in range(100000):
        r = ok(los, los.pop(qd), Opcode.POP)
        if len(r.sga) == 0:
            break
        ok(los, los.push(qd, r.sga), Opcode.PUSH)
        n += 1
    else:
        raise AssertionError("no end of stream")
    los.close(qd)
    los.close(lq)
    say(n)

role, libos_name, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
los = LibOS(libos_name)
globals()[role](los, **kwargs)
los.shutdown_libos()
'''


class Child:
    """The other side of a scenario, in its own Python process."""

    def __init__(self, tmp_path: Path, role: str, libos_name: str, **kwargs: Any) -> None:
        script = tmp_path / "dq_child.py"
        if not script.exists():
            script.write_text(CHILD_SRC)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), role, libos_name, json.dumps(kwargs)],
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.deadline = time.monotonic() + CHILD_T

    def line(self, timeout: float = 10.0) -> Any:
        """The next JSON line the child prints."""
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            self.kill()
            pytest.fail(f"child printed nothing in {timeout} s")
        text = self.proc.stdout.readline()
        if not text:
            _, err = self.proc.communicate(timeout=5)
            pytest.fail(f"child ended early (rc={self.proc.returncode}):\n{err}")
        return json.loads(text)

    def finish(self) -> str:
        """Wait for a clean exit (rc 0); returns the rest of its stdout."""
        try:
            out, err = self.proc.communicate(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("child did not finish in time")
        assert self.proc.returncode == 0, f"child failed (rc={self.proc.returncode}):\n{err}"
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


@pytest.fixture
def spawn(tmp_path: Path, libos_name: str):
    children: list[Child] = []

    def start(role: str, **kwargs: Any) -> Child:
        c = Child(tmp_path, role, libos_name, **kwargs)
        children.append(c)
        return c

    yield start
    for c in children:
        c.kill()


# =============================================================================================
# 1 + 4. push-pop: TCP (stream and framed), UDP; AF_INET, AF_INET6, AF_UNIX
# =============================================================================================
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("framing", [False, True], ids=["stream", "framed"])
def test_stream_push_pop(los: LibOS, spawn, tmp_path: Path, family: str, framing: bool) -> None:
    need_family(family)
    lq, addr = stream_listener(los, family, tmp_path, framing)
    aqt = los.accept(lq)
    child = spawn("stream_push_client", family=family, addr=addr, framing=framing,
                  count=10, size=64, fill=0x65)
    r = wait_ok(los, aqt, Opcode.ACCEPT, timeout=15)
    qd = r.new_qd
    assert isinstance(qd, int) and qd != lq
    assert r.qd == lq and r.qt == aqt
    if family == "AF_INET":
        assert r.addr[0] == "127.0.0.1"
    elif family == "AF_INET6":
        assert r.addr[0] == "::1"
    if framing:
        for i in range(10):
            r = wait_ok(los, los.pop(qd), Opcode.POP)
            assert r.qd == qd
            assert len(r.sga) == 64, f"element {i}: framed pop must be one 64-byte element"
            assert all(b == 0x65 for b in r.sga.tobytes())
            r.sga.free()
    else:
        got = bytearray()
        for _ in range(640):
            if len(got) >= 640:
                break
            r = wait_ok(los, los.pop(qd), Opcode.POP)
            assert 0 < len(r.sga) <= 8192
            got += r.sga.tobytes()
        assert len(got) == 640
        for i, b in enumerate(got):
            assert b == 0x65, f"byte {i} is {b:#x}"
    r = wait_ok(los, los.pop(qd), Opcode.POP, timeout=2)
    assert len(r.sga) == 0, "after the client closes, the next pop is end of stream"
    child.finish()
    st = los.stats(qd)
    assert st["bytes_in"] == 640 and st["pops"] >= (11 if framing else 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_dgram_push_pop(los: LibOS, spawn, tmp_path: Path, family: str) -> None:
    need_family(family)
    sq = los.socket(getattr(socket, family), socket.SOCK_DGRAM)
    los.bind(sq, local_addr(family, tmp_path, "srv.dsock"))
    server = los.getsockname(sq)
    child = spawn("dgram_push_client", family=family, server=server,
                  bind=local_addr(family, tmp_path, "cli.dsock"), count=10, size=64, fill=0x65)
    sender = norm(child.line())
    if family == "AF_UNIX":
        assert sender.endswith("cli.dsock")
    for i in range(10):
        r = wait_ok(los, los.pop(sq), Opcode.POP, timeout=10)
        assert len(r.sga) == 64, f"datagram {i}: one pop must be one datagram"
        assert r.sga.tobytes() == b"\x65" * 64
        assert norm(r.addr) == sender, f"datagram {i}: addr {r.addr!r} is not the sender {sender!r}"
        assert norm(r.sga.addr) == sender
    child.finish()
    assert is_pending(los, los.pop(sq), timeout=0.05), "an 11th datagram appeared"


# =============================================================================================
# 2. ping-pong
# =============================================================================================
def test_tcp_ping_pong(los: LibOS, spawn, tmp_path: Path) -> None:
    rounds, size = 1024, 64
    lq, addr = stream_listener(los, "AF_INET", tmp_path)
    aqt = los.accept(lq)
    child = spawn("stream_pingpong_client", family="AF_INET", addr=addr, rounds=rounds, size=size)
    qd = wait_ok(los, aqt, Opcode.ACCEPT, timeout=15).new_qd
    for i in range(rounds):
        ping = pop_exact(los, qd, size)
        assert ping == bytes([i % 251]) * size, f"round {i}"
        wait_ok(los, los.push(qd, ping), Opcode.PUSH)
    r = wait_ok(los, los.pop(qd), Opcode.POP)
    assert len(r.sga) == 0
    child.finish()


def test_udp_ping_pong(los: LibOS, spawn, tmp_path: Path) -> None:
    rounds, size = 64, 64
    sq = los.socket(socket.AF_INET, socket.SOCK_DGRAM)
    los.bind(sq, ("127.0.0.1", 0))
    child = spawn("dgram_pingpong_client", family="AF_INET", server=los.getsockname(sq),
                  bind=("127.0.0.1", 0), rounds=rounds, size=size)
    peer = None
    for i in range(rounds):
        r = wait_ok(los, los.pop(sq), Opcode.POP, timeout=15 if i == 0 else T)
        assert r.sga.tobytes() == bytes([i % 251]) * size, f"round {i}"
        assert r.addr is not None and r.addr[0] == "127.0.0.1"
        if peer is None:
            peer = r.addr
        assert r.addr == peer
        wait_ok(los, los.pushto(sq, r.sga, r.addr), Opcode.PUSH)
    child.finish()


# =============================================================================================
# 3. echo between two processes, framed, random sizes
# =============================================================================================
def test_echo_two_processes_framed(los: LibOS, spawn) -> None:
    child = spawn("echo_server", family="AF_INET", bind=["127.0.0.1", 0], framing=True)
    addr = tuple(child.line())
    qd = los.socket(framing=True)
    wait_ok(los, los.connect(qd, addr), Opcode.CONNECT)
    rng = random.Random(20240521)
    for i in range(1000):
        msg = rng.randbytes(rng.randint(1, 8192))
        wait_ok(los, los.push(qd, msg), Opcode.PUSH)
        r = wait_ok(los, los.pop(qd), Opcode.POP)
        assert len(r.sga) == len(msg), f"message {i}: {len(r.sga)} != {len(msg)} bytes"
        assert r.sga.tobytes() == msg, f"message {i}: content differs"
        r.sga.free()
    los.close(qd)
    out = child.finish()
    assert json.loads(out.strip().splitlines()[-1]) == 1000


# =============================================================================================
# 5. tcp-wait matrix
# =============================================================================================
CLOSERS = ["close", "async_close"]


def do_close(los: LibOS, qd: int, how: str) -> None:
    """Close ``qd`` with ``how``; async_close's token must complete CLOSE (after the pending
    tokens were cancelled). A second close of either kind is EBADF."""
    if how == "close":
        los.close(qd)
    else:
        cqt = los.async_close(qd)
        r = los.wait(cqt, timeout=T)
        assert r.opcode == Opcode.CLOSE, r
        assert r.ret == 0 and r.qd == qd and r.qt == cqt
        expect_oserror(errno.EINVAL, lambda: los.wait(cqt, timeout=0))
    expect_oserror(errno.EBADF, lambda: los.close(qd))
    expect_oserror(errno.EBADF, lambda: los.async_close(qd))


@pytest.mark.parametrize("how", CLOSERS)
def test_wait_pop_then_close(los: LibOS, how: str) -> None:
    cq, sq, _ = connected_pair(los)
    qt = los.pop(cq)
    assert is_pending(los, qt)
    do_close(los, cq, how)
    r = los.wait(qt, timeout=T)
    expect_failed(r, errno.ECANCELED)
    assert r.qd == cq and r.qt == qt
    expect_oserror(errno.EINVAL, lambda: los.wait(qt, timeout=0))
    # The peer sees end of stream.
    r = wait_ok(los, los.pop(sq), Opcode.POP)
    assert len(r.sga) == 0


@pytest.mark.parametrize("how", CLOSERS)
def test_wait_push_then_close(los: LibOS, how: str) -> None:
    qd, conn, ls = plain_peer_pair(los, small_buffers=True)
    try:
        qt = fill_until_pending(los, qd)
        do_close(los, qd, how)
        r = los.wait(qt, timeout=T)
        assert r.qd == qd and r.qt == qt
        if r.opcode != Opcode.PUSH:
            expect_failed(r, errno.ECANCELED)
    finally:
        conn.close()
        ls.close()


@pytest.mark.parametrize("how", CLOSERS)
def test_wait_accept_then_close(los: LibOS, tmp_path: Path, how: str) -> None:
    lq, _ = stream_listener(los, "AF_INET", tmp_path)
    qts = [los.accept(lq), los.accept(lq)]
    assert is_pending(los, qts[0]) and is_pending(los, qts[1])
    do_close(los, lq, how)
    for qt in qts:
        r = los.wait(qt, timeout=T)
        expect_failed(r, errno.ECANCELED)
        assert r.new_qd is None and r.qd == lq


@pytest.mark.parametrize("how", CLOSERS)
def test_wait_connect_then_close(los: LibOS, how: str) -> None:
    qd, qt, _ = full_backlog_connect(los)
    do_close(los, qd, how)
    r = los.wait(qt, timeout=T)
    expect_failed(r, errno.ECANCELED)
    assert r.qd == qd


def test_wait_pop_then_peer_close(los: LibOS) -> None:
    cq, sq, _ = connected_pair(los)
    qt = los.pop(cq)
    assert is_pending(los, qt)
    los.close(sq)
    r = wait_ok(los, qt, Opcode.POP)
    assert r.qd == cq and len(r.sga) == 0, "peer close: one zero-length POP (end of stream)"
    assert r.sga.tobytes() == b""


def test_wait_framed_pop_then_peer_close(los: LibOS) -> None:
    cq, sq, _ = connected_pair(los, framing=True)
    qt = los.pop(cq)
    assert is_pending(los, qt)
    wait_ok(los, los.push(sq, [b"ab", b"cd"]), Opcode.PUSH)
    r = wait_ok(los, qt, Opcode.POP)
    assert [bytes(s) for s in r.sga.segments] == [b"ab", b"cd"]
    qt = los.pop(cq)
    assert is_pending(los, qt)
    los.close(sq)
    r = wait_ok(los, qt, Opcode.POP)
    assert len(r.sga) == 0


@pytest.mark.parametrize("framing", [False, True], ids=["stream", "framed"])
def test_eof_after_buffered_data(los: LibOS, framing: bool) -> None:
    """The push-pop race made deterministic: the peer's data and its FIN are both in the
    kernel buffer when the libOS next polls (edge consumed), then the application pops.
    The data pops, then end of stream must follow."""
    from queueapi.framing import encode

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(T)
    qd = los.socket(framing=framing)
    wait_ok(los, los.connect(qd, ls.getsockname()), Opcode.CONNECT)
    conn, _ = ls.accept()
    ls.close()
    conn.sendall(encode([b"\x65" * 64]) if framing else b"\x65" * 640)
    conn.close()
    time.sleep(0.1)
    other = los.queue()
    assert is_pending(los, los.pop(other), timeout=0.1)  # a poll that sees qd's edge
    r = wait_ok(los, los.pop(qd), Opcode.POP)
    assert r.sga.tobytes() == b"\x65" * (64 if framing else 640)
    r = wait_ok(los, los.pop(qd), Opcode.POP, timeout=2)
    assert len(r.sga) == 0, "end of stream after the buffered data"


def test_wait_push_then_peer_close(los: LibOS) -> None:
    qd, conn, ls = plain_peer_pair(los, small_buffers=True)
    qt = fill_until_pending(los, qd)
    conn.close()  # unread data in its receive buffer: the kernel answers with an RST
    ls.close()
    r = los.wait(qt, timeout=T)
    expect_failed(r, errno.ECONNRESET, errno.EPIPE)
    assert r.qd == qd


def test_wait_connect_then_peer_close(los: LibOS) -> None:
    qd, qt, lq = full_backlog_connect(los)
    los.close(lq)  # the retransmitted SYN finds no listener
    r = los.wait(qt, timeout=T)
    expect_failed(r, errno.ECONNREFUSED, errno.ECONNRESET)


def test_wait_pop_then_peer_reset(los: LibOS) -> None:
    qd, conn, ls = plain_peer_pair(los)
    ls.close()
    qt = los.pop(qd)
    assert is_pending(los, qt)
    reset(conn)
    r = los.wait(qt, timeout=T)
    expect_failed(r, errno.ECONNRESET)
    assert r.qd == qd and r.qt == qt


def test_peer_reset_after_data(los: LibOS) -> None:
    """Data sent before the reset may be lost (kernel discards it) or delivered; what follows
    the data is FAILED ECONNRESET, never end of stream."""
    qd, conn, ls = plain_peer_pair(los)
    ls.close()
    conn.sendall(b"x" * 100)
    reset(conn)
    time.sleep(0.05)
    for _ in range(10):
        r = los.wait(los.pop(qd), timeout=T)
        if r.opcode == Opcode.POP:
            assert len(r.sga) > 0, "a reset is not end of stream"
            continue
        expect_failed(r, errno.ECONNRESET)
        break
    else:
        pytest.fail("no ECONNRESET after the peer's reset")


def test_second_close_ebadf(los: LibOS) -> None:
    qd = los.socket()
    los.close(qd)
    expect_oserror(errno.EBADF, lambda: los.close(qd))
    qd = los.socket()
    qt = los.async_close(qd)
    assert los.wait(qt, timeout=T).opcode == Opcode.CLOSE
    expect_oserror(errno.EBADF, lambda: los.async_close(qd))
    expect_oserror(errno.EBADF, lambda: los.close(qd))


# =============================================================================================
# 6. state matrix
# =============================================================================================
OK, PENDING = "ok", "pending"
OPS = ["bind", "listen", "accept", "connect", "push", "pop", "close"]
E = errno
STATE_MATRIX: dict[str, dict[str, Any]] = {
    # listen on an unbound socket: API.md "as sockets do" (auto-bind), not Demikernel's
    # EDESTADDRREQ.
    "new": dict(bind=OK, listen=OK, accept=E.EINVAL, connect=OK, push=E.ENOTCONN,
                pop=E.ENOTCONN, close=OK),
    "bound": dict(bind=E.EINVAL, listen=OK, accept=E.EINVAL, connect=OK, push=E.ENOTCONN,
                  pop=E.ENOTCONN, close=OK),
    "listening": dict(bind=E.EINVAL, listen=OK, accept=PENDING, connect=E.EOPNOTSUPP,
                      push=E.ENOTCONN, pop=E.ENOTCONN, close=OK),
    # connect while connecting: Demikernel returns EINPROGRESS (reference 1.2); API.md is
    # silent, so Demikernel rules. listen while connecting: the implementation's EISCONN.
    "connecting": dict(bind=E.EINVAL, listen=E.EISCONN, accept=E.EINVAL, connect=E.EINPROGRESS,
                       push=E.ENOTCONN, pop=E.ENOTCONN, close=OK),
    "connected": dict(bind=E.EINVAL, listen=E.EISCONN, accept=E.EINVAL, connect=E.EISCONN,
                      push=OK, pop=PENDING, close=OK),
    "closed": {op: E.EBADF for op in OPS},
}


def make_state(los: LibOS, state: str) -> tuple[int, Any]:
    """A stream qd in ``state`` and a listening address to connect to."""
    target = los.socket()
    los.bind(target, ("127.0.0.1", 0))
    los.listen(target, 16)
    addr = los.getsockname(target)
    if state == "connecting":
        qd, _, _ = full_backlog_connect(los)
        return qd, addr
    qd = los.socket()
    if state in ("bound", "listening"):
        los.bind(qd, ("127.0.0.1", 0))
    if state == "listening":
        los.listen(qd, 8)
    if state == "connected":
        aqt = los.accept(target)
        wait_ok(los, los.connect(qd, addr), Opcode.CONNECT)
        wait_ok(los, aqt, Opcode.ACCEPT)
    if state == "closed":
        los.close(qd)
    return qd, addr


def run_op(los: LibOS, qd: int, op: str, addr: Any) -> Any:
    """Run ``op`` on ``qd``; returns OK, PENDING or the errno (raised or FAILED)."""
    try:
        if op == "bind":
            los.bind(qd, ("127.0.0.1", 0))
            return OK
        if op == "listen":
            los.listen(qd, 8)
            return OK
        if op == "close":
            los.close(qd)
            return OK
        if op == "accept":
            qt = los.accept(qd)
        elif op == "connect":
            qt = los.connect(qd, addr)
        elif op == "push":
            qt = los.push(qd, b"\x65" * 64)
        else:
            qt = los.pop(qd)
    except OSError as e:
        return e.errno
    try:
        r = los.wait(qt, timeout=0.2)
    except TimeoutError:
        return PENDING
    if r.opcode == Opcode.FAILED:
        return r.ret
    assert r.opcode == {"accept": Opcode.ACCEPT, "connect": Opcode.CONNECT,
                        "push": Opcode.PUSH, "pop": Opcode.POP}[op], r
    return OK


def _name(v: Any) -> str:
    return v if isinstance(v, str) else errno.errorcode.get(v, str(v))


@pytest.mark.parametrize("state", list(STATE_MATRIX))
@pytest.mark.parametrize("op", OPS)
def test_state_matrix(los: LibOS, state: str, op: str) -> None:
    qd, addr = make_state(los, state)
    got = run_op(los, qd, op, addr)
    want = STATE_MATRIX[state][op]
    assert got == want, f"{op} on a {state} socket: got {_name(got)}, want {_name(want)}"


def test_listen_twice_ok_and_accept_works(los: LibOS) -> None:
    lq = los.socket()
    los.bind(lq, ("127.0.0.1", 0))
    los.listen(lq, 8)
    los.listen(lq, 16)
    aqt = los.accept(lq)
    cq = los.socket()
    wait_ok(los, los.connect(cq, los.getsockname(lq)), Opcode.CONNECT)
    r = wait_ok(los, aqt, Opcode.ACCEPT)
    assert los.getpeername(r.new_qd) == los.getsockname(cq)


def test_bind_twice_einval(los: LibOS) -> None:
    qd = los.socket()
    los.bind(qd, ("127.0.0.1", 0))
    name = los.getsockname(qd)
    expect_oserror(errno.EINVAL, lambda: los.bind(qd, ("127.0.0.1", 0)))
    assert los.getsockname(qd) == name


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_bind_in_use_eaddrinuse(los: LibOS, kind: int) -> None:
    a = los.socket(socket.AF_INET, kind)
    los.bind(a, ("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        los.listen(a, 4)
    b = los.socket(socket.AF_INET, kind)
    expect_oserror(errno.EADDRINUSE, lambda: los.bind(b, los.getsockname(a)))
    los.bind(b, ("127.0.0.1", 0))  # b is still usable


def test_connect_refused(los: LibOS) -> None:
    holder = socket.socket()  # holds a port with no listener behind it
    holder.bind(("127.0.0.1", 0))
    try:
        qd = los.socket()
        qt = los.connect(qd, holder.getsockname())
        r = los.wait(qt, timeout=T)
        expect_failed(r, errno.ECONNREFUSED)
        assert r.qd == qd
        expect_oserror(errno.ENOTCONN, lambda: los.push(qd, b"x"))
    finally:
        holder.close()


def test_udp_states(los: LibOS) -> None:
    u = los.socket(socket.AF_INET, socket.SOCK_DGRAM)
    expect_oserror(errno.EDESTADDRREQ, lambda: los.pop(u))  # unbound (Demikernel)
    expect_oserror(errno.EDESTADDRREQ, lambda: los.push(u, b"x"))  # no peer: use pushto
    expect_oserror(errno.EINVAL, lambda: los.accept(u))
    los.bind(u, ("127.0.0.1", 0))
    qt = los.pop(u)
    assert is_pending(los, qt)
    wait_ok(los, los.pushto(u, b"self", los.getsockname(u)), Opcode.PUSH)
    r = wait_ok(los, qt, Opcode.POP)
    assert r.sga.tobytes() == b"self" and r.addr == los.getsockname(u)
    los.close(u)
    expect_oserror(errno.EBADF, lambda: los.pushto(u, b"x", ("127.0.0.1", 9)))


def test_pushto_on_stream(los: LibOS) -> None:
    cq, _, _ = connected_pair(los)
    expect_oserror(errno.EISCONN, lambda: los.pushto(cq, b"x", ("127.0.0.1", 9)))
    expect_oserror(errno.ENOTCONN, lambda: los.pushto(los.socket(), b"x", ("127.0.0.1", 9)))


# =============================================================================================
# 7. invalid-argument sweep (syscalls.c)
# =============================================================================================
BAD_QD = 1 << 30  # never open


class Ctx:
    """Queues and tokens the sweep cases use; ``canary`` is only used to check liveness."""

    def __init__(self, los: LibOS, tmp_path: Path) -> None:
        self.los = los
        self.tmp = tmp_path
        self.canary = los.queue()
        self.m = los.queue()
        self.tcp = los.socket()
        self.udp = los.socket(socket.AF_INET, socket.SOCK_DGRAM)
        los.bind(self.udp, ("127.0.0.1", 0))
        self.empty = los.queue()  # stays empty: pops on it pend
        self.pending = los.pop(self.empty)
        done = los.queue()
        self.completed = los.push(done, b"c")  # a completed, unconsumed token
        self.consumed = los.push(done, b"d")
        los.wait(self.consumed, timeout=T)
        self.unknown = 1 << 40
        sga = los.sgaalloc(4)
        sga.free()
        self.freed_sga = sga
        c = los.queue()
        los.close(c)  # closed last, so nothing reuses its number before the case runs
        self.closed = c

    def check_alive(self) -> None:
        los = self.los
        memory_round_trip(los, self.canary)
        memory_round_trip(los, self.m, b"m works")
        assert is_pending(los, self.pending), "the pending token completed by itself"
        r = los.wait(self.completed, timeout=T)
        assert r.opcode == Opcode.PUSH, "the completed token was lost"
        # The pending pop of `empty` is still there and still first in line.
        wait_ok(los, los.push(self.empty, b"e"), Opcode.PUSH)
        r = wait_ok(los, self.pending, Opcode.POP)
        assert r.sga.tobytes() == b"e"


_key = len
_pred = bool
TE, EI, EB = TypeError, errno.EINVAL, errno.EBADF
S = socket

SWEEP: list[tuple[str, Callable[[Ctx], Any], Any]] = [
    # socket
    ("socket-type-str", lambda c: c.los.socket(S.AF_INET, "stream"), TE),
    ("socket-domain-str", lambda c: c.los.socket("inet"), TE),
    ("socket-bad-domain", lambda c: c.los.socket(12345), errno.EAFNOSUPPORT),
    ("socket-bad-type", lambda c: c.los.socket(S.AF_INET, 999), errno.EPROTONOSUPPORT),
    ("socket-dgram-framing", lambda c: c.los.socket(S.AF_INET, S.SOCK_DGRAM, framing=True), EI),
    # bind
    ("bind-bad-qd", lambda c: c.los.bind(BAD_QD, ("127.0.0.1", 0)), EB),
    ("bind-closed-qd", lambda c: c.los.bind(c.closed, ("127.0.0.1", 0)), EB),
    ("bind-qd-str", lambda c: c.los.bind("3", ("127.0.0.1", 0)), TE),
    ("bind-addr-str", lambda c: c.los.bind(c.tcp, "127.0.0.1:80"), TE),
    ("bind-memory-queue", lambda c: c.los.bind(c.m, ("127.0.0.1", 0)), errno.ENOTSOCK),
    # listen
    ("listen-bad-qd", lambda c: c.los.listen(BAD_QD, 8), EB),
    ("listen-closed-qd", lambda c: c.los.listen(c.closed, 8), EB),
    ("listen-backlog-str", lambda c: c.los.listen(c.tcp, "8"), TE),
    ("listen-negative-backlog", lambda c: c.los.listen(c.tcp, -1), EI),
    # accept
    ("accept-bad-qd", lambda c: c.los.accept(BAD_QD), EB),
    ("accept-closed-qd", lambda c: c.los.accept(c.closed), EB),
    ("accept-qd-str", lambda c: c.los.accept("3"), TE),
    ("accept-not-listening", lambda c: c.los.accept(c.tcp), EI),
    # connect
    ("connect-bad-qd", lambda c: c.los.connect(BAD_QD, ("127.0.0.1", 9)), EB),
    ("connect-closed-qd", lambda c: c.los.connect(c.closed, ("127.0.0.1", 9)), EB),
    ("connect-qd-str", lambda c: c.los.connect("3", ("127.0.0.1", 9)), TE),
    ("connect-addr-str", lambda c: c.los.connect(c.tcp, "127.0.0.1:9"), TE),
    # close / async_close
    ("close-bad-qd", lambda c: c.los.close(BAD_QD), EB),
    ("close-closed-qd", lambda c: c.los.close(c.closed), EB),
    ("close-qd-str", lambda c: c.los.close("3"), TE),
    ("async_close-bad-qd", lambda c: c.los.async_close(BAD_QD), EB),
    ("async_close-closed-qd", lambda c: c.los.async_close(c.closed), EB),
    ("async_close-qd-str", lambda c: c.los.async_close("3"), TE),
    # getsockname / getpeername / setsockopt / getsockopt
    ("getsockname-bad-qd", lambda c: c.los.getsockname(BAD_QD), EB),
    ("getsockname-qd-str", lambda c: c.los.getsockname("3"), TE),
    ("getpeername-bad-qd", lambda c: c.los.getpeername(BAD_QD), EB),
    ("getpeername-qd-str", lambda c: c.los.getpeername("3"), TE),
    ("getpeername-unconnected", lambda c: c.los.getpeername(c.tcp), errno.ENOTCONN),
    ("setsockopt-bad-qd", lambda c: c.los.setsockopt(BAD_QD, S.SOL_SOCKET, S.SO_REUSEADDR, 1), EB),
    ("setsockopt-value-str",
     lambda c: c.los.setsockopt(c.tcp, S.SOL_SOCKET, S.SO_REUSEADDR, "yes"), TE),
    ("setsockopt-level-str", lambda c: c.los.setsockopt(c.tcp, "sol", S.SO_REUSEADDR, 1), TE),
    ("getsockopt-bad-qd", lambda c: c.los.getsockopt(BAD_QD, S.SOL_SOCKET, S.SO_REUSEADDR), EB),
    ("getsockopt-level-str", lambda c: c.los.getsockopt(c.tcp, "sol", S.SO_REUSEADDR), TE),
    ("getsockopt-negative-buflen",
     lambda c: c.los.getsockopt(c.tcp, S.SOL_SOCKET, S.SO_LINGER, -1), EI),
    # push
    ("push-bad-qd", lambda c: c.los.push(BAD_QD, b"x"), EB),
    ("push-closed-qd", lambda c: c.los.push(c.closed, b"x"), EB),
    ("push-qd-str", lambda c: c.los.push("3", b"x"), TE),
    ("push-qd-float", lambda c: c.los.push(float(c.m), b"x"), TE),
    ("push-empty-bytes", lambda c: c.los.push(c.m, b""), EI),
    ("push-empty-list", lambda c: c.los.push(c.m, []), EI),
    ("push-empty-segments", lambda c: c.los.push(c.m, [b"", bytearray()]), EI),
    ("push-freed-sga", lambda c: c.los.push(c.m, c.freed_sga), EI),
    ("push-int", lambda c: c.los.push(c.m, 5), TE),
    ("push-str", lambda c: c.los.push(c.m, "text"), TE),
    ("push-bad-segment", lambda c: c.los.push(c.m, [b"a", 5]), TE),
    ("push-unconnected-stream", lambda c: c.los.push(c.tcp, b"x"), errno.ENOTCONN),
    # pushto
    ("pushto-bad-qd", lambda c: c.los.pushto(BAD_QD, b"x", ("127.0.0.1", 9)), EB),
    ("pushto-empty", lambda c: c.los.pushto(c.udp, b"", ("127.0.0.1", 9)), EI),
    ("pushto-int", lambda c: c.los.pushto(c.udp, 5, ("127.0.0.1", 9)), TE),
    ("pushto-addr-str", lambda c: c.los.pushto(c.udp, b"x", "127.0.0.1:9"), TE),
    ("pushto-negative-port", lambda c: c.los.pushto(c.udp, b"x", ("127.0.0.1", -1)), EI),
    # pop
    ("pop-bad-qd", lambda c: c.los.pop(BAD_QD), EB),
    ("pop-closed-qd", lambda c: c.los.pop(c.closed), EB),
    ("pop-qd-str", lambda c: c.los.pop("3"), TE),
    ("pop-negative-size", lambda c: c.los.pop(c.m, -1), EI),
    ("pop-zero-size", lambda c: c.los.pop(c.m, 0), EI),
    ("pop-size-str", lambda c: c.los.pop(c.m, "64"), TE),
    ("pop-size-float", lambda c: c.los.pop(c.m, 64.0), TE),
    ("pop-unconnected-stream", lambda c: c.los.pop(c.tcp), errno.ENOTCONN),
    # wait
    ("wait-unknown-token", lambda c: c.los.wait(c.unknown, timeout=0), EI),
    ("wait-consumed-token", lambda c: c.los.wait(c.consumed, timeout=0), EI),
    ("wait-token-str", lambda c: c.los.wait("1", timeout=0), TE),
    ("wait-token-list", lambda c: c.los.wait([c.pending], timeout=0), TE),
    ("wait-token-float", lambda c: c.los.wait(float(c.completed), timeout=0), TE),
    ("wait-negative-timeout-pending", lambda c: c.los.wait(c.pending, timeout=-1), EI),
    ("wait-negative-timeout-completed", lambda c: c.los.wait(c.completed, timeout=-1), EI),
    ("wait-timeout-str", lambda c: c.los.wait(c.pending, timeout="1"), TE),
    # wait_any
    ("wait_any-empty", lambda c: c.los.wait_any([], timeout=0), EI),
    ("wait_any-unknown", lambda c: c.los.wait_any([c.unknown], timeout=0), EI),
    ("wait_any-consumed", lambda c: c.los.wait_any([c.consumed], timeout=0), EI),
    ("wait_any-one-bad", lambda c: c.los.wait_any([c.completed, c.unknown], timeout=0), EI),
    ("wait_any-int", lambda c: c.los.wait_any(5, timeout=0), TE),
    ("wait_any-str", lambda c: c.los.wait_any("12", timeout=0), TE),
    ("wait_any-negative-timeout-pending", lambda c: c.los.wait_any([c.pending], timeout=-1), EI),
    ("wait_any-negative-timeout-completed",
     lambda c: c.los.wait_any([c.completed], timeout=-1), EI),
    # wait_all
    ("wait_all-empty", lambda c: c.los.wait_all([], timeout=0), EI),
    ("wait_all-unknown", lambda c: c.los.wait_all([c.unknown], timeout=0), EI),
    ("wait_all-consumed", lambda c: c.los.wait_all([c.consumed], timeout=0), EI),
    ("wait_all-one-bad", lambda c: c.los.wait_all([c.completed, c.unknown], timeout=0), EI),
    ("wait_all-int", lambda c: c.los.wait_all(5, timeout=0), TE),
    ("wait_all-negative-timeout-pending", lambda c: c.los.wait_all([c.pending], timeout=-1), EI),
    ("wait_all-negative-timeout-completed",
     lambda c: c.los.wait_all([c.completed], timeout=-1), EI),
    # blocking_push / blocking_pop
    ("blocking_push-bad-qd", lambda c: c.los.blocking_push(BAD_QD, b"x"), EB),
    ("blocking_push-empty", lambda c: c.los.blocking_push(c.m, b""), EI),
    ("blocking_push-int", lambda c: c.los.blocking_push(c.m, 5), TE),
    ("blocking_push-unconnected", lambda c: c.los.blocking_push(c.tcp, b"x"), errno.ENOTCONN),
    ("blocking_pop-bad-qd", lambda c: c.los.blocking_pop(BAD_QD), EB),
    ("blocking_pop-negative-size", lambda c: c.los.blocking_pop(c.m, -1), EI),
    ("blocking_pop-size-str", lambda c: c.los.blocking_pop(c.m, "1"), TE),
    ("blocking_pop-unconnected", lambda c: c.los.blocking_pop(c.tcp), errno.ENOTCONN),
    # sgaalloc / sgafree
    ("sgaalloc-zero", lambda c: c.los.sgaalloc(0), EI),
    ("sgaalloc-negative", lambda c: c.los.sgaalloc(-1), EI),
    ("sgaalloc-str", lambda c: c.los.sgaalloc("64"), TE),
    ("sgafree-bytes", lambda c: c.los.sgafree(b"x"), TE),
    ("sgafree-twice", lambda c: c.los.sgafree(c.freed_sga), EI),
    # open / creat
    ("open-path-float", lambda c: c.los.open(3.5), TE),
    ("open-missing", lambda c: c.los.open(str(c.tmp / "missing")), errno.ENOENT),
    ("open-directory", lambda c: c.los.open(str(c.tmp)), errno.EISDIR),
    ("open-flags-str", lambda c: c.los.open(str(c.tmp / "f"), "w"), TE),
    ("open-mode-str", lambda c: c.los.open(str(c.tmp / "f"), os.O_CREAT | os.O_WRONLY, "rw"), TE),
    ("creat-path-float", lambda c: c.los.creat(3.5), TE),
    ("creat-no-dir", lambda c: c.los.creat(str(c.tmp / "no" / "such" / "f")), errno.ENOENT),
    ("creat-mode-str", lambda c: c.los.creat(str(c.tmp / "f"), "rw"), TE),
    # pipes
    ("create_pipe-int", lambda c: c.los.create_pipe(5), TE),
    ("create_pipe-empty", lambda c: c.los.create_pipe(""), EI),
    ("create_pipe-slash", lambda c: c.los.create_pipe("a/b"), EI),
    ("open_pipe-int", lambda c: c.los.open_pipe(5), TE),
    ("open_pipe-empty", lambda c: c.los.open_pipe(""), EI),
    ("open_pipe-missing", lambda c: c.los.open_pipe(f"dq-none-{os.getpid()}-{id(c)}"),
     errno.ENOENT),
    # combinators
    ("merge-bad-first", lambda c: c.los.merge(BAD_QD, c.m), EB),
    ("merge-bad-second", lambda c: c.los.merge(c.m, BAD_QD), EB),
    ("merge-closed", lambda c: c.los.merge(c.m, c.closed), EB),
    ("merge-str", lambda c: c.los.merge("3", c.m), TE),
    ("filter-bad-qd", lambda c: c.los.filter(BAD_QD, _pred), EB),
    ("filter-pred-int", lambda c: c.los.filter(c.m, 5), TE),
    ("filter-qd-str", lambda c: c.los.filter("3", _pred), TE),
    ("sort-bad-qd", lambda c: c.los.sort(BAD_QD, _key), EB),
    ("sort-key-int", lambda c: c.los.sort(c.m, 5), TE),
    ("sort-negative-window", lambda c: c.los.sort(c.m, _key, -1), EI),
    ("sort-window-str", lambda c: c.los.sort(c.m, _key, "8"), TE),
    ("map-bad-qd", lambda c: c.los.map(BAD_QD, bytes), EB),
    ("map-fn-int", lambda c: c.los.map(c.m, 5), TE),
    ("map-qd-str", lambda c: c.los.map("3", bytes), TE),
    ("qconnect-bad-in", lambda c: c.los.qconnect(BAD_QD, c.m), EB),
    ("qconnect-bad-out", lambda c: c.los.qconnect(c.m, BAD_QD), EB),
    ("qconnect-str", lambda c: c.los.qconnect("3", c.m), TE),
    # stats / queue
    ("stats-bad-qd", lambda c: c.los.stats(BAD_QD), EB),
    ("stats-closed", lambda c: c.los.stats(c.closed), EB),
    ("stats-str", lambda c: c.los.stats("3"), TE),
    ("queue-negative-capacity", lambda c: c.los.queue(-1), EI),
    ("queue-zero-capacity", lambda c: c.los.queue(0), EI),
    ("queue-capacity-str", lambda c: c.los.queue("big"), TE),
]


@pytest.mark.parametrize("case,call,expected", SWEEP, ids=[s[0] for s in SWEEP])
def test_invalid_argument(los: LibOS, tmp_path: Path, case: str, call: Callable[[Ctx], Any],
                          expected: Any) -> None:
    ctx = Ctx(los, tmp_path)
    if expected is TypeError:
        with pytest.raises(TypeError):
            call(ctx)
    else:
        with pytest.raises(OSError) as ei:
            call(ctx)
        assert ei.value.errno == expected, (
            f"{case}: expected {errno.errorcode[expected]}, got {ei.value!r} "
            f"(errno {ei.value.errno!r})")
    ctx.check_alive()


def test_sweep_covers_every_public_call() -> None:
    calls = {"socket", "bind", "listen", "accept", "connect", "close", "async_close",
             "getsockname", "getpeername", "setsockopt", "getsockopt", "push", "pushto", "pop",
             "wait", "wait_any", "wait_all", "blocking_push", "blocking_pop", "sgaalloc",
             "sgafree", "open", "creat", "create_pipe", "open_pipe", "merge", "filter", "sort",
             "map", "qconnect", "stats", "queue"}
    covered = {case.split("-")[0] for case, _, _ in SWEEP}
    assert calls <= covered, calls - covered
    for name in calls:
        assert callable(getattr(LibOS, name))


def test_timed_out_token_stays_valid(los: LibOS) -> None:
    m = los.queue()
    qt = los.pop(m)
    with pytest.raises(TimeoutError) as ei:
        los.wait(qt, timeout=0.01)
    assert ei.value.errno == errno.ETIMEDOUT
    wait_ok(los, los.push(m, b"late"), Opcode.PUSH)
    assert wait_ok(los, qt, Opcode.POP).sga.tobytes() == b"late"
    expect_oserror(errno.EINVAL, lambda: los.wait(qt, timeout=0))


def test_blocking_pop_timeout_loses_nothing(los: LibOS) -> None:
    """A blocking_pop that times out (or gets a bad timeout) must not leave an orphan pop
    behind that swallows the next element: the application never got its token."""
    m = los.queue()
    with pytest.raises(TimeoutError):
        los.blocking_pop(m, None, 0.01)
    with pytest.raises(OSError):
        los.blocking_pop(m, None, -1)
    wait_ok(los, los.push(m, b"one"), Opcode.PUSH)
    r = los.wait(los.pop(m), timeout=1)
    assert r.opcode == Opcode.POP and r.sga.tobytes() == b"one"


def test_sga_push_and_free_protection(los: LibOS) -> None:
    """sgaalloc'd memory pushed then freed at once (Demikernel examples do): the element
    still arrives intact."""
    cq, sq, _ = connected_pair(los, framing=True)
    sga = los.sgaalloc(64)
    assert len(sga) == 64 and isinstance(sga, SGArray)
    sga.segments[0][:] = b"\x65" * 64
    qt = los.push(cq, sga)
    los.sgafree(sga)
    wait_ok(los, qt, Opcode.PUSH)
    r = wait_ok(los, los.pop(sq), Opcode.POP)
    assert r.sga.tobytes() == b"\x65" * 64
