"""The C send path of one push (libos/inet/_tcpfast.c: tx_established) against Python.

``Stack.poll_connection`` hands its call to ``_tx_fast`` first: for an ESTABLISHED connection
whose poll would send one data segment (``TcpConnection.poll_data``) to a next hop with a live
ARP entry, it does in one C call what the Python method does (poll_data, the frame
``Stack._send_data`` builds with the cffi ``tcp_data_frame``, the RTO/keepalive timer entry,
the out list swapped) and returns the frames; for anything else it returns None having
changed nothing.  Here two identical worlds (tests/test_inet_rxfast.py: a server stack and a
peer stack, seeded alike) go through the same random traffic and pushes, one with every C
path, the other all in Python (``_tx_fast`` and ``_rx_fast`` None, TcpConnection's Python
``fast_input`` and ``poll_data``): pushes of random sizes (one segment, more than the MSS,
into a zero window, with a stale ARP entry, after close (FIN queued), after a retransmission,
with a delayed ACK due...).  After every step the frames (byte for byte, and their type),
every slot of every connection, the stacks' timer heaps, schedules, counters and IP ident
must be equal.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_inet_rxfast import MUTATIONS, S_IP, S_MAC, World, stack_state, typed  # noqa: E402
from test_inet_rxfast import run_both as rx_run_both  # noqa: E402

from libos.inet import stack as stack_mod  # noqa: E402
from libos.inet.stack import Stack  # noqa: E402
from libos.inet.tcp import TcpConfig, TcpConnection  # noqa: E402
from libos.inet.tcp import connection as connection_mod  # noqa: E402

try:
    from libos.inet import _tcpfast
except ImportError:  # not built
    _tcpfast = None

needs_c = pytest.mark.skipif(stack_mod._tx_fast is None, reason="the C send path is not in use")


def test_tx_fast_is_installed_with_the_c_fast_paths() -> None:
    assert (stack_mod._tx_fast is not None) == (
        connection_mod.C_FAST_PATHS and stack_mod._tcp_data_frame is not None and stack_mod._tcp_frame is not None
        and not os.environ.get("DEMI_INET_NO_C_TX"))


class TxWorld(World):
    """World with pushes (``poll_connection`` at once, as the library OS does) and ways to
    get the connection off the common case."""

    @contextlib.contextmanager
    def mode(self):
        if not self.python:
            yield
            return
        saved = stack_mod._tx_fast
        stack_mod._tx_fast = None
        try:
            with super().mode():
                yield
        finally:
            stack_mod._tx_fast = saved

    def _step(self, op: tuple) -> object:
        kind = op[0]
        if kind == "push":   # the application's reply: send (TcpSocket.push's), then poll_connection
            data = bytes(random.Random(op[1]).randrange(256) for _ in range(op[1]))
            if len(op) > 2 and op[2]:
                data = memoryview(bytearray(data))   # (TcpSocket.push casts a non-bytes buffer)
            try:
                if self.python or _tcpfast is None:
                    n = self.conn.send(data)
                else:
                    n = _tcpfast.send(self.conn, data)
            except OSError as e:
                n = ("error", e.errno)
            if len(op) > 3:   # send alone (its effects compared before a poll clears them)
                return typed(n)
            out = self.s.poll_connection(self.conn, self.now)
            self.to_p += [bytes(f) for f in out]
            self.sent += [bytes(f) for f in out]
            return typed(n), [(type(f).__name__, bytes(f)) for f in out]
        if kind == "arp_stale":   # the server's ARP entries expire now
            for k, (mac, _exp) in list(self.s._arp.items()):
                self.s._arp[k] = (mac, self.now)
            return None
        if kind == "arp_drop":
            self.s._arp.clear()
            return None
        if kind == "deliver_s" and self.to_s and (len(self.to_s[0]) < 54 or self.to_s[0][12:14] != b"\x08\x00"):
            self.s.receive(self.to_s.pop(0), self.now)   # ARP (after arp_stale/arp_drop): as it is
            return None
        if kind == "to_p_drop":   # the server's frames in flight are lost
            self.to_p.clear()
            return None
        if kind == "peer_read":
            self.peer_conn.recv()
            return None
        return super()._step(op)

    def state(self) -> dict:
        st_ = super().state()
        st_["ident"] = (self.s._ident, self.p._ident)
        st_["arp"] = typed({k: (bytes(m), e) for k, (m, e) in self.s._arp.items()})
        st_["pending"] = sorted(self.s._pending)
        return st_


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 3000), st.booleans()),
        st.tuples(st.just("push"), st.integers(3000, 20000)),
        st.tuples(st.just("push"), st.integers(0, 100_000), st.booleans(), st.just("send only")),
        st.tuples(st.just("push"), st.integers(1, 200)),
        st.tuples(st.just("push"), st.sampled_from([1, 5, 1459, 1460, 1461, 2920, 2921, 5000])),
        st.tuples(st.just("round"), st.integers(1, 200), st.just(0), st.sampled_from([0.0, 0.0001, 0.002])),
        st.tuples(st.just("flush_s")),
        st.tuples(st.just("peer_send"), st.integers(1, 3000)),
        st.tuples(st.just("deliver_s"), st.sampled_from(sorted(MUTATIONS)), st.booleans()),
        st.tuples(st.just("deliver_s"), st.just("window_0"), st.just(False)),
        st.tuples(st.just("deliver_s"), st.just("none"), st.just(False)),
        st.tuples(st.just("deliver_p"), st.integers(1, 4)),
        st.tuples(st.just("poll_s")),
        st.tuples(st.just("peer_read")),
        st.tuples(st.just("app"), st.integers(0, 2000), st.booleans()),
        st.tuples(st.just("events")),
        st.tuples(st.just("time"), st.sampled_from([0.0, 0.0001, 0.0005, 0.002, 0.05, 0.3, 2.0])),
        st.tuples(st.just("arp_stale")),
        st.tuples(st.just("arp_drop")),
        st.tuples(st.just("close")),
    ),
    min_size=5,
    max_size=60,
)


def run_both(ops: list, config: TcpConfig | None = None) -> tuple[TxWorld, TxWorld]:
    return rx_run_both(ops, config, TxWorld)


CONFIGS = [TcpConfig(push_ack_delay=0.001), TcpConfig(), TcpConfig(delayed_ack=0.0, nagle=True),
           TcpConfig(recv_buffer_size=4096, keepalive_idle=0.5, ack_on_push=False),
           TcpConfig(mss=536, send_buffer_size=8192)]
CONFIG_IDS = ["push-ack-delay", "default", "no-delayed-ack-nagle", "small-buffer-keepalive", "small-mss"]


@needs_c
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_c_send_path_matches_python(config: TcpConfig, ops: list) -> None:
    run_both(ops, config)


def _request_response(n: int, size: int = 20) -> list:
    ops = []
    for i in range(n):
        ops += [("peer_send", 20 + i % 9), ("time", 0.0001), ("deliver_s", "none", False), ("events",),
                ("app", 0, True), ("push", size + i % 7), ("time", 0.0001), ("deliver_p", 4)]
    return ops


@needs_c
def test_request_response_pushes_are_sent_in_c() -> None:
    """The exchange the C path exists for: every reply handled by tx_established (and no
    call handed to the Python poll_data), the same frames as Python throughout."""
    before, fb, sends = _tcpfast.tx_counts(), _tcpfast.fallbacks(), _tcpfast.send_counts()
    c, py = run_both(_request_response(50))
    assert _tcpfast.tx_counts()[0] - before[0] == 50
    assert _tcpfast.send_counts() == (sends[0] + 50, sends[1])
    assert _tcpfast.fallbacks()[1] == fb[1]
    assert len(c.sent) >= 50 and c.sent == py.sent
    assert sys.getrefcount(c.conn) == sys.getrefcount(py.conn)
    assert sys.getrefcount(c.s) == sys.getrefcount(py.s)


@needs_c
@pytest.mark.parametrize("case", ["stale_arp", "no_arp", "big", "fin", "zero_window", "retransmit", "keepalive",
                                  "delack_due", "nothing", "full"])
def test_unusual_pushes_match_python(case: str) -> None:
    """Each way off the common case, after a few common pushes, then common pushes again."""
    cfg = TcpConfig(keepalive_idle=0.5) if case == "keepalive" else None
    ops = _request_response(3)
    if case == "stale_arp":
        ops += [("arp_stale",), ("push", 10), ("deliver_p", 4), ("flush_s",), ("push", 10)]
    elif case == "no_arp":
        ops += [("arp_drop",), ("push", 10), ("deliver_p", 4), ("flush_s",), ("push", 10)]
    elif case == "big":
        ops += [("push", 5000), ("push", 1461), ("deliver_p", 8)]
    elif case == "fin":
        ops += [("close",), ("push", 0), ("push", 10), ("push", 10, True)]
    elif case == "full":
        ops += [("push", 10, False, "send only"), ("push", 300_000, False, "send only"), ("push", 10, True, "send only"),
                ("push", 10), ("deliver_p", 8), ("flush_s",), ("push", 10, True, "send only"), ("push", 10)]
    elif case == "zero_window":
        ops += [("peer_send", 10), ("deliver_s", "window_0", False), ("push", 10), ("time", 0.3), ("poll_s",),
                ("deliver_p", 4), ("flush_s",), ("push", 10)]
    elif case == "retransmit":
        ops += [("push", 10), ("to_p_drop",), ("time", 0.5), ("poll_s",), ("push", 10), ("deliver_p", 8),
                ("flush_s",), ("push", 10)]
    elif case == "keepalive":
        ops += [("time", 0.4), ("push", 10), ("deliver_p", 4), ("flush_s",), ("time", 0.4), ("push", 10)]
    elif case == "delack_due":
        ops += [("peer_send", 10), ("flush_s",), ("time", 0.5), ("push", 10)]
    ops += _request_response(3)
    before = _tcpfast.tx_counts()
    run_both(ops, cfg)
    assert _tcpfast.tx_counts()[0] > before[0]


@needs_c
def test_the_python_path_is_taken_when_poll_data_is_replaced() -> None:
    """A replaced TcpConnection.poll_data (a spy) sees every push; references balance."""
    w, ref = TxWorld(python=False), TxWorld(python=True)
    calls = []
    orig = TcpConnection.__dict__["poll_data"]

    def spy(self, now):
        calls.append(now)
        return orig(self, now)

    TcpConnection.poll_data = spy
    try:
        before = _tcpfast.tx_counts()
        for op in _request_response(20):
            w.step(op)
            ref.step(op)
        assert _tcpfast.tx_counts()[0] == before[0]
        assert sys.getrefcount(w.conn) == sys.getrefcount(ref.conn)
    finally:
        TcpConnection.poll_data = orig
    assert len(calls) >= 20
    assert w.state() == ref.state()


@needs_c
def test_the_python_path_is_taken_when_send_data_is_replaced(monkeypatch) -> None:
    w = TxWorld(python=False)
    seen = []
    orig = Stack._send_data

    def spy(self, conn, fields, now):
        seen.append(fields)
        return orig(self, conn, fields, now)

    monkeypatch.setattr(Stack, "_send_data", spy)
    before = _tcpfast.tx_counts()
    for op in _request_response(5):
        w.step(op)
    assert len(seen) == 5 and _tcpfast.tx_counts()[0] == before[0]


@needs_c
def test_a_stack_subclass_and_odd_arguments_take_the_python_path() -> None:
    class MyStack(Stack):
        pass

    s = MyStack(S_MAC, S_IP, rng=random.Random(1))
    w = TxWorld(python=False)
    before = _tcpfast.tx_counts()
    assert stack_mod._tx_fast(s, w.conn, 1.0) is None
    assert stack_mod._tx_fast(w.s, object(), 1.0) is None
    assert stack_mod._tx_fast(w.s, w.conn, 1) is None       # an int time
    assert stack_mod._tx_fast(w.s, w.conn, w.now) is None   # nothing queued
    assert _tcpfast.tx_counts() == (before[0], before[1] + 4)
    w.s._ident = "x"   # an attribute of unexpected type: Python's path (which raises here)
    w.conn.send(b"x")
    assert stack_mod._tx_fast(w.s, w.conn, w.now) is None
    w.s._ident = 0xFFFF   # wraps to 0
    assert len(stack_mod._tx_fast(w.s, w.conn, w.now)) == 1 and w.s._ident == 0


@needs_c
def test_send_hands_unusual_calls_to_conn_send() -> None:
    """_tcpfast.send: conn.send for a subclass, a replaced send, other data types, another
    state; the same results and errors."""
    w = TxWorld(python=False)
    before = _tcpfast.send_counts()
    assert _tcpfast.send(w.conn, b"abc") == 3
    assert _tcpfast.send(w.conn, bytearray(b"de")) == 2                    # bytearray: conn.send
    with pytest.raises(TypeError):                                           # strided: conn.send raises
        _tcpfast.send(w.conn, memoryview(b"abcd")[::2])
    assert bytes(w.conn._sndbuf)[-5:] == b"abcde"
    assert _tcpfast.send_counts() == (before[0] + 1, before[1] + 2)
    with pytest.raises(TypeError):
        _tcpfast.send(w.conn, 5)
    calls = []
    orig = TcpConnection.__dict__["send"]
    TcpConnection.send = lambda self, data: calls.append(data) or 0
    try:
        assert _tcpfast.send(w.conn, b"x") == 0 and calls == [b"x"]
    finally:
        TcpConnection.send = orig
    w.conn.close()
    with pytest.raises(OSError):
        _tcpfast.send(w.conn, b"x")
