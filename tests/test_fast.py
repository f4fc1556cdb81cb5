"""The C data path (queueapi/_fast.c): Op, and the shm lanes that push and pop without the
Python layers. The behaviour must be exactly the Python path's; these tests mix the two."""
from __future__ import annotations

import gc
import hashlib
import random
import socket
import threading

import pytest

import queueapi as dq
from queueapi import Opcode
from queueapi._fast import Op


def test_op_has_the_python_attributes() -> None:
    op = Op(7, 3)
    assert (op.qt, op.qd, op.result, op.waiter, op.callback, op.lane, op.counted) == \
        (7, 3, None, None, None, None, 0)
    cb = lambda o: None  # noqa: E731
    op2 = Op(8, 3, cb)
    assert op2.callback is cb
    op.result = "r"
    assert op.result == "r" and "done=yes" in repr(op)
    with pytest.raises(TypeError):
        Op(1)
    with pytest.raises(AttributeError):
        op.other = 1  # no __dict__: a typo is an error


def test_op_cycles_are_collected() -> None:
    freed = []

    class Callback:
        def __call__(self, op: Op) -> None:
            pass

        def __del__(self) -> None:
            freed.append(True)

    op = Op(1, 1, Callback())
    op.callback.op = op  # op -> callback -> op
    del op
    gc.collect()
    assert freed == [True]


@pytest.fixture
def shm_pair():
    los = dq.LibOS("shm")
    lqd = los.socket()
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd, 8)
    port = los.getsockname(lqd)[1]
    at = los.accept(lqd)
    c = los.socket()
    r = los.wait(los.connect(c, ("127.0.0.1", port)), timeout=5)
    assert r.opcode == Opcode.CONNECT
    s = los.wait(at, timeout=5).new_qd
    assert los.stats(c)["path"] == "shm"
    yield los, c, s
    los.shutdown_libos()


def test_lane_push_pop_counts_and_is_used(shm_pair) -> None:
    los, c, s = shm_pair
    for i in range(100):
        assert los.wait(los.push(c, b"m%d" % i)).opcode == Opcode.PUSH
    got = [los.wait(los.pop(s)).sga.tobytes() for _ in range(100)]
    assert got == [b"m%d" % i for i in range(100)]
    sc, ss = los.stats(c), los.stats(s)
    assert sc["fast_pushes"] == 100 and ss["fast_pops"] == 100  # the C lane did the work
    assert sc["pushes"] == 100 and ss["pops"] == 100
    assert sc["bytes_out"] == ss["bytes_in"] == sum(len(b"m%d" % i) for i in range(100))


def test_pending_pops_complete_in_order_across_lane_and_python(shm_pair) -> None:
    los, c, s = shm_pair
    qts = [los.pop(s) for _ in range(5)]  # pend in the lane
    assert los.stats(s)["fast_pops"] == 0
    los.wait(los.push(c, [b"two", b"segs"]))  # multi-segment: the Python path takes over
    for i in range(4):
        los.wait(los.push(c, b"e%d" % i))
    results = [los.wait(qt, timeout=5) for qt in qts]
    assert results[0].sga.tobytes() == b"twosegs" and len(results[0].sga.segments) == 2
    assert [r.sga.tobytes() for r in results[1:]] == [b"e%d" % i for i in range(4)]
    # afterwards the lane works again
    los.wait(los.push(c, b"again"))
    assert los.wait(los.pop(s)).sga.tobytes() == b"again"


def test_small_pop_splits_then_lane_resumes(shm_pair) -> None:
    los, c, s = shm_pair
    los.wait(los.push(c, b"abcdefgh"))
    los.wait(los.push(c, b"next"))
    assert los.wait(los.pop(s, 3)).sga.tobytes() == b"abc"
    assert los.wait(los.pop(s, 3)).sga.tobytes() == b"def"
    assert los.wait(los.pop(s)).sga.tobytes() == b"gh"
    assert los.wait(los.pop(s)).sga.tobytes() == b"next"


def test_wait_next_n_and_wait_any_see_lane_completions_in_order(shm_pair) -> None:
    los, c, s = shm_pair
    p1 = los.pop(s)
    p2 = los.pop(s)
    t1 = los.push(c, b"one")
    t2 = los.push(c, b"two")
    out = []
    while len(out) < 4:
        out += los.wait_next_n(4, timeout=5)
    by_qt = {r.qt: r for r in out}
    assert set(by_qt) == {p1, p2, t1, t2}
    assert by_qt[p1].sga.tobytes() == b"one" and by_qt[p2].sga.tobytes() == b"two"
    p3 = los.pop(s)
    los.push(c, b"three")
    i, r = los.wait_any([p3], timeout=5)
    assert i == 0 and r.sga.tobytes() == b"three"


def test_close_cancels_lane_pending_pops(shm_pair) -> None:
    los, c, s = shm_pair
    qts = [los.pop(s) for _ in range(3)]
    los.close(s)
    for qt in qts:
        r = los.wait(qt, timeout=5)
        assert r.opcode == Opcode.FAILED and r.ret == 125  # ECANCELED
    assert s not in los._lanes


def test_peer_close_gives_data_then_eof(shm_pair) -> None:
    los, c, s = shm_pair
    qt = los.pop(s)
    los.wait(los.push(c, b"last"))
    los.close(c)
    assert los.wait(qt, timeout=5).sga.tobytes() == b"last"
    r = los.wait(los.pop(s), timeout=5)
    assert r.opcode == Opcode.POP and len(r.sga) == 0


def test_filter_over_a_lane_qd_goes_through_the_filter(shm_pair) -> None:
    los, c, s = shm_pair
    f = los.filter(s, lambda sga: sga.tobytes().startswith(b"k"))
    for m in (b"drop", b"keep1", b"x", b"keep2"):
        los.wait(los.push(c, m))
    assert los.wait(los.pop(f), timeout=5).sga.tobytes() == b"keep1"
    assert los.wait(los.pop(f), timeout=5).sga.tobytes() == b"keep2"


def test_threads_push_and_pop_through_lanes_without_loss() -> None:
    """Two threads pop one connection while two push on the other side: every element
    arrives once, whichever path (C lane or Python) each op took."""
    los = dq.LibOS("shm")
    try:
        lqd = los.socket()
        los.bind(lqd, ("127.0.0.1", 0))
        los.listen(lqd, 8)
        at = los.accept(lqd)
        c = los.socket()
        los.wait(los.connect(c, ("127.0.0.1", los.getsockname(lqd)[1])), timeout=5)
        s = los.wait(at, timeout=5).new_qd
        n = 4000
        got: list[bytes] = []
        lock = threading.Lock()

        def pusher(tag: int) -> None:
            for i in range(n):
                los.wait(los.push(c, b"%d:%d" % (tag, i)), timeout=10)

        def popper() -> None:
            while True:
                r = los.wait(los.pop(s), timeout=10)
                data = r.sga.tobytes()
                if data == b"stop":
                    return
                with lock:
                    got.append(data)

        threads = [threading.Thread(target=pusher, args=(t,)) for t in range(2)]
        threads += [threading.Thread(target=popper) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads[:2]:
            t.join(60)
        los.wait(los.push(c, b"stop"))
        los.wait(los.push(c, b"stop"))
        for t in threads[2:]:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert sorted(got) == sorted(b"%d:%d" % (t, i) for t in range(2) for i in range(n))
    finally:
        los.shutdown_libos()


def test_random_mix_of_fast_and_slow_ops_keeps_order(shm_pair) -> None:
    """A seeded random mix of pops (sizes, pending or not) and pushes (bytes, lists, SGArray,
    memoryview) carries a byte stream exactly."""
    los, c, s = shm_pair
    rng = random.Random(5)
    sent = bytearray()
    got = bytearray()
    pending: list[int] = []
    for _ in range(3000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randint(1, 300))
            kind = rng.randrange(4)
            arg = data if kind == 0 else [data[:1], data[1:]] if kind == 1 and len(data) > 1 \
                else memoryview(data) if kind == 2 else dq.SGArray.from_bytes(data)
            los.wait(los.push(c, arg))
            sent += data
        else:
            pending.append(los.pop(s, rng.choice([None, 1, 7, 100, 1000])))
        while pending and rng.random() < 0.5 and len(got) < len(sent):
            got += los.wait(pending.pop(0), timeout=5).sga.tobytes()
    while len(got) < len(sent):
        qt = pending.pop(0) if pending else los.pop(s)
        got += los.wait(qt, timeout=5).sga.tobytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()


def test_results_and_sgas_are_reused_safely(shm_pair) -> None:
    """QResult and SGArray objects are kept for reuse when they die (queueapi/_fast.c): the
    types' reference counts stay put, subclasses and weakly referenced sgas are freed the
    ordinary way (their weakref callbacks run), and cycles through results are collected."""
    import sys
    import weakref
    from queueapi.types import QResult, SGArray
    los, c, s = shm_pair

    def rounds(n):
        for i in range(n):
            los.wait(los.push(c, b"r%d" % i))
            assert los.wait(los.pop(s)).sga.tobytes() == b"r%d" % i

    rounds(600)  # fill the reuse lists
    gc.collect()
    before = sys.getrefcount(QResult), sys.getrefcount(SGArray)
    rounds(2000)
    gc.collect()
    assert (sys.getrefcount(QResult), sys.getrefcount(SGArray)) == before

    class MyResult(QResult):
        __slots__ = ()

    class MySGA(SGArray):
        __slots__ = ("extra",)

    gc.collect()
    before = sys.getrefcount(QResult), sys.getrefcount(SGArray)  # (the subclasses refer to them)
    sub_before = sys.getrefcount(MyResult), sys.getrefcount(MySGA)
    for _ in range(300):
        r = MyResult(Opcode.POP, 1, 2)
        m = MySGA([b"x"])
        m.extra = [m]  # a cycle through the subclass slot
        del r, m
    gc.collect()
    assert (sys.getrefcount(QResult), sys.getrefcount(SGArray)) == before
    assert (sys.getrefcount(MyResult), sys.getrefcount(MySGA)) == sub_before

    called = []
    los.wait(los.push(c, b"watched"))
    sga = los.wait(los.pop(s)).sga
    ref = weakref.ref(sga, lambda _: called.append(1))
    del sga
    assert ref() is None and called == [1]

    class Holder:
        pass

    holder = Holder()
    r = QResult(Opcode.POP, 1, 2, 0, None, None, holder)
    holder.r = r  # result -> holder -> result
    wr = weakref.ref(holder)
    del r, holder
    gc.collect()
    assert wr() is None
    rounds(100)  # reused objects still carry the right data


def test_op_table_behaves_as_a_dict_of_tokens() -> None:
    """The token table (queueapi._fast.OpTable) against a dict, on random operations with
    keys that are tokens, and the errors a dict gives for the rest."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from queueapi._fast import OpTable

    keys = st.one_of(st.integers(0, 40), st.integers(0, 2**64 - 3),
                     st.sampled_from([2**30 - 1, 2**30, 2**31, 2**60, 2**64 - 3]))
    ops = st.lists(st.tuples(st.sampled_from(["set", "del", "pop", "get", "in"]), keys), max_size=300)

    @settings(max_examples=200, deadline=None)
    @given(ops)
    def check(seq):
        t, d = OpTable(), {}
        for what, k in seq:
            if what == "set":
                v = object()
                t[k] = v
                d[k] = v
            elif what == "del":
                if k in d:
                    del t[k]
                    del d[k]
                else:
                    with pytest.raises(KeyError):
                        del t[k]
            elif what == "pop":
                assert t.pop(k, None) is d.pop(k, None)
            elif what == "get":
                assert t.get(k) is d.get(k)
            else:
                assert (k in t) == (k in d)
            assert len(t) == len(d)
        assert sorted(t.keys()) == sorted(d)
        for k, v in d.items():
            assert t[k] is v

    check()
    t = OpTable()
    for bad in (-1, 1.5, "1", None, 2**64 - 2, 2**64 - 1, 2**70):
        assert t.get(bad) is None and bad not in t and t.pop(bad, 7) == 7
        with pytest.raises(KeyError):
            t[bad]
        with pytest.raises(TypeError):
            t[bad] = 1
    for i in range(1, 5001):  # a burst, then empty again: the table shrinks back
        t[i] = i
    for i in range(1, 5001):
        assert t.pop(i) == i
    assert len(t) == 0 and t.keys() == []
    import weakref

    class Holder:
        pass

    h = Holder()
    t[3] = h
    h.table = t  # a cycle through the table is collected
    wr = weakref.ref(h)
    del t, h
    gc.collect()
    assert wr() is None


# ---------------------------------------------------------------- posix: SockLane
@pytest.fixture
def posix_pair():
    los = dq.LibOS("posix")
    lqd = los.socket()
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd, 8)
    at = los.accept(lqd)
    c = los.socket()
    assert los.wait(los.connect(c, los.getsockname(lqd)), timeout=5).opcode == Opcode.CONNECT
    s = los.wait(at, timeout=5).new_qd
    yield los, c, s
    los.shutdown_libos()


def test_socklane_reads_small_and_large_elements_exactly(posix_pair) -> None:
    """The SockLane reads small messages through a scratch buffer and large ones in place,
    switching on the sizes it sees: bursts of both kinds, pending and immediate pops, arrive
    byte for byte."""
    los, c, s = posix_pair
    rng = random.Random(11)
    for burst in range(6):
        big = burst % 2 == 1
        sent = bytearray()
        got = bytearray()
        for _ in range(20):
            data = rng.randbytes(rng.randint(20000, 200000) if big else rng.randint(1, 200))
            pending = los.pop(s, rng.choice([None, 50, 70000])) if rng.random() < 0.3 else None
            los.wait(los.push(c, data), timeout=5)
            sent += data
            if pending is not None:
                got += los.wait(pending, timeout=5).sga.tobytes()
            while len(got) < len(sent):
                got += los.wait(los.pop(s, rng.choice([None, 100, 65536, 1 << 20])),
                                timeout=5).sga.tobytes()
        assert got == sent, f"burst {burst}: {len(got)} bytes received of {len(sent)}"
    assert los.stats(s)["bytes_in"] == los.stats(c)["bytes_out"]


def test_socklane_is_used_and_counts(posix_pair) -> None:
    los, c, s = posix_pair
    assert type(los._lanes[c]).__name__ == "SockLane" and s in los._lanes
    for i in range(50):
        los.wait(los.push(c, b"x%d" % i))
    got = b""
    while len(got) < sum(len(b"x%d" % i) for i in range(50)):
        got += los.wait(los.pop(s), timeout=5).sga.tobytes()
    assert got == b"".join(b"x%d" % i for i in range(50))
    sc, ss = los.stats(c), los.stats(s)
    assert sc["pushes"] == 50 and sc["bytes_out"] == len(got) and ss["bytes_in"] == len(got)
    assert los._lanes[c].pushes == 50  # the C lane sent them
    assert sc["syscalls"] >= 50


def test_socklane_partial_send_is_finished_in_order(posix_pair) -> None:
    los, c, s = posix_pair
    big = random.Random(1).randbytes(8 << 20)  # more than the socket buffers hold
    t1 = los.push(c, big)
    t2 = los.push(c, b"after")
    got = bytearray()
    while len(got) < len(big) + 5:
        got += los.wait(los.pop(s, 1 << 20), timeout=10).sga.tobytes()
    assert bytes(got) == big + b"after"
    assert los.wait(t1, timeout=5).opcode == Opcode.PUSH
    assert los.wait(t2, timeout=5).opcode == Opcode.PUSH


def test_socklane_eof_and_reset(posix_pair) -> None:
    los, c, s = posix_pair
    los.wait(los.push(c, b"bye"))
    los.shutdown(c, socket.SHUT_WR)
    with pytest.raises(OSError):
        los.push(c, b"more")  # EPIPE after shutdown, lane or not
    assert los.wait(los.pop(s), timeout=5).sga.tobytes() == b"bye"
    r = los.wait(los.pop(s), timeout=5)
    assert r.opcode == Opcode.POP and len(r.sga) == 0
    r = los.wait(los.pop(s), timeout=5)  # end of stream stays
    assert r.opcode == Opcode.POP and len(r.sga) == 0


def test_socklane_peer_reset_fails_pop(posix_pair) -> None:
    import struct
    los, c, s = posix_pair
    los.setsockopt(c, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    los.wait(los.push(s, b"unread"))  # c closes with unread data: RST
    import time
    time.sleep(0.05)
    los.close(c)
    time.sleep(0.05)
    r = los.wait(los.pop(s), timeout=5)
    assert r.opcode == Opcode.FAILED and r.ret == 104  # ECONNRESET
    los.close(s)
    assert s not in los._lanes


def test_posix_waits_poll_in_c_and_serve_many_connections(posix_pair) -> None:
    """wait_any over many connections, each answered by a pop served on its EPOLLIN edge in
    C: every request arrives once and in order, and the epoll_waits were made in C."""
    los, c, s = posix_pair
    lqd = los.socket()
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd, 64)
    clients = [socket.create_connection(los.getsockname(lqd)) for _ in range(40)]
    servers = []
    while len(servers) < len(clients):
        servers.append(los.wait(los.accept(lqd), timeout=5).new_qd)
    waits_before = los._fc.epoll_waits
    qts = [los.pop(q) for q in servers]
    got = {q: b"" for q in servers}
    for round_ in range(5):
        for i, k in enumerate(clients):
            k.sendall(b"%d.%d;" % (round_, i))
        left = len(servers)
        while left:
            i, r = los.wait_any(qts, timeout=5)
            assert r.opcode == Opcode.POP and len(r.sga)
            got[servers[i]] += r.sga.tobytes()
            qts[i] = los.pop(servers[i])
            if got[servers[i]].endswith(b"%d.%d;" % (round_, i)):
                left -= 1
    for i, q in enumerate(servers):
        assert got[q] == b"".join(b"%d.%d;" % (r, i) for r in range(5))
    assert los._fc.epoll_waits > waits_before
    assert los.stats(servers[0])["bytes_in"] == len(got[servers[0]])
    for k in clients:
        k.close()


def test_posix_wait_in_c_times_out_and_runs_signal_handlers(posix_pair) -> None:
    import signal
    import time
    los, c, s = posix_pair
    qt = los.pop(s)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        los.wait_any([qt], timeout=0.2)
    with pytest.raises(TimeoutError):
        los.wait(qt, 0.05)
    assert 0.2 <= time.monotonic() - t0 < 2
    with pytest.raises(TimeoutError):
        los.wait(qt, 0)  # polls once

    class Stop(Exception):
        pass

    def handler(signum, frame):
        raise Stop

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Stop):
            los.wait_any([qt])  # no timeout: only the handler ends it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    los.wait(los.push(c, b"still works"))
    assert los.wait(qt, timeout=5).sga.tobytes() == b"still works"


@pytest.mark.parametrize("spin_us", [0, 200, 1_000_000])
def test_posix_wait_spins_on_the_epoll_within_its_timeout(spin_us, tmp_path, monkeypatch) -> None:
    """A wait that finds nothing polls the epoll for ``spin_us`` ([posix] config) before it
    sleeps, yielding the CPU once ``spin_yield_us`` have passed; the spin ends at the wait's
    timeout, and data that arrives during the spin completes the wait at once."""
    import os
    import time
    cfg = tmp_path / "demi.toml"
    cfg.write_text(f"[posix]\nspin_us = {spin_us}\nspin_yield_us = 0\n")
    monkeypatch.setenv("DEMI_CONFIG", str(cfg))
    los = dq.LibOS("posix")
    try:
        assert los._fc.epoll_spin_ns == spin_us * 1000
        lqd = los.socket()
        los.bind(lqd, ("127.0.0.1", 0))
        los.listen(lqd, 8)
        at = los.accept(lqd)
        k = socket.create_connection(los.getsockname(lqd))
        s = los.wait(at, timeout=5).new_qd
        qt = los.pop(s)
        yields = los._fc.spin_yields
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            los.wait(qt, 0.01)
        assert 0.01 <= time.monotonic() - t0 < 0.5  # a 1 s spin stops at the 10 ms timeout
        assert (los._fc.spin_yields > yields) == (spin_us > 0)
        pid = os.fork()
        if pid == 0:  # the peer: sends while the parent waits
            time.sleep(0.02)
            k.sendall(b"during the spin")
            os._exit(0)
        try:
            t0 = time.monotonic()
            assert los.wait(qt, timeout=5).sga.tobytes() == b"during the spin"
            assert time.monotonic() - t0 < 0.5  # not at the end of a 1 s spin
        finally:
            os.waitpid(pid, 0)
        k.close()
    finally:
        los.shutdown_libos()


def test_posix_spin_config_is_checked(tmp_path, monkeypatch) -> None:
    cfg = tmp_path / "demi.toml"
    cfg.write_text("[posix]\nspin_us = -5\n")
    monkeypatch.setenv("DEMI_CONFIG", str(cfg))
    with pytest.raises(ValueError, match=r"\[posix\] spin_us must be >= 0, got -5"):
        dq.LibOS("posix")


def test_wait_any_memo_sees_consumed_and_forgotten_tokens(posix_pair) -> None:
    """The C wait_any remembers token -> op by position; a token consumed since, or one
    dropped by unwatch_fd, is looked up again and reported as unknown."""
    import os
    los, c, s = posix_pair
    a = los.pop(s)
    b = los.pop(c)
    los.wait(los.push(c, b"x"))
    lst = [a, b]
    assert los.wait_any(lst, timeout=5)[0] == 0
    with pytest.raises(OSError) as e:
        los.wait_any(lst, timeout=0)  # a was consumed by that wait_any
    assert e.value.errno == 22
    for consume in (lambda qt: los.wait(qt, timeout=5), lambda qt: los.wait_all([qt], timeout=5)):
        a = los.pop(s)
        lst = [a, b]
        with pytest.raises(TimeoutError):
            los.wait_any(lst, timeout=0)  # memoized, nothing complete
        los.wait(los.push(c, b"y"))
        assert consume(a)  # taken outside this list, by C (wait) or Python (wait_all)
        with pytest.raises(OSError) as e:
            los.wait_any(lst, timeout=0)
        assert e.value.errno == 22
    r, w = os.pipe()
    try:
        watch = los.watch_fd(r, 1)  # select.EPOLLIN
        lst = [watch, b]
        with pytest.raises(TimeoutError):
            los.wait_any(lst, timeout=0)
        assert los.unwatch_fd(watch) is None
        with pytest.raises(OSError) as e:
            los.wait_any(lst, timeout=0)
        assert e.value.errno == 22
    finally:
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------- shm zero-copy pops
@pytest.fixture
def zc_pair():
    los = dq.LibOS("shm", {"zero_copy_min": 1024})
    lqd = los.socket()
    los.bind(lqd, ("127.0.0.1", 0))
    los.listen(lqd, 8)
    at = los.accept(lqd)
    c = los.socket()
    los.wait(los.connect(c, los.getsockname(lqd)), timeout=5)
    s = los.wait(at, timeout=5).new_qd
    yield los, c, s
    los.shutdown_libos()


def test_zero_copy_pop_is_a_view_into_the_ring_until_freed(zc_pair) -> None:
    los, c, s = zc_pair
    big1, big2 = b"a" * 5000, b"b" * 5000
    los.wait(los.push(c, big1))
    los.wait(los.push(c, b"small"))
    los.wait(los.push(c, big2))
    r1 = los.wait(los.pop(s), timeout=5)
    seg = r1.sga.segments[0]
    assert isinstance(seg, memoryview) and seg.readonly and bytes(seg) == big1
    qt = los.pop(s)  # the next element waits for the free
    with pytest.raises(TimeoutError):
        los.wait(qt, timeout=0.05)
    r1.sga.free()
    assert los.wait(qt, timeout=5).sga.tobytes() == b"small"  # small: copied
    r3 = los.wait(los.pop(s), timeout=5)
    assert r3.sga.tobytes() == big2
    del r3  # dropped without free(): released all the same
    los.wait(los.push(c, b"after"))
    assert los.wait(los.pop(s), timeout=5).sga.tobytes() == b"after"


def test_zero_copy_bulk_carries_data_exactly(zc_pair) -> None:
    los, c, s = zc_pair
    rng = random.Random(9)
    blobs = [rng.randbytes(rng.randint(1, 70000)) for _ in range(200)]

    def produce() -> None:
        for b in blobs:
            los.wait(los.push(c, b), timeout=10)

    t = threading.Thread(target=produce)
    t.start()
    h1, h2 = hashlib.sha256(), hashlib.sha256()
    for b in blobs:
        h1.update(b)
        r = los.wait(los.pop(s), timeout=10)
        h2.update(r.sga.tobytes())
        r.sga.free()
    t.join(10)
    assert h1.digest() == h2.digest()


def test_zero_copy_min_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="zero_copy_min"):
        dq.LibOS("shm", {"zero_copy_min": -1})


# ---------------------------------------------------------------- shm: sgaalloc in the ring
def test_sgaalloc_on_a_shm_qd_is_ring_memory_pushed_without_a_copy(shm_pair) -> None:
    los, c, s = shm_pair
    sga = los.sgaalloc(5, qd=c)
    view = sga.segments[0]
    assert not view.readonly and view.nbytes == 5
    view[:] = b"hello"
    with pytest.raises(OSError) as e:
        los.push(c, b"other")  # the ring's next element is the reserved space
    assert e.value.errno == 16  # EBUSY
    assert los.wait(los.push(c, sga)).opcode == Opcode.PUSH
    assert los.wait(los.pop(s), timeout=5).sga.tobytes() == b"hello"
    sga.free()  # after the push: nothing to give back
    los.wait(los.push(c, b"next"))
    assert los.wait(los.pop(s), timeout=5).sga.tobytes() == b"next"


def test_sgaalloc_on_a_shm_qd_freed_unpushed_gives_the_space_back(shm_pair) -> None:
    los, c, s = shm_pair
    sga = los.sgaalloc(1000, qd=c)
    sga.free()
    los.wait(los.push(c, b"after free"))
    assert los.wait(los.pop(s), timeout=5).sga.tobytes() == b"after free"
    a = los.sgaalloc(10, qd=c)
    b = los.sgaalloc(10, qd=c)  # one reservation at a time: the second is ordinary memory
    assert bytes(b.segments[0]) == bytes(10)
    a.segments[0][:] = b"0123456789"
    los.wait(los.push(c, a))
    assert los.wait(los.pop(s), timeout=5).sga.tobytes() == b"0123456789"


def test_sgaalloc_on_other_queues_is_ordinary_zeroed_memory() -> None:
    los = dq.LibOS("posix")
    try:
        q = los.queue()
        sga = los.sgaalloc(4, qd=q)
        assert bytes(sga.segments[0]) == bytes(4)
        with pytest.raises(OSError):
            los.sgaalloc(4, qd=9999)  # EBADF
    finally:
        los.shutdown_libos()


@pytest.mark.parametrize("pair", ["posix_pair", "shm_pair"])
def test_push_done_makes_no_token_when_complete_at_once(pair, request) -> None:
    """Core.push_done (the shim's send) returns None for a push that completed at once, counts
    it like any push, and gives a token once the push must wait (a full socket or ring)."""
    los, c, s = request.getfixturevalue(pair)
    pending_before = len(los._ops)
    assert los._fc.push_done(c, b"hello") is None
    assert len(los._ops) == pending_before  # no token, nothing to take
    assert los.wait(los.pop(s), timeout=5).sga.tobytes() == b"hello"
    assert los.stats(c)["pushes"] == 1 and los.stats(c)["bytes_out"] == 5
    chunk = b"z" * 65536
    sent = 0
    for _ in range(4096):  # fill the socket buffers or the ring (bounded)
        qt = los._fc.push_done(c, chunk)
        sent += len(chunk)
        if qt is not None:
            break
    else:
        pytest.fail("push_done never had to wait")
    got = 0
    while got < sent:
        with los.wait(los.pop(s, 1 << 20), timeout=5).sga as sga:
            got += len(sga)
    assert los.wait(qt, timeout=5).opcode == Opcode.PUSH
    assert got == sent


def _queue_script(los: dq.LibOS) -> list:
    """push/pop/wait on queues without a lane (a memory queue, a framed socket pair), with
    the errors they raise; returns what was seen, stats included."""
    seen: list = []

    def note(f):
        try:
            seen.append(f())
        except Exception as e:  # noqa: BLE001 - the error is what is compared
            seen.append((type(e).__name__, getattr(e, "errno", None)))

    q = los.queue()
    qts = [los.push(q, b"m%d" % i) for i in range(5)]
    note(lambda: [los.wait(t, 1).opcode for t in qts])
    note(lambda: [los.blocking_pop(q, timeout=1).tobytes() for _ in range(3)])
    pt = los.pop(q)
    note(lambda: los.wait(pt, 1).sga.tobytes())
    late = los.pop(q, 100)                      # pending until the push below
    los.push(q, b"late")
    note(lambda: los.wait(late, 1).sga.tobytes())
    note(lambda: los.pop(q, 0))                 # EINVAL
    note(lambda: los.pop(q, True))              # TypeError (a bool)
    note(lambda: los.push(q, b""))              # EINVAL
    note(lambda: los.push(123456, b"x"))        # EBADF
    note(lambda: los.pop(123456))
    note(lambda: los.push(q, bytearray(b"ba")) > 0)
    note(lambda: los.blocking_pop(q, timeout=1).tobytes())
    st = los.stats(q)
    note(lambda: (st["pushes"], st["pops"], st["bytes_out"], st["bytes_in"]))
    ls = los.socket(framing=True)
    los.bind(ls, ("127.0.0.1", 0))
    los.listen(ls)
    c = los.socket(framing=True)
    ct, at = los.connect(c, los.getsockname(ls)), los.accept(ls)
    s = los.wait_all([ct, at], timeout=5)[1].new_qd
    los.wait(los.push(c, b"framed"), 5)
    note(lambda: los.blocking_pop(s, timeout=5).tobytes())
    los.close(q)
    note(lambda: los.push(q, b"x"))             # EBADF after close
    return seen


@pytest.mark.parametrize("libos", ["posix", "shm"])
def test_queue_push_pop_in_c_match_the_python_methods(libos: str) -> None:
    """The C push/pop on queues without a lane (Core.queue_fast) give the results, errors and
    counters of LibOS.push/pop, and they are used (the Python methods are not called)."""
    import sys

    def run(los: dq.LibOS) -> tuple[list, int]:
        calls = [0]
        core_py = dq.LibOS._push_py.__code__.co_filename

        def prof(frame, event, arg):
            if event == "call" and frame.f_code.co_filename == core_py \
                    and frame.f_code.co_name in ("push", "pop"):
                calls[0] += 1

        sys.setprofile(prof)
        try:
            seen = _queue_script(los)
        finally:
            sys.setprofile(None)
        return seen, calls[0]

    fast = dq.LibOS(libos)
    slow = dq.LibOS(libos)
    try:
        assert fast._fc.queue_fast
        slow._fc.queue_fast = False
        got_fast, py_fast = run(fast)
        got_slow, py_slow = run(slow)
        assert got_fast == got_slow
        assert py_slow >= 12 and py_fast <= py_slow - 10, (py_fast, py_slow)
    finally:
        fast.shutdown_libos()
        slow.shutdown_libos()


def test_queue_fast_is_off_when_a_subclass_replaces_push() -> None:
    class Counting(dq.LibOS):
        pushes = 0

        def push(self, qd, data):  # type: ignore[override]
            Counting.pushes += 1
            return super().push(qd, data)

    los = Counting("posix")
    try:
        assert not los._fc.queue_fast
        q = los.queue()
        los.wait(los.push(q, b"x"), 1)
        assert Counting.pushes == 1
    finally:
        los.shutdown_libos()


def test_libos_methods_are_class_descriptors_calling_the_core() -> None:
    """LibOS.push, pop, wait... are method descriptors of the class, and a LibOS has no
    instance dict (its attributes are slots), so that CPython specialises ``los.push(...)``;
    they call the instance's own Core, and check what they are called on."""
    a, b = dq.LibOS("posix"), dq.LibOS("posix")
    try:
        assert not hasattr(a, "__dict__")
        for name in ("push", "pop", "wait", "wait_any", "wait_all", "complete"):
            assert type(dq.LibOS.__dict__[name]).__name__ == "CoreMethod"
            assert getattr(a, name) == getattr(a._fc, name)  # the attribute: the Core's method
            assert dq.LibOS.__dict__[name].__doc__ == getattr(dq.LibOS, f"_{name}_py").__doc__
        qa, qb = a.queue(), b.queue()
        assert dq.LibOS.wait(a, dq.LibOS.push(a, qa, b"on a"), 1).opcode == Opcode.PUSH
        assert a.wait(a.pop(qa), 1).sga.tobytes() == b"on a"
        with pytest.raises(OSError):  # b's token table does not know a's queue
            b.push(qa + 1000, b"x")
        with pytest.raises(TypeError):
            dq.LibOS.push(object(), qb, b"x")
        with pytest.raises(TypeError):
            dq.LibOS.push()
        with pytest.raises(TypeError):
            a.push(qa, data=b"x")
    finally:
        a.shutdown_libos()
        b.shutdown_libos()
