"""Property tests of the combinators of API.md: merge, filter (steering), sort, map, qconnect.

Each property runs over in-process memory queues and, where it makes sense, over a real
socket path: a ``framing=True`` TCP connection on 127.0.0.1 made with the LibOS itself (the
sending end is pushed by the test, the receiving end is the combinator's parent).

Every wait has a timeout, every loop is bounded. Hypothesis runs with ``deadline=None`` and a
few examples per property so the whole file stays within a few seconds.
"""
from __future__ import annotations

import contextlib
import errno
import socket
import struct
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queueapi import LibOS, Opcode, SGArray

T = 10.0  # seconds: the timeout of every single wait
TH = 3.0  # the same inside hypothesis examples: loopback and memory queues answer in
#           milliseconds, and a failing property is replayed many times while shrinking
_WAIT = [T]


def tmo() -> float:
    """The wait timeout in force (``TH`` inside a hypothesis example, else ``T``)."""
    return _WAIT[0]
SHORT = 0.2  # seconds: how long "nothing arrives" is checked
SHORT_H = 0.03  # the same inside hypothesis examples (many of them)

SETTINGS = settings(deadline=None, max_examples=25, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(SETTINGS, max_examples=12)

PATHS = ["memory", "tcp"]


# =============================================================================================
# Helpers
# =============================================================================================
@contextlib.contextmanager
def fresh_los(timeout: float = TH) -> Iterator[LibOS]:
    """A LibOS for one test or one hypothesis example (fixtures do not reset per example);
    waits made through the helpers use ``timeout`` meanwhile."""
    lib = LibOS("posix")
    _WAIT[0] = timeout
    try:
        yield lib
    finally:
        _WAIT[0] = T
        lib.shutdown_libos()


@pytest.fixture
def los() -> Iterator[LibOS]:
    with fresh_los(T) as lib:
        yield lib


def tcp_pair(los: LibOS, framing: bool = True) -> tuple[int, int]:
    """A connected TCP loopback pair made with the LibOS: ``(sender, receiver)`` qds."""
    lqd = los.socket(socket.AF_INET, socket.SOCK_STREAM, framing=framing)
    try:
        los.bind(lqd, ("127.0.0.1", 0))
        los.listen(lqd, 8)
        cqd = los.socket(socket.AF_INET, socket.SOCK_STREAM, framing=framing)
        # no Nagle delay: what the test pushed is at the receiver by the time it looks
        los.setsockopt(cqd, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        qa = los.accept(lqd)
        qc = los.connect(cqd, los.getsockname(lqd))
        ra, rc = los.wait_all([qa, qc], timeout=tmo())
    finally:
        los.close(lqd)
    assert ra.opcode == Opcode.ACCEPT, ra
    assert rc.opcode == Opcode.CONNECT, rc
    return cqd, ra.new_qd


class Source:
    """A parent queue plus how to feed it and how to end its stream.

    ``memory``: one memory queue; pushes go to it, the end is ``shutdown(qd)``.
    ``tcp``: a framed TCP pair; pushes go to the sending end, the parent is the receiving end,
    the end is closing the sender (the peer).
    """

    def __init__(self, los: LibOS, kind: str) -> None:
        self.los = los
        self.kind = kind
        if kind == "memory":
            self.qd = self.tx = los.queue()
        else:
            self.tx, self.qd = tcp_pair(los)
        self.ended = False

    def push(self, data: Any) -> None:
        r = self.los.wait(self.los.push(self.tx, data), timeout=tmo())
        assert r.opcode == Opcode.PUSH, r

    def push_all(self, items: list[Any]) -> None:
        if not items:
            return
        qts = [self.los.push(self.tx, d) for d in items]
        for r in self.los.wait_all(qts, timeout=tmo()):
            assert r.opcode == Opcode.PUSH, r

    def end(self) -> None:
        assert not self.ended
        self.ended = True
        if self.kind == "memory":
            self.los.shutdown(self.qd)
        else:
            self.los.close(self.tx)


def pop_data(los: LibOS, qd: int, timeout: float | None = None) -> bytes:
    r = los.wait(los.pop(qd), timeout=timeout or tmo())
    assert r.opcode == Opcode.POP, r
    assert len(r.sga) > 0, f"unexpected end of stream on qd {qd}"
    return r.sga.tobytes()


def pop_n(los: LibOS, qd: int, n: int, timeout: float | None = None) -> list[bytes]:
    return [pop_data(los, qd, timeout) for _ in range(n)]


def assert_eof(los: LibOS, qd: int, qt: int | None = None) -> None:
    r = los.wait(los.pop(qd) if qt is None else qt, timeout=tmo())
    assert r.opcode == Opcode.POP and len(r.sga) == 0, f"expected end of stream, got {r}"


def assert_pending(los: LibOS, qt: int, what: str, timeout: float = SHORT) -> None:
    with pytest.raises(TimeoutError):
        los.wait(qt, timeout=timeout)
        pytest.fail(f"{what} completed")


def let_libos_run(los: LibOS, seconds: float = 0.05) -> None:
    """Let the LibOS poll its devices for a while (a wait on a token that cannot complete)."""
    qd = los.queue()
    qt = los.pop(qd)
    with pytest.raises(TimeoutError):
        los.wait(qt, timeout=seconds)
    los.close(qd)
    r = los.wait(qt, timeout=tmo())
    assert r.opcode == Opcode.FAILED and r.ret == errno.ECANCELED


def tagged(tag: bytes, items: list[bytes]) -> list[bytes]:
    """Make elements unique and non-empty: tag + index + payload."""
    return [tag + struct.pack("!I", i) + p for i, p in enumerate(items)]


payloads = st.lists(st.binary(min_size=0, max_size=48), min_size=0, max_size=25)
small_payloads = st.lists(st.binary(min_size=0, max_size=32), min_size=0, max_size=15)


# =============================================================================================
# merge
# =============================================================================================
@pytest.mark.parametrize("kind", PATHS)
@SETTINGS
@given(a=payloads, b=payloads, data=st.data())
def test_merge_loses_and_duplicates_nothing(kind: str, a: list[bytes], b: list[bytes],
                                            data: st.DataObject) -> None:
    a_el, b_el = tagged(b"A", a), tagged(b"B", b)
    n = len(a_el) + len(b_el)
    # the schedule: pushes into either parent, pops issued on the merge, and waits/polls
    # on outstanding pops, interleaved at random
    actions = ["a"] * len(a_el) + ["b"] * len(b_el) + ["p"] * n \
        + ["w"] * data.draw(st.integers(0, n)) + ["0"] * data.draw(st.integers(0, 3))
    schedule = data.draw(st.permutations(actions))
    with fresh_los() as los:
        sa, sb = Source(los, kind), Source(los, kind)
        m = los.merge(sa.qd, sb.qd)
        ia = ib = 0
        tokens: list[int] = []  # pops in issue order
        results: dict[int, bytes] = {}
        for act in schedule:
            if act == "a":
                sa.push(a_el[ia])
                ia += 1
            elif act == "b":
                sb.push(b_el[ib])
                ib += 1
            elif act == "p":
                tokens.append(los.pop(m))
            elif act == "w":
                # wait on the oldest outstanding pop that enough pushes can satisfy
                pushed = ia + ib
                for k, qt in enumerate(tokens):
                    if qt not in results:
                        if k < pushed:
                            r = los.wait(qt, timeout=tmo())
                            assert r.opcode == Opcode.POP and len(r.sga) > 0, r
                            results[qt] = r.sga.tobytes()
                        break
            else:  # poll: take whatever is already complete
                pending = [qt for qt in tokens if qt not in results]
                if pending:
                    try:
                        i, r = los.wait_any(pending, timeout=0)
                    except TimeoutError:
                        continue
                    assert r.opcode == Opcode.POP and len(r.sga) > 0, r
                    results[pending[i]] = r.sga.tobytes()
        pending = [qt for qt in tokens if qt not in results]
        if pending:
            for qt, r in zip(pending, los.wait_all(pending, timeout=tmo())):
                assert r.opcode == Opcode.POP and len(r.sga) > 0, r
                results[qt] = r.sga.tobytes()
        out = [results[qt] for qt in tokens]
        # nothing lost, nothing duplicated
        assert sorted(out) == sorted(a_el + b_el)
        assert len(set(out)) == len(out)
        # each parent's order is kept
        assert [x for x in out if x[:1] == b"A"] == a_el
        assert [x for x in out if x[:1] == b"B"] == b_el
        # end of stream only once both parents have ended
        qt = los.pop(m)
        first, second = data.draw(st.sampled_from([(sa, sb), (sb, sa)]))
        first.end()
        assert_pending(los, qt, "a merge pop after only one parent ended", SHORT_H)
        second.end()
        assert_eof(los, m, qt)


@pytest.mark.parametrize("kind", PATHS)
def test_merge_is_fair_with_both_parents_full(los: LibOS, kind: str) -> None:
    sa, sb = Source(los, kind), Source(los, kind)
    sa.push_all(tagged(b"A", [b"x" * 16] * 250))
    sb.push_all(tagged(b"B", [b"y" * 16] * 250))
    if kind == "tcp":
        let_libos_run(los)
    m = los.merge(sa.qd, sb.qd)
    out = pop_n(los, m, 200)
    na = sum(1 for x in out if x[:1] == b"A")
    nb = sum(1 for x in out if x[:1] == b"B")
    assert na + nb == 200
    assert na >= 60 and nb >= 60, f"unfair merge: {na} from A, {nb} from B"
    # and each parent's order is kept
    assert [x for x in out if x[:1] == b"A"] == tagged(b"A", [b"x" * 16] * 250)[:na]
    assert [x for x in out if x[:1] == b"B"] == tagged(b"B", [b"y" * 16] * 250)[:nb]


def test_merge_push_goes_to_both_parents_memory(los: LibOS) -> None:
    a, b = los.queue(), los.queue()
    m = los.merge(a, b)
    r = los.wait(los.push(m, [b"hello ", b"world"]), timeout=tmo())
    assert r.opcode == Opcode.PUSH and r.qd == m
    for q in (a, b):
        r = los.wait(los.pop(q), timeout=tmo())
        assert [bytes(s) for s in r.sga.segments] == [b"hello ", b"world"]
    # and the merge itself then sees both copies
    r = los.wait(los.push(m, b"twice"), timeout=tmo())
    assert pop_n(los, m, 2) == [b"twice", b"twice"]


def test_merge_push_goes_to_both_parents_tcp(los: LibOS) -> None:
    tx1, rx1 = tcp_pair(los)
    tx2, rx2 = tcp_pair(los)
    m = los.merge(tx1, tx2)
    for i in range(5):
        r = los.wait(los.push(m, [b"el", struct.pack("!I", i)]), timeout=tmo())
        assert r.opcode == Opcode.PUSH, r
    for rx in (rx1, rx2):
        assert pop_n(los, rx, 5) == [b"el" + struct.pack("!I", i) for i in range(5)]


def test_merge_of_socket_and_memory_queue(los: LibOS) -> None:
    """The issue asks for it: one parent a framed TCP connection, the other a memory queue."""
    tx, rx = tcp_pair(los)
    mq = los.queue()
    m = los.merge(rx, mq)
    sock_el = tagged(b"S", [bytes([i]) * (i + 1) for i in range(40)])
    mem_el = tagged(b"M", [bytes([i]) * (i + 3) for i in range(40)])
    qts = [los.pop(m) for _ in range(20)]  # pops waiting before anything arrives
    for s, mm in zip(sock_el, mem_el):
        assert los.wait(los.push(tx, s), timeout=tmo()).opcode == Opcode.PUSH
        assert los.wait(los.push(mq, mm), timeout=tmo()).opcode == Opcode.PUSH
    out = [r.sga.tobytes() for r in los.wait_all(qts, timeout=tmo())]
    out += pop_n(los, m, 60)
    assert sorted(out) == sorted(sock_el + mem_el)
    assert [x for x in out if x[:1] == b"S"] == sock_el
    assert [x for x in out if x[:1] == b"M"] == mem_el
    qt = los.pop(m)
    los.close(tx)  # the socket's peer closes
    assert_pending(los, qt, "merge pop with the memory parent still open")
    los.shutdown(mq)
    assert_eof(los, m, qt)


def test_merge_end_only_after_both_memory(los: LibOS) -> None:
    a, b = los.queue(), los.queue()
    m = los.merge(a, b)
    los.push(a, b"a1")
    los.shutdown(a)
    assert pop_data(los, m) == b"a1"
    qt = los.pop(m)
    assert_pending(los, qt, "merge pop after one parent ended")
    los.push(b, b"b1")
    assert los.wait(qt, timeout=tmo()).sga.tobytes() == b"b1"
    los.shutdown(b)
    assert_eof(los, m)


# =============================================================================================
# filter
# =============================================================================================
def _even(sga: SGArray) -> bool:
    return sga.tobytes()[-1] % 2 == 0


@pytest.mark.parametrize("kind", PATHS)
@SETTINGS
@given(items=payloads, threshold=st.integers(0, 256), data=st.data())
def test_filter_partitions_in_order(kind: str, items: list[bytes], threshold: int,
                                    data: st.DataObject) -> None:
    # the last byte is the key; the predicate keeps keys below the threshold
    elems = [p + struct.pack("!HB", i, (i * 37 + len(p) * 11 + sum(p)) % 256)
             for i, p in enumerate(items)]

    def pred(sga: SGArray) -> bool:
        return sga.tobytes()[-1] < threshold

    matching = [e for e in elems if e[-1] < threshold]
    others = [e for e in elems if e[-1] >= threshold]
    actions = ["push"] * len(elems) + ["f"] * len(matching) + ["p"] * len(others) \
        + ["w"] * data.draw(st.integers(0, len(elems)))
    schedule = data.draw(st.permutations(actions))
    with fresh_los() as los:
        src = Source(los, kind)
        f = los.filter(src.qd, pred)
        pushed = 0
        f_tokens: list[int] = []
        p_tokens: list[int] = []
        got: dict[int, bytes] = {}
        for act in schedule:
            if act == "push":
                src.push(elems[pushed])
                pushed += 1
            elif act == "f":
                f_tokens.append(los.pop(f))
            elif act == "p":
                p_tokens.append(los.pop(src.qd))
            else:
                # wait on an outstanding pop (of either side) that the pushes can satisfy
                side = data.draw(st.sampled_from(["f", "p"]))
                toks, pool = (f_tokens, matching) if side == "f" else (p_tokens, others)
                avail = sum(1 for e in pool if elems.index(e) < pushed)
                for k, qt in enumerate(toks):
                    if qt not in got:
                        if k < avail:
                            r = los.wait(qt, timeout=tmo())
                            assert r.opcode == Opcode.POP and len(r.sga) > 0, r
                            got[qt] = r.sga.tobytes()
                        break
        rest = [qt for qt in f_tokens + p_tokens if qt not in got]
        if rest:
            for qt, r in zip(rest, los.wait_all(rest, timeout=tmo())):
                assert r.opcode == Opcode.POP and len(r.sga) > 0, r
                got[qt] = r.sga.tobytes()
        assert [got[qt] for qt in f_tokens] == matching
        assert [got[qt] for qt in p_tokens] == others
        # the end of the parent's stream reaches both sides
        qf, qp = los.pop(f), los.pop(src.qd)
        assert_pending(los, qf, "filter pop before end of stream", SHORT_H)
        src.end()
        assert_eof(los, f, qf)
        assert_eof(los, src.qd, qp)


@pytest.mark.parametrize("kind", PATHS)
@FEW
@given(items=small_payloads, data=st.data())
def test_two_filters_first_predicate_wins(kind: str, items: list[bytes],
                                          data: st.DataObject) -> None:
    elems = [p + bytes([(i * 7 + len(p)) % 6]) for i, p in enumerate(items)]

    def p1(sga: SGArray) -> bool:  # keys 0, 1, 2
        return sga.tobytes()[-1] < 3

    def p2(sga: SGArray) -> bool:  # keys 2, 3 (2 is taken by the first filter)
        return sga.tobytes()[-1] in (2, 3)

    e1 = [e for e in elems if e[-1] < 3]
    e2 = [e for e in elems if e[-1] == 3]
    ep = [e for e in elems if e[-1] >= 4]
    with fresh_los() as los:
        src = Source(los, kind)
        f1 = los.filter(src.qd, p1)
        f2 = los.filter(src.qd, p2)
        src.push_all(elems)
        order = data.draw(st.permutations(["1"] * len(e1) + ["2"] * len(e2) + ["p"] * len(ep)))
        toks: dict[str, list[int]] = {"1": [], "2": [], "p": []}
        qd_of = {"1": f1, "2": f2, "p": src.qd}
        for side in order:
            toks[side].append(los.pop(qd_of[side]))
        for side, expected in (("1", e1), ("2", e2), ("p", ep)):
            if expected:
                res = los.wait_all(toks[side], timeout=tmo())
                assert [r.sga.tobytes() for r in res] == expected, side
        src.end()
        for qd in (f1, f2, src.qd):
            assert_eof(los, qd)


def test_filter_push_failing_predicate_is_dropped(los: LibOS) -> None:
    parent = los.queue()
    f = los.filter(parent, _even)
    results = [los.wait(los.push(f, bytes([x])), timeout=tmo()) for x in (2, 3, 4, 5, 7, 8)]
    assert all(r.opcode == Opcode.PUSH and r.ret == 0 and r.qd == f for r in results), results
    assert los.stats(f)["dropped"] == 3
    # the ones that pass went to the parent and are steered back to the filter
    assert pop_n(los, f, 3) == [b"\x02", b"\x04", b"\x08"]
    qt = los.pop(parent)
    assert_pending(los, qt, "a parent pop (dropped elements must not reach the parent)")


def test_filter_push_failing_predicate_is_dropped_tcp(los: LibOS) -> None:
    tx, rx = tcp_pair(los)
    f = los.filter(tx, _even)  # a filter on the sending end: pushes pass through it
    for x in (1, 2, 3, 4):
        assert los.wait(los.push(f, [b"k", bytes([x])]), timeout=tmo()).opcode == Opcode.PUSH
    assert los.stats(f)["dropped"] == 2
    assert pop_n(los, rx, 2) == [b"k\x02", b"k\x04"]


def test_filter_over_framed_tcp_socket(los: LibOS) -> None:
    """The issue asks for it: a filter over a framed TCP connection, fed by the peer."""
    tx, rx = tcp_pair(los)
    f = los.filter(rx, lambda sga: sga.segments[0].tobytes() == b"odd")
    fq = [los.pop(f) for _ in range(3)]  # filter pops wait before anything arrives
    for i in range(10):
        r = los.wait(los.push(tx, [b"odd" if i % 2 else b"even", struct.pack("!I", i)]),
                     timeout=tmo())
        assert r.opcode == Opcode.PUSH
    res = los.wait_all(fq, timeout=tmo())
    assert [struct.unpack("!I", bytes(r.sga.segments[1]))[0] for r in res] == [1, 3, 5]
    assert [r.sga.segments[0].tobytes() for r in res] == [b"odd"] * 3
    evens = pop_n(los, rx, 5)
    assert evens == [b"even" + struct.pack("!I", i) for i in range(0, 10, 2)]
    assert pop_n(los, f, 2) == [b"odd" + struct.pack("!I", i) for i in (7, 9)]
    los.close(tx)
    assert_eof(los, f)
    assert_eof(los, rx)


def test_closing_filter_returns_unread_elements_to_parent(los: LibOS) -> None:
    parent = los.queue()
    f = los.filter(parent, _even)
    for x in (1, 2, 3, 4, 6, 5):
        los.push(parent, bytes([x]))
    # parent pops read ahead past the filter's elements: 2, 4, 6 wait on the filter side
    assert pop_n(los, parent, 2) == [b"\x01", b"\x03"]
    assert pop_data(los, f) == b"\x02"
    los.close(f)
    # unread 4 and 6 come back to the parent, in order, before 5
    assert pop_n(los, parent, 3) == [b"\x04", b"\x06", b"\x05"]
    los.push(parent, b"\x0a")
    assert pop_data(los, parent) == b"\x0a"  # no filter any more
    with pytest.raises(OSError) as e:
        los.pop(f)
    assert e.value.errno == errno.EBADF


def test_closing_filter_returned_elements_keep_stream_order(los: LibOS) -> None:
    """Elements given back by a closed filter rejoin the parent in the parent's stream order,
    not ahead of older elements the parent had not read yet."""
    parent = los.queue()
    fa = los.filter(parent, lambda s: s.tobytes().startswith(b"f"))
    fg = los.filter(parent, lambda s: s.tobytes().startswith(b"g"))
    for x in (b"a1", b"f1", b"a2", b"f2", b"g1"):
        los.push(parent, x)
    # a pop on the second filter reads a1, f1, a2, f2 ahead for the other sides
    assert pop_data(los, fg) == b"g1"
    los.close(fa)
    assert pop_n(los, parent, 4) == [b"a1", b"f1", b"a2", b"f2"]


def test_closing_filter_tcp_returns_unread(los: LibOS) -> None:
    tx, rx = tcp_pair(los)
    f = los.filter(rx, _even)
    for x in (1, 2, 4, 3):
        los.wait(los.push(tx, bytes([x])), timeout=tmo())
    assert pop_n(los, rx, 2) == [b"\x01", b"\x03"]  # reads 2 and 4 ahead for the filter
    los.close(f)
    assert pop_n(los, rx, 2) == [b"\x02", b"\x04"]
    los.close(tx)
    assert_eof(los, rx)


# =============================================================================================
# sort
# =============================================================================================
def _key(sga: SGArray) -> int:
    return struct.unpack_from("!h", sga.tobytes())[0]


def _elem(key: int, i: int) -> bytes:
    return struct.pack("!hI", key, i)


@pytest.mark.parametrize("kind", PATHS)
@SETTINGS
@given(keys=st.lists(st.integers(-5, 5) | st.integers(-30000, 30000), min_size=1, max_size=40))
def test_sort_orders_batch(kind: str, keys: list[int]) -> None:
    elems = [_elem(k, i) for i, k in enumerate(keys)]
    expected = [e for _, _, e in sorted((k, i, e) for i, (k, e) in enumerate(zip(keys, elems)))]
    with fresh_los() as los:
        src = Source(los, kind)
        s = los.sort(src.qd, _key)
        src.push_all(elems)
        if kind == "tcp":
            let_libos_run(los)  # everything has arrived: it is all "available"
        assert pop_n(los, s, len(elems)) == expected
        qt = los.pop(s)
        assert_pending(los, qt, "sort pop on an empty stream", SHORT_H)
        src.end()
        assert_eof(los, s, qt)


@pytest.mark.parametrize("kind", PATHS)
@FEW
@given(batches=st.lists(st.lists(st.integers(0, 20), min_size=1, max_size=6),
                        min_size=1, max_size=6),
       pops=st.lists(st.integers(0, 4), min_size=6, max_size=6))
def test_sort_streaming_pops_smallest_available(kind: str, batches: list[list[int]],
                                                 pops: list[int]) -> None:
    with fresh_los() as los:
        src = Source(los, kind)
        s = los.sort(src.qd, _key)
        avail: list[tuple[int, int]] = []  # (key, arrival) of what arrived and is unread
        seq = 0
        for batch, npop in zip(batches, pops):
            src.push_all([_elem(k, seq + j) for j, k in enumerate(batch)])
            avail += [(k, seq + j) for j, k in enumerate(batch)]
            seq += len(batch)
            if kind == "tcp":
                let_libos_run(los, 0.02)
            for _ in range(min(npop, len(avail))):
                got = pop_data(los, s)
                smallest = min(avail)
                assert got == _elem(*smallest), (got, avail)
                avail.remove(smallest)
        # drain the rest in order
        for k, i in sorted(avail):
            assert pop_data(los, s) == _elem(k, i)
        src.end()
        assert_eof(los, s)


def test_sort_waiting_pop_gets_first_arrival(los: LibOS) -> None:
    parent = los.queue()
    s = los.sort(parent, _key)
    qt = los.pop(s)
    los.push(parent, _elem(9, 0))
    assert los.wait(qt, timeout=tmo()).sga.tobytes() == _elem(9, 0)
    for k in (5, 1, 3):
        los.push(parent, _elem(k, k))
    assert pop_n(los, s, 3) == [_elem(1, 1), _elem(3, 3), _elem(5, 5)]


def test_sort_push_goes_to_parent(los: LibOS) -> None:
    parent = los.queue()
    s = los.sort(parent, _key)
    assert los.wait(los.push(s, _elem(3, 0)), timeout=tmo()).opcode == Opcode.PUSH
    assert los.wait(los.push(s, _elem(1, 1)), timeout=tmo()).opcode == Opcode.PUSH
    assert pop_n(los, s, 2) == [_elem(1, 1), _elem(3, 0)]


# =============================================================================================
# map
# =============================================================================================
def _mapfn(sga: SGArray) -> list[bytes]:
    """A multi-segment result: the reversed element and its length."""
    b = sga.tobytes()
    return [b[::-1] or b"?", struct.pack("!I", len(b))]


@pytest.mark.parametrize("kind", PATHS)
@SETTINGS
@given(items=st.lists(st.binary(min_size=1, max_size=64), max_size=25), early=st.integers(0, 25))
def test_map_pop_yields_fn_in_order(kind: str, items: list[bytes], early: int) -> None:
    with fresh_los() as los:
        src = Source(los, kind)
        mq = los.map(src.qd, _mapfn)
        early = min(early, len(items))
        qts = [los.pop(mq) for _ in range(early)]  # some pops wait before the data
        src.push_all(items)
        res = los.wait_all(qts, timeout=tmo()) if qts else []
        res += [los.wait(los.pop(mq), timeout=tmo()) for _ in range(len(items) - early)]
        assert all(r.opcode == Opcode.POP and r.qd == mq for r in res), res
        # every element mapped, in order, with the segments fn returned
        assert [[bytes(s) for s in r.sga.segments] for r in res] == \
            [_mapfn(SGArray.from_bytes(x)) for x in items]
        src.end()
        assert_eof(los, mq)


@pytest.mark.parametrize("kind", PATHS)
@FEW
@given(items=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=15))
def test_map_push_sends_fn_of_data(kind: str, items: list[bytes]) -> None:
    with fresh_los() as los:
        if kind == "memory":
            parent = rx = los.queue()
        else:
            parent, rx = tcp_pair(los)
        mq = los.map(parent, _mapfn)
        for x in items:
            r = los.wait(los.push(mq, x), timeout=tmo())
            assert r.opcode == Opcode.PUSH and r.qd == mq, r
        for x in items:
            r = los.wait(los.pop(rx), timeout=tmo())
            assert [bytes(s) for s in r.sga.segments] == _mapfn(SGArray.from_bytes(x))


@pytest.mark.parametrize("kind", PATHS)
def test_map_fn_raising_on_pop_fails_einval_and_keeps_working(los: LibOS, kind: str) -> None:
    def fn(sga: SGArray) -> bytes:
        b = sga.tobytes()
        if b.startswith(b"!"):
            raise ValueError("bad element")
        return b.upper()

    src = Source(los, kind)
    mq = los.map(src.qd, fn)
    src.push_all([b"a", b"!b", b"c", b"!d", b"!e", b"f"])
    results = [los.wait(los.pop(mq), timeout=tmo()) for _ in range(6)]
    kinds = [(r.opcode, r.ret) for r in results]
    assert kinds == [(Opcode.POP, 0), (Opcode.FAILED, errno.EINVAL), (Opcode.POP, 0),
                     (Opcode.FAILED, errno.EINVAL), (Opcode.FAILED, errno.EINVAL),
                     (Opcode.POP, 0)]
    assert [r.sga.tobytes() for r in results if r.opcode == Opcode.POP] == [b"A", b"C", b"F"]
    assert los.stats(mq)["errors"] == 3
    src.push(b"g")
    assert pop_data(los, mq) == b"G"
    src.end()
    assert_eof(los, mq)


# =============================================================================================
# qconnect
# =============================================================================================
@pytest.mark.parametrize("route", ["memory-memory", "tcp-memory", "memory-tcp"])
@FEW
@given(items=st.lists(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=3),
                      max_size=30),
       before=st.integers(0, 30))
def test_qconnect_forwards_everything_then_eof(route: str, items: list[list[bytes]],
                                              before: int) -> None:
    src_kind, dst_kind = route.split("-")
    with fresh_los() as los:
        src = Source(los, src_kind)
        if dst_kind == "memory":
            dst = out = los.queue()
        else:
            dst, out = tcp_pair(los)
        before = min(before, len(items))
        src.push_all(items[:before])  # some elements wait before the connection is made
        los.qconnect(src.qd, dst)
        src.push_all(items[before:])
        src.end()
        # the application only pops the far end; the LibOS does the forwarding
        for segs in items:
            r = los.wait(los.pop(out), timeout=tmo())
            assert r.opcode == Opcode.POP, r
            assert [bytes(s) for s in r.sga.segments] == segs
        assert_eof(los, out)


def test_qconnect_memory_to_memory_waiting_pops(los: LibOS) -> None:
    src, dst = los.queue(), los.queue()
    los.qconnect(src, dst)
    qts = [los.pop(dst) for _ in range(3)]
    for x in (b"1", b"2", b"3"):
        los.push(src, x)
    assert [r.sga.tobytes() for r in los.wait_all(qts, timeout=tmo())] == [b"1", b"2", b"3"]
    qt = los.pop(dst)
    assert_pending(los, qt, "pop on the qconnect destination before end of stream")
    los.shutdown(src)
    assert_eof(los, dst, qt)


def test_qconnect_large_volume_memory_to_tcp(los: LibOS) -> None:
    """More than a socket buffer's worth, so pushes into the socket have to pend."""
    src = los.queue()
    tx, rx = tcp_pair(los)
    los.qconnect(src, tx)
    blob = bytes(range(256)) * 64  # 16 KiB
    n = 200
    qts = [los.push(src, [struct.pack("!I", i), blob]) for i in range(n)]
    los.shutdown(src)
    for i in range(n):
        r = los.wait(los.pop(rx), timeout=tmo())
        assert r.opcode == Opcode.POP and [bytes(s) for s in r.sga.segments] == \
            [struct.pack("!I", i), blob], i
    assert_eof(los, rx)
    assert all(r.opcode == Opcode.PUSH for r in los.wait_all(qts, timeout=tmo()))


# =============================================================================================
# closing a combinator: its pending pops are cancelled and its parent keeps every element
# =============================================================================================
@pytest.mark.parametrize("which", ["merge", "filter", "sort", "map"])
def test_close_cancels_pending_pops_and_parent_keeps_elements(los: LibOS, which: str) -> None:
    parent, other = los.queue(), los.queue()
    if which == "merge":
        c = los.merge(parent, other)
    elif which == "filter":
        c = los.filter(parent, lambda s: True)
    elif which == "sort":
        c = los.sort(parent, _key)
    else:
        c = los.map(parent, lambda s: s.tobytes())
    qt = los.pop(c)
    assert_pending(los, qt, f"a pop on an empty {which}", 0.02)
    los.close(c)
    # memory queues complete synchronously: 2 s is plenty and keeps a failure quick
    r = los.wait(qt, timeout=2)  # API.md: pending tokens of a closed qd complete ECANCELED
    assert r.opcode == Opcode.FAILED and r.ret == errno.ECANCELED, r
    # nothing of the parent's stream is eaten by the closed combinator
    los.push(parent, _elem(1, 1))
    los.push(parent, _elem(2, 2))
    assert pop_n(los, parent, 2, timeout=2) == [_elem(1, 1), _elem(2, 2)]
    with pytest.raises(OSError) as e:
        los.pop(c)
    assert e.value.errno == errno.EBADF


def test_filter_predicate_raising_keeps_element_on_parent(los: LibOS) -> None:
    def pred(sga: SGArray) -> bool:
        if sga.tobytes() == b"boom":
            raise RuntimeError("predicate failed")
        return sga.tobytes().startswith(b"f")

    parent = los.queue()
    f = los.filter(parent, pred)
    for x in (b"f1", b"boom", b"a1", b"f2"):
        los.push(parent, x)
    assert pop_n(los, f, 2) == [b"f1", b"f2"]
    assert pop_n(los, parent, 2) == [b"boom", b"a1"]
    assert los.stats(f)["predicate_errors"] == 1


def test_sort_key_raising_sorts_last(los: LibOS) -> None:
    parent = los.queue()
    s = los.sort(parent, _key)
    for x in (_elem(5, 0), b"x", _elem(1, 1), _elem(3, 2)):  # b"x" is too short for the key
        los.push(parent, x)
    assert pop_n(los, s, 4) == [_elem(1, 1), _elem(3, 2), _elem(5, 0), b"x"]


def test_qconnect_into_small_memory_queue_backpressure(los: LibOS) -> None:
    src, dst = los.queue(), los.queue(capacity=64)
    los.qconnect(src, dst)
    items = [struct.pack("!I", i) * 4 for i in range(200)]
    qts = [los.push(src, x) for x in items]
    los.shutdown(src)
    assert pop_n(los, dst, 200) == items
    assert_eof(los, dst)
    assert all(r.opcode == Opcode.PUSH for r in los.wait_all(qts, timeout=tmo()))
