"""Tests of the shared-memory SPSC ring (libos/shm/ring.py + ring.c).

Single-process semantics (hypothesis against a FIFO model, wrap-around,
segment boundaries, full/too big/EOF), two processes exchanging 100k
elements, a fuzzer that corrupts the shared state and runs the reader in a
separate process so a crash is caught, and checks that waiters really sleep
and are woken.  No timing is asserted beyond "it woke up / it did not burn
CPU"; performance lives in scripts/bench_ring.py.
"""

from __future__ import annotations

import array
import errno
import mmap
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ring_mod = pytest.importorskip("libos.shm.ring", reason="build with: python libos/shm/_ring_build.py")
from libos.shm._ring import lib  # noqa: E402
from libos.shm.ring import (  # noqa: E402
    HEADER_SIZE,
    MAX_SEGMENTS,
    Ring,
    RingCorruptedError,
)

OFF_HEAD = lib.RING_OFF_HEAD
OFF_TAIL = lib.RING_OFF_TAIL
FLAG_WRAP = lib.RING_FLAG_WRAP


def new_ring(capacity: int = 4096) -> Ring:
    ring, fd = Ring.create(capacity)
    os.close(fd)
    return ring


def drain(ring: Ring) -> list[list[bytes]]:
    """Pop (copying) until the ring is empty or at end of stream."""
    out = []
    try:
        while (e := ring.pop_copy()) is not None:
            out.append(e)
    except EOFError:
        pass
    return out


def map_fd(fd: int) -> mmap.mmap:
    return mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def walk_records(image: bytes | mmap.mmap, capacity: int, markers: bool = False) -> list[tuple[int, int]]:
    """(data offset, record size) of every record between tail and head, by the
    documented layout.  Wrap markers are included (as (offset, 0)) if asked."""
    head, = struct.unpack_from("<Q", image, OFF_HEAD)
    tail, = struct.unpack_from("<Q", image, OFF_TAIL)
    out = []
    c = tail
    while c != head:
        pos = c % capacity
        total, nsegs, flags = struct.unpack_from("<IHH", image, HEADER_SIZE + pos)
        if flags == FLAG_WRAP:
            if markers:
                out.append((pos, 0))
            c = (c + capacity - pos) % (1 << 64)
            continue
        assert flags == 0
        size = (8 + 4 * nsegs + total + 7) & ~7
        out.append((pos, size))
        c = (c + size) % (1 << 64)
    return out


# ---------------------------------------------------------------------------
# single process


def test_create_rounds_capacity_and_attach_sees_same_ring() -> None:
    ring, fd = Ring.create(5000)
    try:
        assert ring.capacity == 8192
        assert os.fstat(fd).st_size == HEADER_SIZE + 8192
        assert os.fstat(fd).st_mode & 0o777 == 0o600
        peer = Ring.attach(fd)
        assert peer.capacity == 8192
        assert ring.push([b"ab", b"", b"cde"]) == 0
        assert drain(peer) == [[b"ab", b"", b"cde"]]
        assert ring.try_pop() is None  # the peer consumed it
        peer.close()
    finally:
        os.close(fd)
        ring.close()


def test_create_rejects_too_big() -> None:
    with pytest.raises(ValueError):
        Ring.create(ring_mod.MAX_CAPACITY + 1)


def test_attach_rejects_non_memfd_and_unsealed_memfd() -> None:
    with tempfile.TemporaryFile(dir="/tmp") as f:
        f.truncate(HEADER_SIZE + 4096)
        with pytest.raises(ValueError):
            Ring.attach(f.fileno())
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, HEADER_SIZE + 4096)
        with pytest.raises(ValueError, match="sealed"):
            Ring.attach(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "offset, value",
    [(0, b"\0"), (8, b"\x02"), (12, b"\0\0\0\0"), (16, struct.pack("<Q", 1 << 20)),
     (16, struct.pack("<Q", 4096 + 8)), (16, struct.pack("<Q", 0))],
    ids=["magic", "version", "hdr_size", "capacity-too-big", "capacity-not-pow2", "capacity-zero"],
)
def test_attach_rejects_bad_header(offset: int, value: bytes) -> None:
    ring, fd = Ring.create(4096)
    try:
        mm = map_fd(fd)
        mm[offset:offset + len(value)] = value
        with pytest.raises(RingCorruptedError) as ei:
            Ring.attach(fd)
        assert ei.value.errno == errno.EBADMSG
        mm.close()
    finally:
        os.close(fd)
        ring.close()


def test_segment_boundaries_and_bytes_like_types() -> None:
    ring = new_ring(1 << 16)
    ints = array.array("i", [1, 2, 3])
    strided = memoryview(b"abcdefgh")[::2]
    elements = [
        b"single",
        [b"a", bytearray(b"bc"), memoryview(b"def")],
        [b"", b"x", b""],
        [],
        ints,
        [ints, strided],
        strided,
        bytearray(b"ba"),
        [b"z"] * MAX_SEGMENTS,
    ]
    for e in elements:
        assert ring.push(e) == 0
    got = drain(ring)
    assert got == [
        [b"single"],
        [b"a", b"bc", b"def"],
        [b"", b"x", b""],
        [],
        [ints.tobytes()],
        [ints.tobytes(), b"aceg"],
        [b"aceg"],
        [b"ba"],
        [b"z"] * MAX_SEGMENTS,
    ]
    with pytest.raises(ValueError):
        ring.push([b"z"] * (MAX_SEGMENTS + 1))
    ring.close()


def test_popped_views_are_zero_copy_and_read_only() -> None:
    ring, fd = Ring.create(4096)
    mm = map_fd(fd)
    assert ring.push([b"hello", b"world"]) == 0
    views = ring.try_pop()
    assert views is not None and [bytes(v) for v in views] == [b"hello", b"world"]
    assert all(v.readonly for v in views)
    # The view shows the mapping itself: a write through another mapping of
    # the memfd is visible in it.
    (pos, _), = walk_records(mm, 4096)
    mm[HEADER_SIZE + pos + 8 + 2 * 4] = ord("J")  # header, two lengths, payload
    assert bytes(views[0]) == b"Jello"
    # Peeking again without release returns the same element.
    again = ring.try_pop()
    assert again is not None and bytes(again[1]) == b"world"
    ring.release()
    assert ring.try_pop() is None
    with pytest.raises(ValueError):
        ring.release()
    del views, again
    mm.close()
    os.close(fd)
    ring.close()


def test_full_ring_gives_eagain_then_accepts_after_pop() -> None:
    ring = new_ring(4096)
    payload = b"p" * 100  # record: 8 + 4 + 100 -> 112 bytes
    n = 0
    while (rc := ring.push(payload)) == 0:
        n += 1
    assert rc == errno.EAGAIN
    assert n == 4096 // 112
    assert ring.stats["full"] == 1
    assert not ring.wait_writable(0, len(payload))
    assert ring.pop_copy() == [payload]
    assert ring.wait_writable(0, len(payload))
    assert ring.push(payload) == 0
    assert len(drain(ring)) == n
    ring.close()


def test_too_big_is_emsgsize_and_max_payload_fits_empty_ring_anywhere() -> None:
    ring = new_ring(4096)
    for nsegs in (1, 3):
        limit = ring.max_payload(nsegs)
        assert limit == 4096 // 2 - 8 - 4 * nsegs
        with pytest.raises(OSError) as ei:
            ring.push([b"x" * (limit + 1)] + [b""] * (nsegs - 1))
        assert ei.value.errno == errno.EMSGSIZE
        with pytest.raises(OSError):
            ring.reserve(limit + 1, nsegs)
    assert ring.max_payload(MAX_SEGMENTS) == -1
    # From every position, an empty ring accepts a maximal element.
    big = b"B" * ring.max_payload(1)
    for step in range(0, 4096 // 8):
        assert ring.push(big) == 0, step
        assert ring.pop_copy() == [big]
        assert ring.push([]) == 0  # an 8-byte record: every position is visited
        assert ring.pop_copy() == []
    ring.close()


def test_eof_after_close_producer() -> None:
    ring = new_ring()
    for i in range(3):
        ring.push(bytes([i]))
    ring.close_producer()
    with pytest.raises(BrokenPipeError):
        ring.push(b"late")
    assert [ring.pop_copy() for _ in range(3)] == [[b"\0"], [b"\1"], [b"\2"]]
    with pytest.raises(EOFError):
        ring.try_pop()
    with pytest.raises(EOFError):
        ring.pop_wait(1.0)
    assert ring.wait_readable(0)  # EOF counts as readable
    ring.close()


def test_eof_drains_first() -> None:
    ring = new_ring()
    ring.push(b"a")
    ring.close_producer()
    assert ring.pop_copy() == [b"a"]
    with pytest.raises(EOFError):
        ring.pop_copy()
    ring.close()


def test_close_consumer_fails_pushes() -> None:
    ring = new_ring()
    ring.close_consumer()
    with pytest.raises(BrokenPipeError):
        ring.push(b"x")
    assert ring.wait_writable(0)
    ring.close()


def test_reserve_commit_cancel() -> None:
    ring = new_ring(4096)
    buf = ring.reserve(10, 2)
    assert buf is not None and len(buf) == 10 and not buf.readonly
    buf[:7] = b"abcdefg"
    ring.commit([3, 4])  # shorter than reserved is fine
    assert drain(ring) == [[b"abc", b"defg"]]
    with pytest.raises(ValueError):
        ring.commit(1)  # nothing reserved
    buf = ring.reserve(5)
    buf[:] = b"hello"
    with pytest.raises(ValueError):
        ring.commit(6)  # more than reserved
    with pytest.raises(ValueError):
        ring.commit([2, 3])  # wrong segment count
    ring.commit(5)
    assert drain(ring) == [[b"hello"]]
    ring.reserve(8)
    ring.cancel()
    assert ring.try_pop() is None
    while ring.push(b"f" * 1000) == 0:
        pass
    assert ring.reserve(1000) is None
    del buf
    ring.close()


def test_closed_ring_raises_and_does_not_crash() -> None:
    ring = new_ring()
    ring.push(b"x")
    ring.close()
    ring.close()
    with pytest.raises(ValueError):
        ring.push(b"x")
    with pytest.raises(ValueError):
        ring.try_pop()
    with pytest.raises(ValueError):
        ring.wait_readable(0.01)


def test_counters_wrap_past_2_64() -> None:
    ring, fd = Ring.create(4096)
    mm = map_fd(fd)
    start = (1 << 64) - 3 * 4096 - 8 * 37
    struct.pack_into("<Q", mm, OFF_HEAD, start)
    struct.pack_into("<Q", mm, OFF_TAIL, start)
    peer = Ring.attach(fd)
    rng = random.Random(7)
    sent = []
    got = []
    for _ in range(600):
        e = [rng.randbytes(rng.randrange(0, 400)) for _ in range(rng.randrange(1, 4))]
        if peer.push(e) == 0:
            sent.append(e)
        if rng.random() < 0.6:
            got.extend(drain(peer))
    got.extend(drain(peer))
    assert got == sent
    head, = struct.unpack_from("<Q", mm, OFF_HEAD)
    assert head < start  # it did wrap
    peer.close()
    mm.close()
    os.close(fd)
    ring.close()


element = st.lists(st.binary(max_size=700), min_size=1, max_size=4)
ops = st.lists(st.one_of(st.tuples(st.just("push"), element), st.just(("pop", None)),
                         st.tuples(st.just("pop_many"), st.integers(1, 5))), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops=ops, capacity=st.sampled_from([4096, 8192]))
def test_fifo_model(ops: list, capacity: int) -> None:
    """Random push/pop sequences agree with a FIFO: order, contents and segment
    boundaries are preserved across wrap-arounds; a push refused as full only
    happens when the ring holds something."""
    ring = new_ring(capacity)
    model: deque[list[bytes]] = deque()
    try:
        for op, e in ops:
            if op == "push":
                rc = ring.push(e)
                if rc == 0:
                    model.append(e)
                else:
                    assert rc == errno.EAGAIN
                    assert model, "an empty ring refused an element that fits"
                    assert ring.used > 0
            elif op == "pop":
                got = ring.pop_copy()
                assert got == (model.popleft() if model else None)
            else:
                batch = ring.try_pop_many(e)
                assert [[bytes(v) for v in el] for el in batch] == [model.popleft() for _ in range(min(e, len(model)))]
                if batch:
                    ring.release()
        assert drain(ring) == list(model)
        assert ring.used == 0
    finally:
        ring.close()


# ---------------------------------------------------------------------------
# waiting


def test_waiter_sleeps_without_burning_cpu() -> None:
    ring = new_ring()
    ring.spin_ns = 20_000
    cpu0 = time.process_time()
    t0 = time.monotonic()
    assert ring.wait_readable(1.0) is False
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    assert elapsed >= 0.95
    assert cpu < 0.1, f"waiting 1 s used {cpu:.3f} s of CPU"
    assert ring.stats["sleeps"] >= 1
    cpu0 = time.process_time()
    assert ring.pop_wait(1.0) is None
    assert time.process_time() - cpu0 < 0.1
    ring.close()


def test_wait_releases_the_gil() -> None:
    ring = new_ring()
    count = 0
    stop = False

    def spin() -> None:
        nonlocal count
        while not stop:
            count += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        ring.wait_readable(0.5, spin_ns=0)
    finally:
        stop = True
        t.join()
    assert count > 1000
    ring.close()


def test_pop_wait_polls_and_times_out() -> None:
    ring = new_ring()
    assert ring.pop_wait(0) is None
    t0 = time.monotonic()
    assert ring.pop_wait(0.03) is None
    assert 0.02 < time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    assert ring.pop_wait(0.12, spin_ns=0) is None  # first 50 ms slice, then the slow path
    assert 0.1 < time.monotonic() - t0 < 1.0
    ring.push([b"a", b"bc"])
    got = ring.pop_wait(0)
    assert got is not None and [bytes(v) for v in got] == [b"a", b"bc"]
    ring.release()
    ring.close()


def test_try_pop_many_then_eof() -> None:
    ring = new_ring()
    for i in range(5):
        ring.push([bytes([i])] * (i % 3))
    ring.close_producer()
    first = ring.try_pop_many(3)
    assert [[bytes(v) for v in e] for e in first] == [[], [b"\1"], [b"\2", b"\2"]]
    ring.release()
    assert ring.stats["pops"] == 3
    rest = ring.try_pop_many()
    assert [[bytes(v) for v in e] for e in rest] == [[], [b"\4"]]
    ring.release()
    with pytest.raises(EOFError):
        ring.try_pop_many()
    with pytest.raises(ValueError):
        ring.try_pop_many(0)
    ring.close()


def test_thread_push_wakes_sleeping_consumer() -> None:
    ring = new_ring()
    threading.Timer(0.2, ring.push, args=(b"wake",)).start()
    t0 = time.monotonic()
    got = ring.pop_wait(10.0, spin_ns=0)
    assert got is not None and bytes(got[0]) == b"wake"
    assert time.monotonic() - t0 < 5
    ring.release()
    ring.close()


def _fork_child(fn) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            code = fn() or 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait_child(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("child process hung")


def test_push_from_another_process_wakes_sleeping_consumer() -> None:
    ring, fd = Ring.create(4096)
    r_fd, w_fd = os.pipe()

    def consumer() -> int:
        os.close(r_fd)
        peer = Ring.attach(fd)
        t0 = time.monotonic()
        got = peer.pop_wait(10.0, spin_ns=0)
        dt = time.monotonic() - t0
        os.write(w_fd, pickle.dumps((got and bytes(got[0]), dt, peer.stats["sleeps"])))
        return 0

    pid = _fork_child(consumer)
    os.close(w_fd)
    time.sleep(0.3)  # let the consumer fall asleep
    assert ring.push(b"ping") == 0
    assert _wait_child(pid) == 0
    data, dt, sleeps = pickle.loads(os.read(r_fd, 4096))
    os.close(r_fd)
    assert data == b"ping"
    assert 0.2 < dt < 5.0
    assert sleeps >= 1
    assert ring.stats["wakes"] >= 1
    os.close(fd)
    ring.close()


def test_pop_from_another_process_wakes_sleeping_producer() -> None:
    ring, fd = Ring.create(4096)
    while ring.push(b"f" * 500) == 0:
        pass

    def consumer() -> int:
        time.sleep(0.3)
        return 0 if Ring.attach(fd).pop_copy() is not None else 1

    pid = _fork_child(consumer)
    t0 = time.monotonic()
    assert ring.wait_writable(10.0, 500, spin_ns=0)
    assert 0.2 < time.monotonic() - t0 < 5.0
    assert ring.push(b"f" * 500) == 0
    assert _wait_child(pid) == 0
    assert ring.stats["sleeps"] >= 1
    os.close(fd)
    ring.close()


def test_close_producer_wakes_sleeping_consumer() -> None:
    ring = new_ring()
    threading.Timer(0.2, ring.close_producer).start()
    t0 = time.monotonic()
    with pytest.raises(EOFError):
        ring.pop_wait(10.0, spin_ns=0)
    assert time.monotonic() - t0 < 5
    ring.close()


def test_signal_handler_runs_during_wait() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    ring = new_ring()

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.monotonic()
        with pytest.raises(Interrupted):
            ring.wait_readable(10.0, spin_ns=0)
        assert time.monotonic() - t0 < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    ring.close()


# ---------------------------------------------------------------------------
# two processes


def test_attach_in_exec_ed_process_via_inherited_fd() -> None:
    ring, fd = Ring.create(4096)
    code = (
        "import os, sys\n"
        "from libos.shm.ring import Ring\n"
        "r = Ring.attach(int(sys.argv[1]))\n"
        "assert r.push([b'from', b'child']) == 0\n"
        "r.close_producer()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code, str(fd)], pass_fds=[fd], env=env, check=True, timeout=60)
    assert ring.pop_copy() == [b"from", b"child"]
    with pytest.raises(EOFError):
        ring.try_pop()
    os.close(fd)
    ring.close()


def _element_plan(seed: int, count: int):
    """Deterministic (size, pool offset, segment split) for each element; sizes
    are log-uniform in 1 B .. 64 KiB."""
    rng = random.Random(seed)
    for _ in range(count):
        size = min(1 << 16, max(1, int(2 ** rng.uniform(0, 16))))
        off = rng.randrange(0, (1 << 17) - size)
        nsplit = rng.randrange(0, 3)
        cuts = sorted(rng.randrange(0, size + 1) for _ in range(nsplit))
        yield size, off, cuts


def test_two_processes_exchange_100k_random_elements() -> None:
    count = 100_000
    seed = 1234
    pool = random.Random(seed).randbytes(1 << 17)
    ring, fd = Ring.create(1 << 20)

    def producer() -> int:
        tx = Ring.attach(fd)
        pv = memoryview(pool)
        deadline = time.monotonic() + 60
        for seq, (size, off, cuts) in enumerate(_element_plan(seed, count)):
            body = pv[off:off + size]
            bounds = [0, *cuts, size]
            segs = [struct.pack("<QII", seq, size, zlib.crc32(body))]
            segs += [body[a:b] for a, b in zip(bounds, bounds[1:])]
            while tx.push(segs) != 0:
                if not tx.wait_writable(1.0, size + 16, len(segs)) and time.monotonic() > deadline:
                    return 3
        tx.close_producer()
        return 0

    pid = _fork_child(producer)
    t0 = time.monotonic()
    deadline = t0 + 60
    received = 0
    plan = _element_plan(seed, count)
    pv = memoryview(pool)
    try:
        while True:
            try:
                views = ring.pop_wait(1.0)
            except EOFError:
                break
            if views is None:
                assert time.monotonic() < deadline, f"stalled after {received} elements"
                continue
            seq, size, crc = struct.unpack("<QII", views[0])
            exp_size, exp_off, cuts = next(plan)
            assert seq == received, "lost, duplicated or reordered element"
            assert size == exp_size
            bounds = [0, *cuts, size]
            assert [len(v) for v in views[1:]] == [b - a for a, b in zip(bounds, bounds[1:])]
            c = 0
            for v, a, b in zip(views[1:], bounds, bounds[1:]):
                c = zlib.crc32(v, c)
                assert v == pv[exp_off + a:exp_off + b]
            assert c == crc
            ring.release()
            received += 1
    finally:
        ring.close_consumer()  # a failing consumer must not leave the producer waiting
        assert _wait_child(pid, 60) == 0
    assert received == count
    assert ring.stats["pops"] == count
    print(f"100k elements in {time.monotonic() - t0:.2f} s")
    os.close(fd)
    ring.close()


# ---------------------------------------------------------------------------
# hostile peer: scribbles over shared state; the reader must never crash

FUZZ_WORKER = r"""
import ctypes, mmap, os, pickle, struct, sys
from libos.shm._ring import ffi, lib
from libos.shm.ring import HEADER_SIZE, Ring, RingCorruptedError

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

def guarded_ring(image):
    # The ring image followed by an inaccessible guard page: any access past
    # the data area faults and kills this process, which the test notices.
    mm = mmap.mmap(-1, len(image) + PAGE)
    mm[:len(image)] = image
    addr = int(ffi.cast("uintptr_t", ffi.from_buffer(mm)))
    if libc.mprotect(addr + len(image), PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect")
    return Ring(mm, create=False)

def results(image, max_pops, batch):
    try:
        ring = guarded_ring(image)
    except RingCorruptedError:
        return [("ATTACH_EBADMSG",)]
    out = []
    descs = ffi.new("uint64_t[]", 4096)
    while batch:
        words = lib.ring_peek_many(ring._r, descs, 4096, batch)
        i = 0
        while i < words:  # the C contract, checked directly
            v = descs[i]
            off, total = v & 0x7FFFFFFF, (v >> 31) & 0x7FFFFFFF
            assert off + total <= ring.capacity, "payload outside the data area"
            i += 1
            if v >> 62:
                n = descs[i]
                assert sum(descs[i + 1 + k] for k in range(n)) == total
                i += 1 + n
        try:
            got = ring.try_pop_many(batch)
        except RingCorruptedError:
            out.append(("EBADMSG",))
            break
        except EOFError:
            out.append(("EOF",))
            break
        if not got:
            out.append(("EMPTY",))
            break
        assert len(got) <= batch
        out.extend(("DATA", [bytes(v) for v in views]) for views in got)
        ring.release()
        if len(out) > max_pops:
            break
    max_pops = 0 if batch else max_pops
    off_p = ffi.new("uint64_t *"); total_p = ffi.new("uint32_t *"); nsegs_p = ffi.new("uint32_t *")
    for _ in range(max_pops):
        # The C contract, checked directly: the payload lies in the data area
        # and the segment lengths add up.
        if lib.ring_peek(ring._r, off_p, total_p, nsegs_p) == 0:
            assert off_p[0] + total_p[0] <= ring.capacity, "payload outside the data area"
            assert sum(ring._r.peek_lens[i] for i in range(nsegs_p[0])) == total_p[0]
        try:
            views = ring.try_pop()
        except RingCorruptedError:
            out.append(("EBADMSG",))
            break
        except EOFError:
            out.append(("EOF",))
            break
        if views is None:
            out.append(("EMPTY",))
            break
        out.append(("DATA", [bytes(v) for v in views]))
        ring.release()
    # the producer side must cope as well
    for size in (0, 100, 1000):
        try:
            ring.push(b"q" * size)
            ring.wait_writable(0, size)
            ring.wait_readable(0)
            r = ring.reserve(size, 2)
            if r is not None:
                ring.commit([size, 0])
            ring.pop_copy()
        except (RingCorruptedError, BrokenPipeError, EOFError):
            pass
    return out

inp, outp = sys.stdin.buffer, sys.stdout.buffer
while True:
    hdr = inp.read(4)
    if len(hdr) < 4:
        break
    image, max_pops, batch = pickle.loads(inp.read(struct.unpack("<I", hdr)[0]))
    data = pickle.dumps(results(image, max_pops, batch))
    outp.write(struct.pack("<I", len(data)) + data)
    outp.flush()
"""


class FuzzWorker:
    """A reader in a separate process: a crash shows up as a dead pipe."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def run(self, image: bytes, max_pops: int, batch: int = 0) -> list:
        """Drain a copy of `image` with try_pop (batch == 0) or try_pop_many(batch)."""
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            self.proc = subprocess.Popen([sys.executable, "-c", FUZZ_WORKER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env)
        data = pickle.dumps((image, max_pops, batch))
        try:
            self.proc.stdin.write(struct.pack("<I", len(data)) + data)
            self.proc.stdin.flush()
            hdr = self.proc.stdout.read(4)
            if len(hdr) < 4:
                raise BrokenPipeError
            return pickle.loads(self.proc.stdout.read(struct.unpack("<I", hdr)[0]))
        except BrokenPipeError:
            rc = self.proc.wait(10)
            self.proc = None
            raise AssertionError(f"reader process died (exit status {rc}) on a corrupted ring") from None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def fuzz_worker():
    w = FuzzWorker()
    yield w
    w.close()


FUZZ_CAP = 8192


def _build_ring(elements: list[list[bytes]], start: int, close: bool,
                force_wrap: bool = False) -> tuple[bytes, list[list[bytes]]]:
    """A ring image with `elements` queued from byte counter `start` on (so
    that records land anywhere, wrap, and cross the 2**64 counter wrap); with
    force_wrap, filler elements follow until a record has wrapped."""
    ring, fd = Ring.create(FUZZ_CAP)
    mm = map_fd(fd)
    struct.pack_into("<Q", mm, OFF_HEAD, start)
    struct.pack_into("<Q", mm, OFF_TAIL, start)
    producer = Ring.attach(fd)
    queued = []
    for e in elements:
        if producer.push(e) == 0:
            queued.append(e)
    filler = [_payload(600)]
    while force_wrap and not any(size == 0 for _, size in walk_records(mm, FUZZ_CAP, markers=True)):
        if producer.push(filler) != 0:
            break
        queued.append(filler)
    if close:
        producer.close_producer()
    image = bytes(mm)
    producer.close()
    mm.close()
    os.close(fd)
    ring.close()
    return image, queued


def _payload(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))


u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([FUZZ_CAP, FUZZ_CAP // 2, FUZZ_CAP - 8, 2**31, 2**32 - 8]),
                st.integers(0, 64).map(lambda k: 8 * k))
# Which record: by index in the layout (markers included), or the data record
# just before the wrap marker -- the one that ends closest to the end of the
# data area.
record_index = st.one_of(st.integers(0, 15), st.just("before_marker"))
# (record index, field offset in the record header, struct format, value)
record_field = st.one_of(
    st.tuples(record_index, st.just(0), st.just("<I"), u32),                       # total length
    st.tuples(record_index, st.just(4), st.just("<H"), st.integers(0, 0xFFFF)),    # segment count
    st.tuples(record_index, st.just(6), st.just("<H"), st.integers(0, 3)),         # flags
    st.tuples(record_index, st.integers(0, 2).map(lambda i: 8 + 4 * i), st.just("<I"), u32),  # seg length
    st.tuples(record_index, st.integers(0, 23), st.just("raw"), st.binary(min_size=1, max_size=8)),
    # lengths that just fit / just overflow the space left before the end of
    # the data area or the bytes published
    st.tuples(record_index, st.sampled_from([0, 8]), st.sampled_from(["to_end", "to_head"]),
              st.integers(-24, 40)),
    st.tuples(record_index, st.just(4), st.sampled_from(["nsegs_to_end", "nsegs_to_head"]),
              st.integers(-8, 8)),
    # a consistent-looking record (total = sum of lengths) of another size
    st.tuples(record_index, st.just(0), st.sampled_from(["resize_to_end", "resize_to_head", "resize_by"]),
              st.integers(-24, 40)),
)
# (field offset in the ring header, how to change it)
header_field = st.one_of(
    st.tuples(st.sampled_from([OFF_HEAD, OFF_TAIL]), st.integers(-64, 64).map(lambda k: ("add", 8 * k))),
    st.tuples(st.sampled_from([OFF_HEAD, OFF_TAIL]), st.integers(-(2**63), 2**63 - 1).map(lambda v: ("add", v))),
    st.tuples(st.integers(0, 383), st.binary(min_size=1, max_size=8).map(lambda b: ("raw", b))),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    elements=st.lists(st.lists(st.one_of(st.binary(max_size=64), st.integers(0, 1300).map(_payload)),
                               min_size=1, max_size=3), min_size=1, max_size=10),
    start=st.one_of(st.integers(0, FUZZ_CAP // 8 - 1), st.integers((FUZZ_CAP - 3000) // 8, FUZZ_CAP // 8 - 1),
                    st.integers(2**61 - FUZZ_CAP // 8, 2**61 - 1)).map(lambda k: 8 * k),
    close=st.booleans(),
    force_wrap=st.booleans(),
    header_scribbles=st.lists(header_field, max_size=2),
    record_scribbles=st.lists(record_field, max_size=3),
)
def test_fuzz_corrupted_ring_reader_never_crashes(fuzz_worker, elements, start, close, force_wrap,
                                                  header_scribbles, record_scribbles) -> None:
    """Corrupt the ring header and record headers of a filled ring, then drain
    it in a separate process whose mapping is followed by a guard page: the
    reader returns data or EBADMSG and never touches memory outside the ring;
    records before the first corrupted one come out intact."""
    image, queued = _build_ring(elements, start, close, force_wrap)
    layout = walk_records(image, FUZZ_CAP, markers=True)
    records = [r for r in layout if r[1]]
    assert len(records) == len(queued)
    buf = bytearray(image)
    head, = struct.unpack_from("<Q", image, OFF_HEAD)
    marker_at = [i for i, (_, size) in enumerate(layout) if size == 0]
    for idx, field_off, fmt, value in record_scribbles:
        if idx == "before_marker":
            if not marker_at or marker_at[0] == 0:
                continue
            idx = marker_at[0] - 1
        if not layout:
            break
        pos = layout[idx % len(layout)][0]
        at = HEADER_SIZE + pos + field_off
        _, nsegs, _ = struct.unpack_from("<IHH", buf, HEADER_SIZE + pos)
        to_end = FUZZ_CAP - pos
        to_head = (head - pos) % FUZZ_CAP or FUZZ_CAP
        if fmt.startswith("resize"):
            total, nsegs, _ = struct.unpack_from("<IHH", buf, HEADER_SIZE + pos)
            if nsegs == 0 or nsegs > 3:
                continue
            room = {"resize_to_end": to_end, "resize_to_head": to_head}.get(fmt)
            new_total = total + value if room is None else room - 8 - 4 * nsegs + value
            last_at = HEADER_SIZE + pos + 8 + 4 * (nsegs - 1)
            last, = struct.unpack_from("<I", buf, last_at)
            new_last = last + (new_total - total)
            if not (0 <= new_total < 2**32 and 0 <= new_last < 2**32):
                continue
            struct.pack_into("<I", buf, HEADER_SIZE + pos, new_total)
            struct.pack_into("<I", buf, last_at, new_last)
            continue
        if fmt == "raw":
            data = value
        elif fmt in ("to_end", "to_head"):
            room = to_end if fmt == "to_end" else to_head
            data = struct.pack("<I", max(0, room - 8 - 4 * nsegs + value) % (1 << 32))
        elif fmt in ("nsegs_to_end", "nsegs_to_head"):
            room = to_end if fmt == "nsegs_to_end" else to_head
            data = struct.pack("<H", max(0, (room - 8) // 4 + value) & 0xFFFF)
        else:
            data = struct.pack(fmt, value)
        buf[at:at + len(data)] = data
    for off, (how, value) in header_scribbles:
        if how == "add":
            old, = struct.unpack_from("<Q", buf, off)
            struct.pack_into("<Q", buf, off, (old + value) % (1 << 64))
        else:
            buf[off:off + len(value)] = value
    del buf[len(image):]  # a scribble near the end must not grow the image
    for batch in (0, 3):
        out = fuzz_worker.run(bytes(buf), len(queued) + 2, batch)
        hypothesis.event(f"outcome: {out[-1][0]}")
        _check_fuzz_outcome(out, buf, image, layout, records, queued, close)
    hypothesis.event(f"layout wraps: {len(layout) > len(records)}")


def _check_fuzz_outcome(out: list, buf: bytearray, image: bytes, layout: list, records: list,
                        queued: list, close: bool) -> None:
    # Structure: some data elements, then at most one terminal outcome.
    for item in out[:-1]:
        assert item[0] == "DATA"
    assert out[-1][0] in ("DATA", "EBADMSG", "EOF", "EMPTY", "ATTACH_EBADMSG")
    got = [item[1] for item in out if item[0] == "DATA"]
    for e in got:
        assert sum(map(len, e)) <= FUZZ_CAP // 2 and len(e) <= MAX_SEGMENTS

    # Exactness: if the ring header is intact, every record before the first
    # modified byte comes out unchanged and in order.
    if bytes(buf[:HEADER_SIZE]) == image[:HEADER_SIZE]:
        first_bad = len(records)
        seen = 0  # data records before the first modified record or marker
        for pos, size in layout:
            a = HEADER_SIZE + pos
            n = size or 8  # only a marker's header means anything
            if buf[a:a + n] != image[a:a + n]:
                first_bad = seen
                break
            seen += bool(size)
        assert got[:first_bad] == queued[:first_bad]
        if first_bad == len(records):
            assert got == queued
            assert out[-1][0] == ("EOF" if close else "EMPTY")


NATIVE_FUZZ_C = r"""
/* ring.c driven directly: random pushes, pops, reservations and waits mixed
 * with random writes over the header, the indices and the records.  The ring
 * sits between two PROT_NONE guard pages and the program runs under ASan and
 * UBSan, so any access outside the mapping or the private handle aborts. */
#include RING_C
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static uint64_t s;
static uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
static uint64_t interesting(uint64_t cap)
{
    const uint64_t v[] = {0, 1, 7, 8, 0xffffffffULL, 0x7fffffffULL, 0x80000000ULL, ~0ULL, cap,
                          cap / 2, cap - 8, cap + 8, 0xffff, 0x10000, 0x8000000000000000ULL};
    return v[rnd() % (sizeof v / sizeof v[0])] + (rnd() % 3) - 1;
}

int main(int argc, char **argv)
{
    long iters = atol(argv[1]);
    uint64_t cap = strtoull(argv[2], 0, 0);
    s = strtoull(argv[3], 0, 0) | 1;
    size_t len = RING_HDR_SIZE + cap, page = 4096;
    uint8_t *base = mmap(0, len + 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert(base != MAP_FAILED);
    mprotect(base, page, PROT_NONE);
    mprotect(base + page + len, page, PROT_NONE);
    uint8_t *mem = base + page;
    ring_t *p = malloc(sizeof *p), *c = malloc(sizeof *c);
    static uint8_t buf[1 << 17];
    long pushed = 0, popped = 0, bad = 0;
    for (long i = 0; i < iters; i++) {
        if (i % 300 == 0) {
            assert(ring_init(p, mem, len) == 0);
            assert(ring_attach(c, mem, len) == 0);
        }
        int op = rnd() % 16;
        if (op >= 11 && rnd() % 8)
            op = rnd() % 11;
        if (op < 5) {
            uint32_t n = rnd() % 4, lens[4];
            const void *segs[4];
            for (uint32_t k = 0; k < n; k++) {
                lens[k] = rnd() % (rnd() % 8 == 0 ? (1 << 17) : 900);
                segs[k] = buf;
            }
            int rc = ring_push(p, segs, lens, n);
            pushed += rc == 0;
            bad += rc == -EBADMSG;
        } else if (op < 9) {
            uint64_t off; uint32_t tot, ns;
            int rc = ring_peek(c, &off, &tot, &ns);
            if (rc == 0) {
                assert(off + tot <= cap && ns <= RING_MAX_SEGS);
                uint64_t sum = 0;
                for (uint32_t k = 0; k < ns; k++) sum += c->peek_lens[k];
                assert(sum == tot);
                volatile uint8_t x = 0;
                for (uint64_t k = 0; k < tot; k++) x ^= c->data[off + k];
                if (rnd() % 2) { ring_release(c); popped++; }
            }
            bad += rc == -EBADMSG;
        } else if (op == 9) {
            int64_t o = ring_reserve(p, rnd() % 3000, rnd() % 5);
            if (o >= 0) {
                assert((uint64_t)o + p->resv_len <= cap);
                memset(p->data + o, 0x5a, p->resv_len);
                uint32_t l[5] = {p->resv_len};
                if (p->resv_nsegs) ring_commit(p, l, p->resv_nsegs);
            }
        } else if (op == 10 && rnd() % 2) {
            static uint64_t d[RING_MAX_SEGS + 2 + 64];
            int words = ring_peek_many(c, d, sizeof d / sizeof d[0], 1 + rnd() % 8);
            for (int i = 0; i < words;) {
                uint64_t v = d[i++], off = v & 0x7fffffff, tot = (v >> 31) & 0x7fffffff;
                assert(off + tot <= cap);
                if (v >> 62) {
                    uint64_t n = d[i++], sum = 0;
                    assert(n <= RING_MAX_SEGS && i + n <= (uint64_t)words);
                    for (uint64_t k = 0; k < n; k++) sum += d[i + k];
                    assert(sum == tot);
                    i += n;
                }
                volatile uint8_t x = 0;
                for (uint64_t k = 0; k < tot; k++) x ^= c->data[off + k];
            }
            if (words > 0 && rnd() % 2) { ring_release(c); popped++; }
        } else if (op == 10) {
            ring_wait_readable(c, 0, 0);
            ring_wait_writable(p, rnd() % 5000, rnd() % 3, 0, 0);
            ring_used(c);
            int64_t v = ring_peek_packed(c);
            assert(v < 0 || (uint64_t)(v & 0x7fffffff) <= cap);
        } else {
            uint64_t val = rnd() % 2 ? interesting(cap) : rnd();
            size_t w = (size_t)1 << (rnd() % 4), at;
            switch (rnd() % 4) {
            case 0: at = rnd() % 2 ? RING_OFF_HEAD : RING_OFF_TAIL; break;
            case 1: at = rnd() % 400; break;
            case 2: at = RING_HDR_SIZE + ((LOAD_RLX(&c->sh->tail) & (cap - 1)) + rnd() % 24) % cap; break;
            default: at = RING_HDR_SIZE + rnd() % cap;
            }
            if (at + w > len) at = len - w;
            memcpy(mem + at, &val, w);
        }
    }
    free(p);
    free(c);
    printf("%ld pushed %ld popped %ld EBADMSG\n", pushed, popped, bad);
    return 0;
}
"""


@pytest.mark.parametrize("capacity", [8192, 1 << 16])
def test_native_fuzz_under_sanitizers(tmp_path: Path, capacity: int) -> None:
    """ring.c itself, fuzzed in C under AddressSanitizer and UBSan with guard
    pages around the mapping (complements the Python-level fuzzer)."""
    src = tmp_path / "ring_fuzz.c"
    exe = tmp_path / "ring_fuzz"
    src.write_text(NATIVE_FUZZ_C)
    ring_c = ROOT / "libos" / "shm" / "ring.c"
    cmd = ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           f'-DRING_C="{ring_c}"', "-o", str(exe), str(src)]
    try:
        build = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("gcc not available")
    if build.returncode != 0:
        if "sanitize" in build.stderr or "asan" in build.stderr:
            pytest.skip("compiler has no sanitizer runtime")
        raise AssertionError(build.stderr)
    for seed in (1, 2, 3):
        run = subprocess.run([str(exe), "1500000", str(capacity), str(seed)], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        pushed, popped, bad = map(int, run.stdout.split()[::2])
        assert pushed > 10_000 and popped > 10_000 and bad > 10_000, run.stdout


def test_reader_survives_concurrent_scribbling() -> None:
    """A hostile process scribbles over the header and the data area while this
    process pushes and pops: every call returns or raises RingCorruptedError /
    BrokenPipeError / EOFError, and nothing crashes (the test runs the reader
    in a child so a crash is reported, not fatal)."""
    ring, fd = Ring.create(8192)

    def scribbler() -> int:
        mm = map_fd(fd)
        rng = random.Random(99)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            if rng.random() < 0.5:
                off = rng.choice([OFF_HEAD, OFF_TAIL, OFF_HEAD + 4, OFF_TAIL + 4, rng.randrange(0, 400)])
            else:
                off = HEADER_SIZE + rng.randrange(0, 8192 - 8) & ~7
            mm[off:off + 4] = rng.randbytes(4)
        mm.close()
        return 0

    def reader() -> int:
        rng = random.Random(5)
        r = ring  # attached before the scribbling starts
        end = time.monotonic() + 1.5
        calls = 0
        while time.monotonic() < end:
            try:
                r.push([rng.randbytes(rng.randrange(0, 600)), b"x"])
                views = r.try_pop()
                if views is not None:
                    assert sum(len(v) for v in views) <= 8192 // 2
                    r.release()
                r.wait_readable(0)
                r.wait_writable(0, 100)
            except (RingCorruptedError, BrokenPipeError, EOFError):
                pass
            calls += 1
        return 0 if calls > 100 else 2

    spid = _fork_child(scribbler)
    rpid = _fork_child(reader)
    rc_reader = _wait_child(rpid, 30)
    rc_scribbler = _wait_child(spid, 30)
    assert rc_reader == 0, f"reader exit status {rc_reader} (negative: killed by that signal)"
    assert rc_scribbler == 0
    os.close(fd)
    ring.close()
