"""The C fast paths of TcpConnection (libos/inet/_tcpfast.c) against the Python methods.

``TcpConnection.fast_input`` and ``TcpConnection.poll_data`` are the C versions when the
extension is built (and ``DEMI_INET_NO_C`` is not set); the Python methods stay as
``_fast_input_py`` and ``_poll_data_py``.  Here a connection is driven through random
traffic (in-order data, pure ACKs, old, duplicate and bad ACKs, out-of-order and
out-of-window data, flags header prediction must reject, window changes, application
sends, reads and close, time passing), in several configurations and with its sequence
numbers moved far from 0 (up to beyond what the C code handles), and before each segment
and each poll two exact copies of it get the same call, one the C function, the other the
Python method: the return values (or exceptions) and every slot, nested objects included,
with their types, must be equal.  The C code must also handle the ordinary cases itself
(its count of calls handed to Python must not move), and hand the unusual ones over.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import random
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libos.inet.tcp import TcpConfig, TcpConnection, TcpState
from libos.inet.tcp import connection as connection_mod
from libos.inet.wire import Ipv4Address, TcpFlags, TcpOptions, TcpSegment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_inet_rxfast import typed  # noqa: E402  (the typed image both worlds are compared by)

try:
    from libos.inet import _tcpfast
except ImportError:  # not built: the Python methods run, nothing to compare
    _tcpfast = None

MASK = 0xFFFFFFFF
LOCAL_ADDR = int(Ipv4Address("10.0.0.1"))
REMOTE_ADDR = int(Ipv4Address("10.0.0.2"))
LOCAL_PORT, REMOTE_PORT = 6379, 49500
ISS = 4_294_960_000          # our sequence numbers wrap during the tests
REMOTE_ISS = 2**32 - 100     # and so do the peer's
ACK, PSH = 0x10, 0x08

needs_c = pytest.mark.skipif(not connection_mod.C_FAST_PATHS, reason="libos.inet._tcpfast not in use")


class _Isn(random.Random):
    def getrandbits(self, k: int) -> int:
        return ISS


def test_c_fast_paths_are_installed_when_built() -> None:
    """The differential tests below must not compare the Python methods with themselves."""
    built = importlib.util.find_spec("libos.inet._tcpfast") is not None
    if os.environ.get("DEMI_INET_NO_C"):
        assert not connection_mod.C_FAST_PATHS
        assert TcpConnection.fast_input is TcpConnection._fast_input_py
        return
    if not built:
        pytest.skip("libos.inet._tcpfast is not built")
    assert connection_mod.C_FAST_PATHS
    for name in ("fast_input", "poll_data"):
        meth = TcpConnection.__dict__[name]
        assert type(meth).__name__ == "method_descriptor", meth
        assert meth is not getattr(TcpConnection, f"_{name}_py")


# ------------------------------------------------------------------ helpers

def snapshot(conn: TcpConnection) -> dict:
    """Every slot of the connection (and of its RTT estimator, congestion control, counters,
    reassembly queue, queued segments), typed."""
    out = {}
    for name in TcpConnection.__slots__:
        if name == "_rng":
            continue
        try:
            v = getattr(conn, name)
        except AttributeError:
            out[name] = "<unset>"
            continue
        out[name] = typed(v)
    return out


def clone(conn: TcpConnection) -> TcpConnection:
    return copy.deepcopy(conn, {id(conn.config): conn.config, id(conn._rng): conn._rng})


def call(fn, *args) -> tuple:
    try:
        return ("ok", typed(fn(*args)))
    except Exception as exc:  # noqa: BLE001 - the same exception is the contract
        return ("raised", type(exc).__name__, str(exc))


def fallbacks() -> tuple[int, int]:
    return _tcpfast.fallbacks() if _tcpfast is not None else (0, 0)


def compare_fast_input(conn: TcpConnection, *args) -> tuple[TcpConnection, tuple, int]:
    """fast_input(*args) on two copies of conn, in C and in Python: the same result and
    state.  Returns the C copy, the result and how many calls C handed to Python."""
    a, b = clone(conn), clone(conn)
    assert snapshot(a) == snapshot(b)
    before = fallbacks()[0]
    ra = call(a.fast_input, *args)
    handed = fallbacks()[0] - before
    rb = call(TcpConnection._fast_input_py, b, *args)
    assert ra == rb, (args, ra, rb)
    sa, sb = snapshot(a), snapshot(b)
    diff = {k: (sa[k], sb[k]) for k in sa if sa[k] != sb[k]}
    assert not diff, (args, diff)
    return a, ra, handed


def compare_poll_data(conn: TcpConnection, now: float) -> tuple[TcpConnection, tuple, int]:
    a, b = clone(conn), clone(conn)
    before = fallbacks()[1]
    ra = call(a.poll_data, now)
    handed = fallbacks()[1] - before
    rb = call(TcpConnection._poll_data_py, b, now)
    assert ra == rb, (now, ra, rb)
    sa, sb = snapshot(a), snapshot(b)
    diff = {k: (sa[k], sb[k]) for k in sa if sa[k] != sb[k]}
    assert not diff, (now, diff)
    return a, ra, handed


SEND_SPACE = ("_iss", "_snd_una", "_snd_nxt", "_snd_max", "_snd_wl2", "_snd_buf_seq", "_fin_seq", "_sack_high")
RECV_SPACE = ("_irs", "_rcv_nxt", "_rcv_wup", "_rcv_adv", "_snd_wl1")


def shift(conn: TcpConnection, k: int) -> None:
    """Move both (unwrapped) sequence spaces by k, a multiple of 2**32: the same wire values."""
    assert k % 2**32 == 0 and not conn._ooo and conn._rtt_seq is None
    for name in SEND_SPACE + RECV_SPACE:
        setattr(conn, name, getattr(conn, name) + k)
    conn._cc.recover += k


def established(config: TcpConfig, wscale: int | None = 2, sack: bool = True, k: int = 0) -> TcpConnection:
    conn = TcpConnection(LOCAL_PORT, REMOTE_PORT, local_addr=LOCAL_ADDR, remote_addr=REMOTE_ADDR,
                         config=config, rng=_Isn(0))
    conn.connect(0.0)
    conn.poll(0.0)
    syn_ack = TcpSegment(REMOTE_PORT, LOCAL_PORT, REMOTE_ISS, (ISS + 1) & MASK, TcpFlags.SYN | TcpFlags.ACK,
                         65535, options=TcpOptions.build(mss=1460, sack_permitted=sack, window_scale=wscale))
    conn.on_segment(syn_ack, 0.001)
    conn.poll(0.001)
    assert conn.state is TcpState.ESTABLISHED
    if k:
        shift(conn, k)
    return conn


def payload_of(n: int, kind: str, base: int) -> object:
    data = bytes((base + i) & 0xFF for i in range(n))
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "frame":   # as the stack passes it: a slice of a view of the whole frame
        return memoryview(b"\0" * 54 + data + b"\0" * 4)[54:54 + n]
    return data


class Driver:
    """One connection and a peer that derives its segments from the connection's state."""

    def __init__(self, conn: TcpConnection, expect_native: bool | None) -> None:
        self.conn = conn
        self.now = 0.01
        self.expect_native = expect_native   # True: C must handle every call; False: none
        self.taken_in_c = 0

    def _check_handed(self, handed: int, poll: bool = False) -> None:
        if self.expect_native is True:
            assert handed == 0, "the C code gave an ordinary call to Python"
        elif self.expect_native is False and not poll:   # (poll_data may say None first)
            assert handed == 1, "the C code took a call it cannot do exactly"

    def segment(self, seq: int, ack: int, flags: int, window: int, payload: object) -> None:
        conn = self.conn
        a, r, handed = compare_fast_input(conn, seq & MASK, ack & MASK, flags, window, payload, self.now)
        self._check_handed(handed)
        if r[0] == "ok" and r[1] != ("int", 0):
            self.taken_in_c += handed == 0
            self.conn = a
            return
        assert r == ("ok", ("int", 0)), r
        conn.on_segment(TcpSegment(REMOTE_PORT, LOCAL_PORT, seq & MASK, ack & MASK, TcpFlags(flags), window,
                                   payload=bytes(payload)), self.now)

    def poll(self) -> None:
        conn = self.conn
        if conn.state is TcpState.ESTABLISHED and not conn._ctl:
            _, _, handed = compare_poll_data(conn, self.now)
            self._check_handed(handed, poll=True)
        conn.poll(self.now)

    # the peer's segments
    def ack_point(self, part: float) -> int:
        c = self.conn
        return c._snd_una + int((c._snd_max - c._snd_una) * part)

    def step(self, op: tuple) -> None:
        c = self.conn
        kind = op[0]
        if kind == "data":
            _, n, push, part, window, pkind = op
            self.segment(c._rcv_nxt, self.ack_point(part), ACK | (PSH if push else 0), window,
                         payload_of(n, pkind, c._rcv_nxt))
        elif kind == "ack":
            _, part, window = op
            self.segment(c._rcv_nxt, self.ack_point(part), ACK, window, b"")
        elif kind == "old_ack":
            _, back, n = op
            self.segment(c._rcv_nxt, c._snd_una - back, ACK, 65535, payload_of(n, "bytes", 0))
        elif kind == "bad_ack":
            _, ahead, n = op
            self.segment(c._rcv_nxt, c._snd_max + ahead, ACK, 65535, payload_of(n, "bytes", 0))
        elif kind == "seq":
            _, delta, n = op   # out of order (ahead), old (behind) or out of the window
            self.segment(c._rcv_nxt + delta, self.ack_point(1.0), ACK | PSH, 65535,
                         payload_of(n, "bytes", c._rcv_nxt + delta))
        elif kind == "flags":
            _, flags, n = op
            self.segment(c._rcv_nxt, self.ack_point(1.0), flags, 65535, payload_of(n, "bytes", c._rcv_nxt))
        elif kind == "app":
            _, send, recv = op
            try:
                if recv:
                    c.recv()
                if send:
                    c.send(bytes(i & 0xFF for i in range(send)))
            except OSError:   # reset, or closed
                pass
        elif kind == "close":
            if op[1] == 0:
                c.close()
        else:
            self.now += op[1]
        self.poll()


_N = st.integers(0, 3000)
_WINDOW = st.sampled_from([0, 1, 200, 16383, 65535])
_OP = st.one_of(
    st.tuples(st.just("data"), _N, st.booleans(), st.sampled_from([0.0, 0.3, 1.0]), _WINDOW,
              st.sampled_from(["bytes", "bytearray", "memoryview", "frame"])),
    st.tuples(st.just("ack"), st.sampled_from([0.0, 0.5, 1.0]), _WINDOW),
    st.tuples(st.just("old_ack"), st.sampled_from([1, 1000, 2**31 - 1, 2**31]), st.sampled_from([0, 10])),
    st.tuples(st.just("bad_ack"), st.sampled_from([1, 5000, 2**31]), st.sampled_from([0, 10])),
    st.tuples(st.just("seq"), st.sampled_from([-2**31, -100, -1, 1, 700, 2**20, 2**31 - 1]), st.integers(0, 800)),
    st.tuples(st.just("flags"), st.integers(0, 0x1FF), st.integers(0, 100)),
    st.tuples(st.just("app"), st.integers(0, 6000), st.booleans()),
    st.tuples(st.just("time"), st.sampled_from([0.0001, 0.0015, 0.05, 0.3, 2.0, 61.0])),
)
# ("close", 0) now and then (it ends header prediction for the rest of the run)
_OPS = st.lists(st.one_of(_OP, st.tuples(st.just("close"), st.integers(0, 3))), min_size=5, max_size=40)

CONFIGS = {
    "default": (TcpConfig(), 2, True),
    "push-ack-delay": (TcpConfig(push_ack_delay=0.001), 2, True),
    "small-buffers-nagle": (TcpConfig(recv_buffer_size=4096, send_buffer_size=8192, nagle=True), 0, False),
    "no-delack-keepalive-no-ws": (TcpConfig(delayed_ack=None, keepalive_idle=1.0, window_scaling=False), None,
                                  True),
    "int-times-small-mss": (TcpConfig(mss=536, initial_rto=1, min_rto=1, max_rto=4, delayed_ack=0,
                                      initial_cwnd=1), 7, True),
}


@needs_c
@pytest.mark.parametrize("name", list(CONFIGS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_c_and_python_agree(name: str, ops: list) -> None:
    config, wscale, sack = CONFIGS[name]
    d = Driver(established(config, wscale, sack), expect_native=True)
    for op in ops:
        d.step(op)


@needs_c
@pytest.mark.parametrize("k,native", [(2**40, True), (2**60 - 2**32, None), (2**61, False), (2**70, False)],
                         ids=["2**40", "across-2**60", "2**61", "2**70"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS)
def test_c_and_python_agree_on_huge_sequence_numbers(k: int, native: bool | None, ops: list) -> None:
    """Unwrapped sequence numbers far from 0: C up to +-2**60, Python beyond (the same results)."""
    d = Driver(established(TcpConfig(push_ack_delay=0.001), 2, True, k), expect_native=native)
    for op in ops:
        d.step(op)


@needs_c
def test_request_response_is_done_in_c() -> None:
    """The exchange the fast paths exist for: every segment and every reply handled in C."""
    d = Driver(established(TcpConfig(push_ack_delay=0.001)), expect_native=True)
    before = fallbacks()
    replies = 0
    for i in range(100):
        d.step(("data", 30 + i % 7, True, 1.0, 65535, "frame"))   # a request, acking our reply
        d.step(("time", 0.0001))
        c = d.conn
        assert c.recv()
        c.send(b"+OK\r\n")
        a, r, handed = compare_poll_data(c, d.now)
        assert r[0] == "ok" and r[1][0] == "tuple" and not handed
        replies += 1
        d.conn = a
    assert d.taken_in_c == 100 and replies == 100
    assert fallbacks() == before


@needs_c
def test_window_updates_slow_start_and_rtt_in_c() -> None:
    """A bulk sender: ACKs of several segments at once in slow start (above the 2*MSS cap),
    window updates, RTT samples (with int config times), then congestion avoidance."""
    d = Driver(established(TcpConfig(initial_rto=1, min_rto=1, max_rto=3)), expect_native=True)
    for i in range(40):
        d.conn.send(b"x" * 20000)
        d.step(("time", 0.002))
        d.step(("ack", 0.25 if i % 2 else 1.0, 100 + 1500 * i))
        d.step(("ack", 1.0, 65535))
        if i == 20:
            d.conn._cc.ssthresh = d.conn._cc.cwnd   # congestion avoidance from here
    assert d.conn._rtt.samples > 10 and d.taken_in_c >= 60 and d.conn._cc._ca_bytes


@needs_c
@pytest.mark.parametrize("name", list(CONFIGS))
def test_receive_timers_and_probes_in_c(name: str) -> None:
    """Receiving with delayed ACKs, pushes, segments above the MSS, keepalive probes and
    zero-window probes in between, and RTO backoff: the C paths stay exact."""
    config, wscale, sack = CONFIGS[name]
    d = Driver(established(config, wscale, sack), expect_native=True)
    script = [
        ("data", 100, False, 1.0, 65535, "bytes"), ("time", 0.0005),
        ("data", 100, True, 1.0, 65535, "frame"), ("time", 0.0005),
        ("data", 100, True, 1.0, 65535, "frame"),
        ("data", 3000, False, 1.0, 65535, "bytes"), ("data", 1000, False, 1.0, 65535, "bytes"),
        ("app", 0, True), ("time", 2.0), ("time", 2.0),              # idle: keepalive probes
        ("data", 10, True, 1.0, 65535, "bytes"),
        ("app", 5000, False), ("ack", 1.0, 0), ("app", 100, False),   # zero window: persist
        ("time", 0.5), ("time", 1.0), ("data", 10, True, 1.0, 65535, "bytes"),  # opened by data
        ("app", 100, False), ("ack", 1.0, 0), ("time", 0.5), ("ack", 1.0, 65535),
        ("app", 300, False), ("time", 1.5), ("time", 3.0),             # RTO, backoff
        ("data", 50, True, 0.0, 65535, "bytes"), ("app", 10, False),  # no new ACK: backoff kept
        ("ack", 1.0, 65535), ("app", 10, False), ("data", 20, True, 1.0, 65535, "bytes"),
    ]
    for op in script:
        d.step(op)
    assert d.taken_in_c >= 5


# ------------------------------------------------------------------ unusual calls

@needs_c
def test_subclasses_and_unusual_arguments_go_to_python() -> None:
    class Sub(TcpConnection):
        __slots__ = ()

    conn = established(TcpConfig())
    conn.send(b"q" * 100)
    conn.poll(0.002)
    seq, ack = conn._rcv_nxt & MASK, conn._snd_max & MASK
    args = (seq, ack, ACK | PSH, 65535, b"hello", 0.01)

    sub = Sub.__new__(Sub)
    for name in TcpConnection.__slots__:
        setattr(sub, name, getattr(clone(conn), name))
    before = fallbacks()[0]
    assert sub.fast_input(*args) == 2
    assert fallbacks()[0] == before + 1

    odd = [
        (seq, ack, ACK, 65535, memoryview(b"abcd").cast("H"), 0.01),   # len() counts 2 items
        (seq, ack, ACK, 65535, memoryview(b"abcdef")[::2], 0.01),      # not contiguous
        (seq, ack, ACK, 65535, memoryview(b"abcd").cast("b"), 0.01),   # signed bytes: fine
        (seq, ack, ACK, 65535, b"x", 1),                                 # an int time
        (seq, ack, ACK, -1, b"x", 0.01),                                 # a negative window
        (seq, ack, ACK, 2**40, b"x", 0.01),                              # a huge window
        (seq, ack, ACK, 65535, "text", 0.01),                            # not a buffer
        (seq, ack, ACK, 65535, b"x", None),                              # no time
        (float(seq), ack, ACK, 65535, b"x", 0.01),
        (seq, ack, TcpFlags.ACK, 65535, b"x", 0.01),                     # an IntFlag: not exact int
        (seq + 2**64, ack, ACK, 65535, b"x", 0.01),
        (seq, ack - 2**64, ACK, 65535, b"x", 0.01),
    ]
    for a in odd:
        compare_fast_input(conn, *a)
    released = memoryview(b"abc")
    released.release()
    compare_fast_input(conn, seq, ack, ACK, 65535, released, 0.01)

    # keyword arguments and wrong argument counts: Python's handling (and TypeError)
    a = clone(conn)
    before = fallbacks()[0]
    assert a.fast_input(seq, ack, ACK, 65535, b"z", now=0.01) == 1
    assert fallbacks()[0] == before + 1
    with pytest.raises(TypeError):
        a.fast_input(seq, ack)
    with pytest.raises(TypeError):
        TcpConnection.fast_input(object(), *args)
    with pytest.raises(TypeError):
        a.poll_data()


@needs_c
def test_unusual_state_goes_to_python() -> None:
    """Unexpected types or unset slots in the connection's state: Python's result (or error)."""
    base = established(TcpConfig(push_ack_delay=0.001))
    base.send(b"q" * 100)
    base.poll(0.002)
    seq, ack = base._rcv_nxt & MASK, base._snd_max & MASK

    class OddCounters(type(base.counters)):
        __slots__ = ()

    changes = [
        lambda c: None,
        lambda c: setattr(c._rtt, "rto", 100.0),   # above config.max_rto
        lambda c: setattr(c, "_ka_idle", 3) or setattr(c, "_keepalive_sent", 2),
        lambda c: setattr(c, "_backoff", 3) or setattr(c, "_rto_deadline", None),
        lambda c: setattr(c, "_backoff", 31) or setattr(c, "_rto_deadline", None),
        lambda c: setattr(c, "_backoff", -1) or setattr(c, "_rto_deadline", None),
        lambda c: setattr(c, "_snd_wnd", 0) or setattr(c, "_persist_backoff", 2),
        lambda c: setattr(c, "_persist_backoff", 2) or setattr(c, "_persist_deadline", 5.0),  # SWS hold
        lambda c: setattr(c, "_ack_now", 1),
        lambda c: setattr(c, "_ack_now", None),
        lambda c: setattr(c, "_rtt_time", "soon"),
        lambda c: setattr(c._rtt, "rto", 0.5),
        lambda c: setattr(c._rtt, "srtt", 1),
        lambda c: setattr(c, "_ka_idle", 3),
        lambda c: setattr(c, "_delack_deadline", 0.005),
        lambda c: setattr(c, "_rcv_wscale", 3),
        lambda c: setattr(c, "_ctl", ()),
        lambda c: setattr(c, "counters", OddCounters()),
        lambda c: setattr(c, "_sndbuf", bytes(c._sndbuf)),
        lambda c: delattr(c, "_unacked_rcv"),
        lambda c: delattr(c._cc, "cwnd"),
        lambda c: setattr(c._cc, "ssthresh", 2**70),
        lambda c: setattr(c._cc, "_ca_bytes", 0.5) or setattr(c._cc, "ssthresh", 1),
        lambda c: setattr(c, "_rtt_seq", 2**80),
    ]
    for change in changes:
        for payload, acked in ((b"", 100), (b"hello", 100), (b"", 40), (b"hello", 0)):
            conn = clone(base)
            change(conn)
            compare_fast_input(conn, seq, (ack - 100 + acked) & MASK, ACK | PSH, 65535, payload, 0.01)
            conn.send(b"more")
            compare_poll_data(conn, 0.01)
            conn._snd_nxt = conn._snd_max = conn._snd_buf_seq + len(conn._sndbuf) - 4
            compare_poll_data(conn, 0.01)


@needs_c
@pytest.mark.parametrize("buf", ["_sndbuf", "_rcvbuf"])
def test_exported_buffers_raise_as_in_python(buf: str) -> None:
    """`del sndbuf[:k]` / `rcvbuf += payload` with a view on the buffer: BufferError, as in Python."""
    base = established(TcpConfig())
    base.send(b"q" * 100)
    base.poll(0.002)
    args = (base._rcv_nxt & MASK, (base._snd_max - 50) & MASK, ACK, 65535, b"data", 0.01)
    a, b = clone(base), clone(base)
    views = [memoryview(getattr(a, buf)), memoryview(getattr(b, buf))]
    before = fallbacks()[0]
    ra = call(a.fast_input, *args)
    assert fallbacks()[0] == before + 1
    assert ra == call(TcpConnection._fast_input_py, b, *args)
    assert ra[0] == "raised" and ra[1] == "BufferError"
    for v in views:
        v.release()
    assert snapshot(a) == snapshot(b)
