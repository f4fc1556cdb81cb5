"""File queues (plain and ``framing=True`` durable element logs) and named pipes.

Files: ``open``/``creat`` with flags, push at the write offset, pop of the next bytes (size
respected), end of file, ``O_APPEND``, errors (EBADF, EISDIR, ENOENT, EEXIST); the framed log
written, closed, reopened and read back exactly, and a torn tail or a corrupted header popping
as ``FAILED``/``EIO``.

Pipes: ``create_pipe``/``open_pipe`` in one process and between two processes (a child running
a small script written to ``tmp_path``), element-preserving with multi-segment elements, both
directions, end of stream when the other side closes, pushes and pops on the creator made before
the opener arrives, and name errors.

Every wait has a timeout and every loop is bounded.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import select
import stat
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queueapi import LibOS, Opcode

T = 10.0  # seconds: the timeout of every single wait
CHILD_T = 30.0  # seconds: the longest a child process may run

SETTINGS = settings(deadline=None, max_examples=30,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HEADER = 12  # v0.0 frame header: magic, byte count, segment count
MAGIC = 0x10102010


# =============================================================================================
# Helpers
# =============================================================================================
@contextlib.contextmanager
def fresh_los() -> Iterator[LibOS]:
    lib = LibOS("posix")
    try:
        yield lib
    finally:
        lib.shutdown_libos()


@pytest.fixture
def los() -> Iterator[LibOS]:
    with fresh_los() as lib:
        yield lib


def pop(los: LibOS, qd: int, size: int | None = None):
    r = los.wait(los.pop(qd, size), timeout=T)
    return r


def pop_segs(los: LibOS, qd: int) -> list[bytes]:
    r = pop(los, qd)
    assert r.opcode == Opcode.POP, r
    assert len(r.sga) > 0, "unexpected end of stream"
    return [bytes(s) for s in r.sga.segments]


def push_ok(los: LibOS, qd: int, data: Any) -> None:
    r = los.wait(los.push(qd, data), timeout=T)
    assert r.opcode == Opcode.PUSH and r.ret == 0, r


def assert_eof(los: LibOS, qd: int, qt: int | None = None) -> None:
    r = los.wait(los.pop(qd) if qt is None else qt, timeout=T)
    assert r.opcode == Opcode.POP and len(r.sga) == 0, f"expected end of stream, got {r}"


def assert_failed(r, code: int) -> None:
    assert r.opcode == Opcode.FAILED and r.ret == code, \
        f"expected FAILED {errno.errorcode[code]}, got {r}"


def frame_size(segs: list[bytes]) -> int:
    return HEADER + 4 * len(segs) + sum(map(len, segs))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def unique_name() -> str:
    return f"test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


# elements: 1..4 segments, at least one byte in all
segments = st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=4).filter(
    lambda segs: any(segs))
element_lists = st.lists(segments, min_size=0, max_size=20)


# =============================================================================================
# Plain file queues
# =============================================================================================
def test_creat_push_writes_and_open_pops_reads(los: LibOS, tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    w = los.creat(path)
    push_ok(los, w, b"hello ")
    push_ok(los, w, [b"wor", b"ld", bytearray(b"!"), memoryview(b"\n")])  # multi-segment
    with pytest.raises(OSError) as e:
        los.pop(w)  # creat opens write-only
    assert e.value.errno == errno.EBADF
    los.close(w)
    assert path.read_bytes() == b"hello world!\n"

    r = los.open(path)  # O_RDONLY
    assert pop(los, r, 5).sga.tobytes() == b"hello"
    assert pop(los, r, 1).sga.tobytes() == b" "
    assert pop(los, r).sga.tobytes() == b"world!\n"
    for _ in range(2):  # end of file, every time
        assert_eof(los, r)
    with pytest.raises(OSError) as e:
        los.push(r, b"x")  # read-only: EBADF at the call
    assert e.value.errno == errno.EBADF
    los.close(r)
    with pytest.raises(OSError) as e:
        los.close(r)
    assert e.value.errno == errno.EBADF


def test_push_writes_at_write_offset_rdwr(los: LibOS, tmp_path: Path) -> None:
    path = tmp_path / "rw"
    path.write_bytes(b"0123456789")
    qd = los.open(path, os.O_RDWR)
    push_ok(los, qd, b"ab")  # the write offset starts at 0 (no O_APPEND, no O_TRUNC)
    push_ok(los, qd, b"cd")
    assert path.read_bytes() == b"abcd456789"
    # the read offset is separate from the write offset
    assert pop(los, qd, 3).sga.tobytes() == b"abc"
    push_ok(los, qd, b"EFGHIJKL")  # at offset 4, extending the file
    assert pop(los, qd, 100).sga.tobytes() == b"dEFGHIJKL"
    assert_eof(los, qd)
    push_ok(los, qd, b"+")
    assert pop(los, qd).sga.tobytes() == b"+"  # data appended after EOF can be read
    los.close(qd)
    assert path.read_bytes() == b"abcdEFGHIJKL+"


def test_open_flags(los: LibOS, tmp_path: Path) -> None:
    path = tmp_path / "flags"
    qd = los.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    push_ok(los, qd, b"first")
    los.close(qd)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 & ~umask
    with pytest.raises(OSError) as e:
        los.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    assert e.value.errno == errno.EEXIST
    qd = los.open(path, os.O_WRONLY | os.O_TRUNC)
    los.close(qd)
    assert path.read_bytes() == b""
    qd = los.creat(path, 0o600)
    push_ok(los, qd, b"x")
    los.close(qd)
    assert path.read_bytes() == b"x"
    # str, bytes and PathLike paths
    for p in (str(path), os.fsencode(path), path):
        qd = los.open(p)
        assert pop(los, qd).sga.tobytes() == b"x"
        los.close(qd)


def test_o_append(los: LibOS, tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"abc")
    qd = los.open(path, os.O_WRONLY | os.O_APPEND)
    push_ok(los, qd, b"def")
    assert path.read_bytes() == b"abcdef"
    with open(path, "ab") as f:  # another writer appends meanwhile
        f.write(b"XYZ")
    push_ok(los, qd, [b"g", b"h"])
    los.close(qd)
    assert path.read_bytes() == b"abcdefXYZgh"


def test_file_errors(los: LibOS, tmp_path: Path) -> None:
    before = open_fds()
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        with pytest.raises(OSError) as e:
            los.open(tmp_path, flags)
        assert e.value.errno == errno.EISDIR, flags
    assert open_fds() == before, "a failed open leaked a file descriptor"
    with pytest.raises(OSError) as e:
        los.open(tmp_path / "missing")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        los.open(tmp_path / "no" / "such" / "dir", os.O_WRONLY | os.O_CREAT)
    assert e.value.errno == errno.ENOENT
    path = tmp_path / "ro"
    path.write_bytes(b"data")
    qd = los.open(path)
    with pytest.raises(OSError) as e:
        los.push(qd, b"x")
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        los.push(qd, b"")  # empty element
    assert e.value.errno in (errno.EINVAL, errno.EBADF)
    assert pop(los, qd).sga.tobytes() == b"data"  # the queue still works
    los.close(qd)
    with pytest.raises(OSError) as e:
        los.pop(qd)
    assert e.value.errno == errno.EBADF
    w = los.open(path, os.O_WRONLY)
    with pytest.raises(OSError) as e:
        los.push(w, b"")
    assert e.value.errno == errno.EINVAL
    los.close(w)
    assert path.read_bytes() == b"data"


@SETTINGS
@given(content=st.binary(min_size=0, max_size=20000),
       sizes=st.lists(st.integers(1, 9000) | st.none(), min_size=1, max_size=40))
def test_plain_file_pops_respect_size(tmp_path_factory: pytest.TempPathFactory,
                                      content: bytes, sizes: list[int | None]) -> None:
    path = tmp_path_factory.mktemp("sizes") / "f"
    path.write_bytes(content)
    with fresh_los() as los:
        qd = los.open(path)
        off = 0
        for size in sizes:
            r = pop(los, qd, size)
            assert r.opcode == Opcode.POP, r
            want = min(size or 8192, len(content) - off)
            assert r.sga.tobytes() == content[off:off + want]
            off += want
        rest = b""
        for _ in range(len(content) // 8192 + 2):
            b = pop(los, qd).sga.tobytes()
            if not b:
                break
            rest += b
        assert content[:off] + rest == content
        assert_eof(los, qd)


# =============================================================================================
# Framed file queues: a durable element log
# =============================================================================================
def _random_elements(rng: random.Random, n: int) -> list[list[bytes]]:
    out = []
    for _ in range(n):
        nseg = rng.randint(1, 5)
        segs = [rng.randbytes(rng.choice((1, 7, 64, 500, 4000, rng.randint(1, 20000))))
                for _ in range(nseg)]
        out.append(segs)
    return out


def _write_log(los: LibOS, path: Path, elements: list[list[bytes]]) -> None:
    qd = los.creat(path, framing=True)
    qts = [los.push(qd, segs) for segs in elements]
    if qts:
        assert all(r.opcode == Opcode.PUSH for r in los.wait_all(qts, timeout=T))
    los.close(qd)


def _read_log(los: LibOS, qd: int, n: int) -> list[list[bytes]]:
    return [pop_segs(los, qd) for _ in range(n)]


def test_framed_log_round_trip_durable(los: LibOS, tmp_path: Path) -> None:
    rng = random.Random(1234)
    elements = _random_elements(rng, 200)
    path = tmp_path / "log.bin"
    _write_log(los, path, elements)
    assert path.stat().st_size == sum(frame_size(e) for e in elements)
    # read back in a fresh LibOS (as another run of the program would)
    with fresh_los() as los2:
        qd = los2.open(path, framing=True)
        got = _read_log(los2, qd, len(elements))
        assert got == elements  # every element, every segment boundary
        assert_eof(los2, qd)
        assert_eof(los2, qd)
        # size is irrelevant on an element-preserving queue: a whole element comes out
        los2.close(qd)
        qd = los2.open(path, framing=True)
        r = los2.wait(los2.pop(qd, 1), timeout=T)
        assert [bytes(s) for s in r.sga.segments] == elements[0]
        los2.close(qd)


def test_framed_log_append_and_rdwr(los: LibOS, tmp_path: Path) -> None:
    path = tmp_path / "log"
    _write_log(los, path, [[b"one"], [b"t", b"wo"]])
    qd = los.open(path, os.O_RDWR | os.O_APPEND, framing=True)
    assert pop_segs(los, qd) == [b"one"]
    push_ok(los, qd, [b"thr", b"ee"])
    assert pop_segs(los, qd) == [b"t", b"wo"]
    assert pop_segs(los, qd) == [b"thr", b"ee"]
    assert_eof(los, qd)
    push_ok(los, qd, b"four")
    assert pop_segs(los, qd) == [b"four"]  # the log can be tailed
    los.close(qd)
    qd = los.open(path, framing=True)
    assert _read_log(los, qd, 4) == [[b"one"], [b"t", b"wo"], [b"thr", b"ee"], [b"four"]]
    assert_eof(los, qd)


@pytest.mark.parametrize("cut", ["mid-body", "mid-header", "mid-seglen", "last-byte"])
def test_framed_log_torn_tail_is_eio(los: LibOS, tmp_path: Path, cut: str) -> None:
    rng = random.Random(hash(cut) & 0xFFFF)
    elements = _random_elements(rng, 10)
    elements[-1] = [b"x" * 50, b"y" * 70]
    path = tmp_path / "torn"
    _write_log(los, path, elements)
    size = path.stat().st_size
    last = frame_size(elements[-1])
    start = size - last
    keep = {"mid-body": start + HEADER + 4 + 25, "mid-header": start + 7,
            "mid-seglen": start + HEADER + 2, "last-byte": size - 1}[cut]
    os.truncate(path, keep)
    qd = los.open(path, framing=True)
    assert _read_log(los, qd, 9) == elements[:9]
    r = pop(los, qd)
    assert_failed(r, errno.EIO)
    r = pop(los, qd)  # it stays an error, never a silent end of file
    assert_failed(r, errno.EIO)


@pytest.mark.parametrize("field", ["magic", "nbytes-huge", "nbytes-small", "nsegs-zero",
                                   "nsegs-many", "seglen"])
def test_framed_log_corrupted_header_is_eio(los: LibOS, tmp_path: Path, field: str) -> None:
    elements = [[b"a" * 10], [b"b" * 20, b"c" * 5], [b"d" * 30], [b"e"]]
    path = tmp_path / "bad"
    _write_log(los, path, elements)
    off = frame_size(elements[0])  # the second record is corrupted
    with open(path, "r+b") as f:
        f.seek(off)
        magic, nbytes, nsegs = struct.unpack("!III", f.read(HEADER))
        assert (magic, nbytes, nsegs) == (MAGIC, 8 + 25, 2)
        if field == "magic":
            magic ^= 0x01000000
        elif field == "nbytes-huge":
            nbytes = 0xFFFFFFF0
        elif field == "nbytes-small":
            nbytes = 8 + 3
        elif field == "nsegs-zero":
            nsegs = 0
        elif field == "nsegs-many":
            nsegs = 0xFFFF
        f.seek(off)
        if field == "seglen":
            f.seek(off + HEADER)
            f.write(struct.pack("!I", 1000))  # segment longer than the record
        else:
            f.write(struct.pack("!III", magic, nbytes, nsegs))
    qd = los.open(path, framing=True)
    assert pop_segs(los, qd) == elements[0]
    assert_failed(pop(los, qd), errno.EIO)
    assert_failed(pop(los, qd), errno.EIO)


@SETTINGS
@given(first=element_lists, second=element_lists)
def test_framed_log_round_trip_property(tmp_path_factory: pytest.TempPathFactory,
                                        first: list[list[bytes]],
                                        second: list[list[bytes]]) -> None:
    path = tmp_path_factory.mktemp("prop") / "log"
    with fresh_los() as los:
        _write_log(los, path, first)
        qd = los.open(path, os.O_WRONLY | os.O_APPEND, framing=True)
        for segs in second:
            push_ok(los, qd, segs)
        los.close(qd)
    with fresh_los() as los:
        qd = los.open(path, framing=True)
        assert _read_log(los, qd, len(first) + len(second)) == first + second
        assert_eof(los, qd)


# =============================================================================================
# Pipes in one process
# =============================================================================================
@SETTINGS
@given(down=element_lists, up=element_lists)
def test_pipe_round_trip_in_process(down: list[list[bytes]], up: list[list[bytes]]) -> None:
    with fresh_los() as los:
        name = unique_name()
        c = los.create_pipe(name)
        o = los.open_pipe(name)
        # the creator takes the connection when it first polls: a first element up the pipe
        # makes sure of that (pushes before it are test_pipe_push_on_creator_before_opener_*)
        push_ok(los, o, [b"h", b"i"])
        assert pop_segs(los, c) == [b"h", b"i"]
        for segs in down:
            push_ok(los, c, segs)
        for segs in up:
            push_ok(los, o, segs)
        assert [pop_segs(los, o) for _ in down] == down
        assert [pop_segs(los, c) for _ in up] == up
        los.close(o)
        assert_eof(los, c)


def test_pipe_between_two_libos_instances(los: LibOS) -> None:
    name = unique_name()
    c = los.create_pipe(name)
    with fresh_los() as other:
        o = other.open_pipe(name)
        push_ok(other, o, [b"a", b"bc"])
        assert pop_segs(los, c) == [b"a", b"bc"]
        push_ok(los, c, b"back")
        assert pop_segs(other, o) == [b"back"]
        los.close(c)
        assert_eof(other, o)


def test_pipe_name_errors(los: LibOS) -> None:
    name = unique_name()
    c = los.create_pipe(name)
    with pytest.raises(OSError) as e:
        los.create_pipe(name)  # still waiting for its opener
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        los.open_pipe(unique_name())
    assert e.value.errno == errno.ENOENT
    for bad in ("", "a/b", "/", "x\0y", "n" * 200):
        for call in (los.create_pipe, los.open_pipe):
            with pytest.raises(OSError) as e:
                call(bad)
            assert e.value.errno == errno.EINVAL, (call.__name__, bad)
    for bad in (None, 5, b"name", ["n"], 1.5):
        for call in (los.create_pipe, los.open_pipe):
            with pytest.raises(TypeError):
                call(bad)  # type: ignore[arg-type]
    # the pipe made first is unharmed by all this
    o = los.open_pipe(name)
    push_ok(los, o, b"ok")
    assert pop_segs(los, c) == [b"ok"]


def test_pipe_pop_on_creator_before_opener_in_process(los: LibOS) -> None:
    name = unique_name()
    c = los.create_pipe(name)
    qt = los.pop(c)
    with pytest.raises(TimeoutError):
        los.wait(qt, timeout=0.05)
    o = los.open_pipe(name)
    push_ok(los, o, [b"late", b"comer"])
    r = los.wait(qt, timeout=T)
    assert r.opcode == Opcode.POP and [bytes(s) for s in r.sga.segments] == [b"late", b"comer"]


def test_pipe_push_on_creator_before_opener_in_process(los: LibOS) -> None:
    """API.md: pipes are named queues; PipeQueue documents that "pushes and pops made before
    the peer opens pend". A push must not fail because nobody has opened the pipe yet."""
    name = unique_name()
    c = los.create_pipe(name)
    qt = los.push(c, [b"early", b"bird"])
    try:
        r = los.wait(qt, timeout=0.05)
    except TimeoutError:
        r = None  # pending, as it should be
    assert r is None or r.opcode == Opcode.PUSH, f"push before the opener arrived: {r}"
    o = los.open_pipe(name)
    if r is None:
        r = los.wait(qt, timeout=T)
        assert r.opcode == Opcode.PUSH, r
    assert pop_segs(los, o) == [b"early", b"bird"]


# =============================================================================================
# Pipes between two processes
# =============================================================================================
CHILD = textwrap.dedent(r'''
    """Pipe peer for test_files_pipes.py: argv = mode name."""
    import hashlib, json, sys
    from queueapi import LibOS, Opcode

    T = 10.0
    mode, name = sys.argv[1], sys.argv[2]
    los = LibOS("posix")

    def report(**kw):
        print(json.dumps(kw), flush=True)

    if mode.startswith("create"):
        qd = los.create_pipe(name)
        print("created", flush=True)
        mode = mode.split("-", 1)[1]
        # wait for the opener's first element before pushing anything
        r = los.wait(los.pop(qd), timeout=T)
        if r.opcode != Opcode.POP or r.sga.tobytes() != b"hi":
            report(error="hi", result=repr(r)); sys.exit(2)
    else:
        qd = los.open_pipe(name)

    if mode == "echo":
        # say hello, then send every element back with its segments reversed; b"bye" closes
        r = los.wait(los.push(qd, [b"hello", b"", b"from child"]), timeout=T)
        if r.opcode != Opcode.PUSH:
            report(error="hello", ret=r.ret); sys.exit(2)
        n = 0
        for _ in range(100000):
            r = los.wait(los.pop(qd), timeout=T)
            if r.opcode != Opcode.POP:
                report(error="pop", ret=r.ret, n=n); sys.exit(2)
            if len(r.sga) == 0:
                report(eof=True, n=n); break
            segs = [bytes(s) for s in r.sga.segments]
            if segs == [b"bye"]:
                los.close(qd)
                report(bye=True, n=n); break
            n += 1
            r = los.wait(los.push(qd, segs[::-1]), timeout=T)
            if r.opcode != Opcode.PUSH:
                report(error="push", ret=r.ret, n=n); sys.exit(2)
    elif mode == "sink":
        # say ready, then count elements and digest their segments until end of stream
        r = los.wait(los.push(qd, b"ready"), timeout=T)
        if r.opcode != Opcode.PUSH:
            report(error="ready", ret=r.ret); sys.exit(2)
        h = hashlib.sha256()
        n = 0
        for _ in range(100000):
            r = los.wait(los.pop(qd), timeout=T)
            if r.opcode != Opcode.POP:
                report(error="pop", ret=r.ret, n=n); sys.exit(2)
            if len(r.sga) == 0:
                report(eof=True, n=n, digest=h.hexdigest()); break
            for s in r.sga.segments:
                h.update(len(s).to_bytes(4, "big")); h.update(s)
            h.update(b"|")
            n += 1
''')


def _digest(elements: list[list[bytes]]) -> str:
    import hashlib
    h = hashlib.sha256()
    for segs in elements:
        for s in segs:
            h.update(len(s).to_bytes(4, "big"))
            h.update(s)
        h.update(b"|")
    return h.hexdigest()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """Start the pipe peer script in a child process; kill what is left at teardown."""
    script = tmp_path / "pipe_peer.py"
    script.write_text(CHILD)
    procs: list[subprocess.Popen] = []

    def start(mode: str, name: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, str(script), mode, name], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=str(tmp_path))
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(Exception):
            p.communicate(timeout=5)


def _finish(p: subprocess.Popen) -> dict[str, Any]:
    out, err = p.communicate(timeout=CHILD_T)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert p.returncode == 0 and lines, f"child failed ({p.returncode}): {out!r} {err.decode()}"
    return json.loads(lines[-1])


def _read_line(p: subprocess.Popen, timeout: float = T) -> bytes:
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"child said nothing within {timeout} s: {buf!r}"
        ready, _, _ = select.select([p.stdout], [], [], left)
        if ready:
            ch = os.read(p.stdout.fileno(), 1)
            assert ch, f"child exited: {buf!r} {p.stderr.read().decode()}"
            buf += ch
    return buf.strip()


def test_pipe_two_processes_echo_both_directions(los: LibOS, spawn) -> None:
    rng = random.Random(99)
    name = unique_name()
    c = los.create_pipe(name)
    hello = los.pop(c)  # a pop made before the opener exists
    p = spawn("echo", name)
    r = los.wait(hello, timeout=T)
    assert r.opcode == Opcode.POP, r
    assert [bytes(s) for s in r.sga.segments] == [b"hello", b"", b"from child"]
    elements = _random_elements(rng, 60)
    # several in flight at once: element boundaries must survive batching in the stream
    for i in range(0, len(elements), 10):
        batch = elements[i:i + 10]
        qts = [los.push(c, segs) for segs in batch]
        assert all(r.opcode == Opcode.PUSH for r in los.wait_all(qts, timeout=T))
        for segs in batch:
            assert pop_segs(los, c) == segs[::-1]
    push_ok(los, c, b"bye")
    assert_eof(los, c)  # the child closed its end
    assert _finish(p) == {"bye": True, "n": len(elements)}


def test_pipe_two_processes_eof_when_creator_closes(los: LibOS, spawn) -> None:
    rng = random.Random(7)
    name = unique_name()
    c = los.create_pipe(name)
    p = spawn("sink", name)
    assert pop_segs(los, c) == [b"ready"]  # the sink has opened the pipe
    elements = _random_elements(rng, 300)
    qts = [los.push(c, segs) for segs in elements]
    assert all(r.opcode == Opcode.PUSH for r in los.wait_all(qts, timeout=T))
    hello = los.pop(c)
    los.close(c)
    r = los.wait(hello, timeout=T)  # our own pending pop is cancelled by our close
    assert r.opcode == Opcode.FAILED and r.ret == errno.ECANCELED
    assert _finish(p) == {"eof": True, "n": len(elements), "digest": _digest(elements)}


def test_pipe_two_processes_creator_in_child(los: LibOS, spawn) -> None:
    name = unique_name()
    p = spawn("create-echo", name)
    assert _read_line(p) == b"created"
    o = los.open_pipe(name)
    push_ok(los, o, b"hi")
    assert pop_segs(los, o) == [b"hello", b"", b"from child"]
    push_ok(los, o, [b"1", b"22", b"333"])
    assert pop_segs(los, o) == [b"333", b"22", b"1"]
    los.close(o)  # the child sees end of stream
    assert _finish(p) == {"eof": True, "n": 1}


def test_pipe_two_processes_push_and_pop_before_open(los: LibOS, spawn) -> None:
    """Pushes and pops made on the creator before the opener arrives complete after it opens."""
    name = unique_name()
    c = los.create_pipe(name)
    early = [[b"early", b"one"], [b"early two"], [b"e", b"3", b"!"]]
    push_qts = [los.push(c, segs) for segs in early]
    pop_qt = los.pop(c)
    time.sleep(0.05)
    p = spawn("echo", name)
    r = los.wait(pop_qt, timeout=T)
    assert r.opcode == Opcode.POP and [bytes(s) for s in r.sga.segments] == \
        [b"hello", b"", b"from child"], r
    for qt in push_qts:
        r = los.wait(qt, timeout=T)
        assert r.opcode == Opcode.PUSH, f"a push made before the opener arrived: {r}"
    for segs in early:
        assert pop_segs(los, c) == segs[::-1]
    push_ok(los, c, b"bye")
    assert_eof(los, c)
    assert _finish(p) == {"bye": True, "n": len(early)}
