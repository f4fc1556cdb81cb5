"""The C receive path of the stack (libos/inet/_tcpfast.c: rx_established) against Python.

``Stack.receive`` hands a frame that passed the C checks (tcp_rx) to ``_rx_fast`` first: the
header unpack, the connection lookup, header prediction (the C fast_input, called from C) and
the bookkeeping after it (``_events``, ``_active``, ``Stack._schedule``) in one C call, which
returns False, having changed nothing, for anything else.  Here two identical worlds (a server
stack and a peer stack, seeded alike) go through the same random traffic: one with the C
paths, the other all in Python (``_rx_fast`` None, TcpConnection's Python ``fast_input`` and
``poll_data``, as under DEMI_INET_NO_C).  Frames from the peer reach the server as they are or
altered (wrong ports, an unknown source, options, FIN/RST/SYN/URG, no ACK, shifted sequence
numbers, a bad checksum, duplicated, with the checksum not verified).  After every step the
frames sent, every slot of every connection, the stacks' event sets, work lists, timer heaps
and schedules and their counters must be equal.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libos.inet import stack as stack_mod
from libos.inet.stack import Stack
from libos.inet.tcp import TcpConfig, TcpConnection, TcpListener, TcpState
from libos.inet.tcp import connection as connection_mod
from libos.inet.wire.checksum import checksum, pseudo_header_sum

try:
    from libos.inet import _tcpfast
except ImportError:  # not built
    _tcpfast = None

needs_c = pytest.mark.skipif(stack_mod._rx_fast is None, reason="the C receive path is not in use")

S_MAC, P_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
S_IP, P_IP = "10.0.0.1", "10.0.0.2"
PORT = 6379


def test_rx_fast_is_installed_with_the_c_fast_paths() -> None:
    assert (stack_mod._rx_fast is not None) == (connection_mod.C_FAST_PATHS and stack_mod._tcp_rx is not None
                                                and not os.environ.get("DEMI_INET_NO_C_RX"))


# ------------------------------------------------------------------ frames

def reframe(frame: bytes, *, sport: int = 0, dport: int = 0, src_delta: int = 0, seq_delta: int = 0,
            ack_delta: int = 0, set_flags: int = 0, clear_flags: int = 0, window: int | None = None,
            options: bytes = b"") -> bytes:
    """An IPv4/TCP frame with fields changed and both checksums made right again."""
    b = bytearray(frame)
    total = struct.unpack_from("!H", b, 16)[0]
    hlen = (b[46] >> 4) * 4
    if options:
        assert len(options) % 4 == 0 and hlen + len(options) <= 60
        b[34 + hlen:34 + hlen] = options
        total += len(options)
        struct.pack_into("!H", b, 16, total)
        hlen += len(options)
        b[46] = (hlen // 4) << 4 | (b[46] & 0x0F)
    src = (struct.unpack_from("!I", b, 26)[0] + src_delta) & 0xFFFFFFFF
    struct.pack_into("!I", b, 26, src)
    sp, dp, seq, ack, off_flags, win = struct.unpack_from("!HHIIHH", b, 34)
    off_flags = (off_flags | set_flags) & ~clear_flags
    struct.pack_into("!HHIIHH", b, 34, (sp + sport) & 0xFFFF, (dp + dport) & 0xFFFF, (seq + seq_delta) & 0xFFFFFFFF,
                     (ack + ack_delta) & 0xFFFFFFFF, off_flags, win if window is None else window)
    b[24:26] = b"\0\0"
    struct.pack_into("!H", b, 24, checksum(bytes(b[14:34])))
    b[50:52] = b"\0\0"
    dst = struct.unpack_from("!I", b, 30)[0]
    struct.pack_into("!H", b, 50, checksum(bytes(b[34:14 + total]), initial=pseudo_header_sum(src, dst, 6, total - 20)))
    return bytes(b)


def test_reframe_keeps_an_unchanged_frame() -> None:
    w = World(python=True)
    w.peer_conn.send(b"hello")
    frames = [f for f in w.p.poll(w.now) if len(f) > 54]
    assert frames and all(reframe(f) == bytes(f) for f in frames)


TS = b"\x01\x01\x08\x0a" + b"\0\0\0\x07\0\0\0\x05"

#: what happens to a frame from the peer on its way to the server: (name, (frame -> frame, csum_ok))
MUTATIONS = {
    "none": lambda f: (f, True),
    "csum_not_ready": lambda f: (f, False),
    "bad_csum": lambda f: (f[:-1] + bytes([f[-1] ^ 0x5A]) if len(f) > 54 else f[:50] + b"\x12\x34" + f[52:], True),
    "dport": lambda f: (reframe(f, dport=1), True),
    "sport": lambda f: (reframe(f, sport=1), True),
    "src": lambda f: (reframe(f, src_delta=1), True),
    "nops": lambda f: (reframe(f, options=b"\x01\x01\x01\x01"), True),
    "timestamps": lambda f: (reframe(f, options=TS), True),
    "fin": lambda f: (reframe(f, set_flags=0x01), True),
    "rst": lambda f: (reframe(f, set_flags=0x04), True),
    "syn": lambda f: (reframe(f, set_flags=0x02), True),
    "urg": lambda f: (reframe(f, set_flags=0x20), True),
    "no_ack": lambda f: (reframe(f, clear_flags=0x10), True),
    "no_psh": lambda f: (reframe(f, clear_flags=0x08), True),
    "ece": lambda f: (reframe(f, set_flags=0x40), True),
    "seq_ahead": lambda f: (reframe(f, seq_delta=1000), True),
    "seq_behind": lambda f: (reframe(f, seq_delta=-3), True),
    "ack_old": lambda f: (reframe(f, ack_delta=-1), True),
    "ack_ahead": lambda f: (reframe(f, ack_delta=100_000), True),
    "window_0": lambda f: (reframe(f, window=0), True),
    "window_small": lambda f: (reframe(f, window=7), True),
    "truncated": lambda f: (f[:-1], True),
}


# ------------------------------------------------------------------ two worlds

def describe(obj: object) -> object:
    """An object of one world by what identifies it in either."""
    if isinstance(obj, TcpConnection):
        return ("conn", obj.remote_addr, obj.remote_port, obj.local_port)
    if isinstance(obj, TcpListener):
        return ("listener", obj.local_port)
    return (type(obj).__name__,)


def typed(v: object) -> object:
    """A comparable image of a value, with its type (1 != True != 1.0), floats bit-exact."""
    if v is None or isinstance(v, (bool, int, str)):
        return (type(v).__name__, v)
    if isinstance(v, float):
        return ("float", repr(v))
    if isinstance(v, (bytes, bytearray, memoryview)):
        return (type(v).__name__, bytes(v))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [typed(x) for x in v])
    if isinstance(v, dict):
        return ("dict", [(describe(k) if isinstance(k, TcpConnection) else typed(k), typed(x)) for k, x in v.items()])
    if isinstance(v, (TcpConnection, TcpListener)):
        return describe(v)
    if isinstance(v, TcpState):
        return ("TcpState", v.name)
    slots = [s for k in type(v).__mro__ for s in getattr(k, "__slots__", ())]
    if slots and not isinstance(v, TcpConfig):
        return (type(v).__name__, {s: typed(getattr(v, s, "<unset>")) for s in slots})
    return (type(v).__name__, v)


def conn_state(conn: TcpConnection, stack: Stack) -> dict:
    out = {}
    for name in TcpConnection.__slots__:
        if name == "_rng":
            continue
        v = getattr(conn, name, "<unset>")
        if name == "_active":
            out[name] = v is stack._active if v is not None else None
        else:
            out[name] = typed(v)
    return out


def stack_state(s: Stack) -> dict:
    return {
        "conns": {k: conn_state(c, s) for k, c in sorted(s._conns.items())},
        "events": sorted(map(repr, map(describe, s._events))),
        "active": [describe(c) for c in s._active],
        "timers": [(typed(d), n, describe(c)) for d, n, c in s._timers],
        "ack_timers": [(typed(d), n, describe(c)) for d, n, c in s._ack_timers],
        "sched": typed(s._sched),
        "ack_sched": typed(s._ack_sched),
        "timer_n": s._timer_n,
        "now": typed(s._now),
        "counters": sorted(s.counters.items()),
        "closed": sorted(s.tcp_closed_totals.items()),
        "out": [bytes(f) for f in s._out],
        "next_deadline": typed(s.next_deadline()),
    }


class World:
    """A server stack ``s`` with one accepted connection from the peer stack ``p``; frames
    between them wait in ``to_s`` / ``to_p`` until a step delivers them."""

    def __init__(self, python: bool, config: TcpConfig | None = None) -> None:
        self.python = python
        cfg = config or TcpConfig(push_ack_delay=0.001)
        with self.mode():
            self.s = Stack(S_MAC, S_IP, rng=random.Random(1), tcp_config=cfg)
            self.p = Stack(P_MAC, P_IP, rng=random.Random(2), tcp_config=cfg)
            self.now = 1.0
            self.s.tcp_reserve(PORT)
            self.lst = self.s.tcp_listen(PORT)
            self.peer_conn = self.p.tcp_connect(int(self.s.ip), PORT, self.now)
            self.conn = None
            for _ in range(20):
                self.now += 0.001
                for f in self.p.poll(self.now):
                    self.s.receive(f, self.now)
                for f in self.s.poll(self.now):
                    self.p.receive(f, self.now)
                if self.conn is None:
                    self.conn = self.s.tcp_accept(self.lst)
                if self.conn is not None and self.peer_conn.state is TcpState.ESTABLISHED:
                    break
            assert self.conn is not None and self.conn.state is TcpState.ESTABLISHED
        self.to_s: list[bytes] = []
        self.to_p: list[bytes] = []
        self.sent: list[bytes] = []

    @contextlib.contextmanager
    def mode(self):
        """All of it in Python for the reference world."""
        if not self.python:
            yield
            return
        saved = stack_mod._rx_fast, TcpConnection.__dict__["fast_input"], TcpConnection.__dict__["poll_data"]
        stack_mod._rx_fast = None
        TcpConnection.fast_input = TcpConnection._fast_input_py
        TcpConnection.poll_data = TcpConnection._poll_data_py
        try:
            yield
        finally:
            stack_mod._rx_fast, TcpConnection.fast_input, TcpConnection.poll_data = saved

    def step(self, op: tuple) -> object:
        with self.mode():
            return self._step(op)

    def _step(self, op: tuple) -> object:
        kind = op[0]
        if kind == "peer_send":
            if not self.peer_conn.closed:
                self.peer_conn.send(b"r" * op[1])
            self.to_s += [bytes(f) for f in self.p.poll(self.now)]
        elif kind == "deliver_s":
            if not self.to_s:
                return None
            frame = self.to_s[0] if op[2] else self.to_s.pop(0)
            frame, csum_ok = MUTATIONS[op[1]](frame)
            self.s.receive(frame, self.now, csum_ok)
            return frame
        elif kind == "flush_s":   # everything queued, unaltered
            while self.to_s:
                self.s.receive(self.to_s.pop(0), self.now)
        elif kind == "round":     # a request in, maybe a reply out, the peer's answer queued
            self._step(("peer_send", op[1]))
            self._step(("flush_s",))
            self._step(("time", op[3]))
            if op[2]:
                self._step(("app", op[2], True))
                self._step(("poll_s",))
            self._step(("deliver_p", 8))
            return sorted(map(repr, map(describe, self.s.take_events())))
        elif kind == "deliver_s_view":   # a memoryview of a bytearray, as some devices hand out
            if self.to_s:
                self.s.receive(memoryview(bytearray(self.to_s.pop(0))), self.now)
        elif kind == "deliver_p":
            for f in self.to_p[:op[1]]:
                self.p.receive(f, self.now)
            del self.to_p[:op[1]]
            self.to_s += [bytes(f) for f in self.p.poll(self.now)]
        elif kind == "poll_s":
            out = [bytes(f) for f in self.s.poll(self.now)]
            self.to_p += out
            self.sent += out
            return out
        elif kind == "app":
            if self.conn.readable and op[2]:
                self.conn.recv()
            if op[1] and not self.conn.closed:
                try:
                    self.conn.send(b"+" * op[1])
                except OSError:
                    pass
            return self.conn.readable
        elif kind == "events":
            return sorted(map(repr, map(describe, self.s.take_events())))
        elif kind == "time":
            self.now += op[1]
        elif kind == "close":
            self.conn.close()
        return None

    def state(self) -> dict:
        return {"s": stack_state(self.s), "p": stack_state(self.p), "to_s": self.to_s, "to_p": self.to_p,
                "sent": self.sent, "now": typed(self.now)}


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("round"), st.integers(1, 3000), st.sampled_from([0, 0, 5, 100, 3000]),
                  st.sampled_from([0.0, 0.0001, 0.002])),
        st.tuples(st.just("round"), st.integers(1, 200), st.just(5), st.just(0.0001)),
        st.tuples(st.just("flush_s")),
        st.tuples(st.just("peer_send"), st.integers(1, 3000)),
        st.tuples(st.just("peer_send"), st.integers(1, 100)),
        st.tuples(st.just("deliver_s"), st.sampled_from(sorted(MUTATIONS)), st.booleans()),
        st.tuples(st.just("deliver_s"), st.just("none"), st.just(False)),
        st.tuples(st.just("deliver_s"), st.just("none"), st.just(False)),
        st.tuples(st.just("deliver_s_view")),
        st.tuples(st.just("deliver_p"), st.integers(1, 4)),
        st.tuples(st.just("poll_s")),
        st.tuples(st.just("poll_s")),
        st.tuples(st.just("app"), st.integers(0, 2000), st.booleans()),
        st.tuples(st.just("events")),
        st.tuples(st.just("time"), st.sampled_from([0.0, 0.0001, 0.0005, 0.002, 0.05, 0.3, 2.0])),
        st.tuples(st.just("close")),
    ),
    min_size=5,
    max_size=80,
)


def step_both(i: int, op: Any, c: Any, py: Any) -> None:
    """Step ``op`` (number ``i``) in the C world ``c`` and the Python world ``py``: their
    results and then their states must agree."""
    rc, rp = c.step(op), py.step(op)
    assert rc == rp, (i, op, rc, rp)
    sc, sp = c.state(), py.state()
    if sc != sp:
        diff = {k: (sc[k], sp[k]) for k in sc if sc[k] != sp[k]}
        raise AssertionError(f"step {i} {op}: {diff}")


def run_both(ops: list, config: TcpConfig | None = None, world: type = World) -> tuple[Any, Any]:
    """Run ``ops`` in a C world and a Python world of class ``world``; their results and
    states must agree after every step."""
    c, py = world(python=False, config=config), world(python=True, config=config)
    assert c.state() == py.state()
    for i, op in enumerate(ops):
        step_both(i, op, c, py)
    return c, py


@needs_c
@pytest.mark.parametrize("config", [TcpConfig(push_ack_delay=0.001), TcpConfig(), TcpConfig(delayed_ack=0.0),
                                    TcpConfig(recv_buffer_size=4096, keepalive_idle=0.5, ack_on_push=False)],
                         ids=["push-ack-delay", "default", "no-delayed-ack", "small-buffer-keepalive"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_c_receive_path_matches_python(config: TcpConfig, ops: list) -> None:
    run_both(ops, config)


@needs_c
def test_request_response_is_received_in_c() -> None:
    """The exchange the C path exists for: requests in, replies out, every request segment
    handled by rx_established (and nothing handed to the Python fast_input), the same as
    Python throughout."""
    ops = []
    for i in range(50):
        ops += [("peer_send", 20 + i % 9), ("time", 0.0001), ("deliver_s", "none", False), ("events",),
                ("app", 5, True), ("poll_s",), ("time", 0.0001), ("deliver_p", 4)]
    before, fb = _tcpfast.rx_counts(), _tcpfast.fallbacks()
    c, py = run_both(ops)
    handled = _tcpfast.rx_counts()[0] - before[0]
    # the C world's 50 requests at the server and 50 replies at the peer (the Python world
    # never calls rx_established)
    assert handled >= 100, handled
    assert _tcpfast.fallbacks() == fb
    assert c.conn._ooo_fin is None and len(c.sent) >= 50


@needs_c
def test_the_python_path_is_taken_when_fast_input_is_replaced() -> None:
    """A replaced TcpConnection.fast_input (a spy, a test double) sees every segment."""
    w = World(python=False)
    calls = []
    orig = TcpConnection.__dict__["fast_input"]

    def spy(self, *args):
        calls.append(args[2])
        return orig(self, *args)

    TcpConnection.fast_input = spy
    try:
        w.step(("peer_send", 10))
        w.step(("deliver_s", "none", False))
        ref = World(python=True)
        ref.step(("peer_send", 10))
        ref.step(("deliver_s", "none", False))
        for _ in range(50):   # declined after the lookup: the connection's references balance
            w.step(("round", 10, 5, 0.0001))
            ref.step(("round", 10, 5, 0.0001))
        assert sys.getrefcount(w.conn) == sys.getrefcount(ref.conn)
    finally:
        TcpConnection.fast_input = orig
    assert calls[0] == 0x18 and len(calls) >= 51
    assert w.state() == ref.state()


@needs_c
def test_a_stack_subclass_takes_the_python_path() -> None:
    class MyStack(Stack):
        pass

    s = MyStack(S_MAC, S_IP, rng=random.Random(1))
    before = _tcpfast.rx_counts()
    assert stack_mod._rx_fast(s, b"\0" * 60, 46, 1.0) is False
    assert _tcpfast.rx_counts() == (before[0], before[1] + 1)
