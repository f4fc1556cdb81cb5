"""The TCP fast paths against the general ones: the same segments out, the same state after.

``TcpConnection.fast_input`` (header prediction, called by the stack for segments without
options) and ``TcpConnection._poll_one`` (``poll`` for one new segment of queued data) must
have exactly the effects of ``on_segment`` and the general ``poll``.  Two twin connections
get the same handshake and then the same random request/response traffic: one through the
fast paths (falling back as the stack does), the other with them switched off.  After every
step both must send the same segments, and every field of the two TCBs must be equal.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libos.inet.stack import Stack
from libos.inet.tcp import TcpConfig, TcpConnection, TcpState
from libos.inet.wire import Ipv4Address, TcpFlags, TcpOptions, TcpSegment

MASK = 0xFFFFFFFF
LOCAL_ADDR = int(Ipv4Address("10.0.0.1"))
REMOTE_ADDR = int(Ipv4Address("10.0.0.2"))
LOCAL_PORT, REMOTE_PORT = 6379, 49500
ISS = 4_294_960_000          # our sequence numbers wrap during the test
REMOTE_ISS = 2**32 - 100     # and so do the peer's


class _Isn(random.Random):
    def getrandbits(self, k: int) -> int:
        return ISS


class SlowConnection(TcpConnection):
    """The general paths only."""

    __slots__ = ()

    def fast_input(self, *args: object) -> int:
        return 0

    def _poll_one(self, now: float) -> None:
        return None


def _conn(cls: type, config: TcpConfig) -> TcpConnection:
    return cls(LOCAL_PORT, REMOTE_PORT, local_addr=LOCAL_ADDR, remote_addr=REMOTE_ADDR, config=config,
               rng=_Isn(0))


def _deliver(conn: TcpConnection, seg: TcpSegment, now: float) -> int:
    """What Stack.receive does with a segment for an existing connection."""
    if not seg.options:
        r = conn.fast_input(seg.seq, seg.ack, int(seg.flags), seg.window, seg.payload, now)
        if r:
            return r
    conn.on_segment(seg, now)
    return 0


def _snapshot(conn: TcpConnection) -> dict:
    out = {}
    for name in TcpConnection.__slots__:
        if name in ("_active", "_dirty", "_rng", "config"):
            continue
        v = getattr(conn, name)
        if name == "counters":
            v = v.as_dict()
        elif name == "_rtt":
            v = (v.srtt, v.rttvar, v.rto, v.samples)
        elif name == "_cc":
            v = tuple(getattr(v, s) for s in type(v).__slots__)
        elif name == "_ooo":
            v = (len(v), tuple(v.sack_blocks(8)))
        elif isinstance(v, bytearray):
            v = bytes(v)
        out[name] = v
    return out


class Twins:
    def __init__(self, config: TcpConfig) -> None:
        self.fast = _conn(TcpConnection, config)
        self.slow = _conn(SlowConnection, config)
        self.now = 0.0
        self.peer_nxt = REMOTE_ISS       # the peer's next sequence number
        self.peer_acked = ISS            # what the peer has acknowledged of ours
        self.we_sent = ISS               # the end of what we have sent
        self.taken = 0                   # fast-path hits (the test must exercise them)
        for c in (self.fast, self.slow):
            c.connect(0.0)
        self.poll()
        syn_ack = TcpSegment(REMOTE_PORT, LOCAL_PORT, REMOTE_ISS, (ISS + 1) & MASK,
                             TcpFlags.SYN | TcpFlags.ACK, 65535,
                             options=TcpOptions.build(mss=1460, sack_permitted=True, window_scale=2))
        self.peer_nxt += 1
        self.peer_acked = self.we_sent = ISS + 1
        self.rx(syn_ack)
        self.poll()
        assert self.fast.state is TcpState.ESTABLISHED

    def rx(self, seg: TcpSegment) -> None:
        self.taken += bool(_deliver(self.fast, seg, self.now))
        _deliver(self.slow, seg, self.now)

    def poll(self) -> list:
        a = self.fast.poll(self.now)
        b = self.slow.poll(self.now)
        assert a == b, f"\n fast {a}\n slow {b}"
        for seg in a:
            end = (seg.seq + len(seg.payload)) & MASK
            if (end - self.we_sent) & MASK < 0x80000000:
                self.we_sent = end
        self.check()
        assert self.fast.next_deadline() == self.slow.next_deadline()
        return a

    def check(self) -> None:
        a, b = _snapshot(self.fast), _snapshot(self.slow)
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        assert not diff, diff

    def peer_sends(self, n: int, push: bool, ack_part: float, window: int, gap: int = 0) -> None:
        outstanding = (self.we_sent - self.peer_acked) & MASK
        ack = (self.peer_acked + int(outstanding * ack_part)) & MASK
        flags = TcpFlags.ACK | (TcpFlags.PSH if push and n else TcpFlags(0))
        data = bytes((self.peer_nxt + i) & 0xFF for i in range(n))
        self.rx(TcpSegment(REMOTE_PORT, LOCAL_PORT, (self.peer_nxt + gap) & MASK, ack, flags, window,
                           payload=data))
        if not gap:
            self.peer_nxt = (self.peer_nxt + n) & MASK
        self.peer_acked = ack

    def app(self, send: int, recv: bool) -> None:
        if recv:
            assert self.fast.recv() == self.slow.recv()
        if send:
            data = bytes(i & 0xFF for i in range(send))
            assert self.fast.send(data) == self.slow.send(data)


_STEP = st.one_of(
    st.tuples(st.just("peer"), st.integers(0, 3000), st.booleans(), st.sampled_from([0.0, 0.5, 1.0]),
              st.sampled_from([0, 200, 16383, 65535])),
    st.tuples(st.just("ooo"), st.integers(1, 500), st.integers(1, 3000)),
    st.tuples(st.just("app"), st.integers(0, 5000), st.booleans()),
    st.tuples(st.just("time"), st.sampled_from([0.0002, 0.0015, 0.05, 0.3, 2.0])),
)


@pytest.mark.parametrize("config", [
    TcpConfig(push_ack_delay=0.001),
    TcpConfig(recv_buffer_size=4096, send_buffer_size=8192, nagle=True),
    TcpConfig(delayed_ack=None, keepalive_idle=1.0),
], ids=["push-ack-delay", "small-buffers-nagle", "no-delack-keepalive"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=5, max_size=40))
def test_fast_paths_match_the_general_paths(config: TcpConfig, steps: list) -> None:
    t = Twins(config)
    for step in steps:
        kind = step[0]
        if kind == "peer":
            t.peer_sends(step[1], step[2], step[3], step[4])
        elif kind == "ooo":
            t.peer_sends(step[1], True, 1.0, 65535, gap=step[2])
        elif kind == "app":
            t.app(step[1], step[2])
        else:
            t.now += step[1]
        t.check()
        t.poll()
        if t.fast.state is not TcpState.ESTABLISHED:
            break


def test_request_response_takes_the_fast_paths() -> None:
    """The redis-like exchange the fast paths exist for: every segment takes them."""
    t = Twins(TcpConfig(push_ack_delay=0.001))
    for i in range(50):
        t.peer_sends(30, True, 1.0, 65535)       # a request, acknowledging our last reply
        t.now += 0.0001
        t.poll()                                  # nothing yet: the ACK waits for the reply
        t.app(5, True)                            # the application reads and replies
        out = t.poll()
        assert len(out) == 1 and out[0].payload and out[0].ack == t.peer_nxt
        t.now += 0.0001
    assert t.taken == 50


def test_stack_takes_the_fast_path_for_established_segments() -> None:
    """Stack.receive hands an option-less in-order segment to fast_input (no TcpSegment)."""
    from libos.inet.device import WireLink

    link = WireLink(seed=3)
    a = Stack(link.a.mac, "10.0.0.1", rng=random.Random(1))
    b = Stack(link.b.mac, "10.0.0.2", rng=random.Random(2))
    port = 7000
    a.tcp_reserve(port)
    lst = a.tcp_listen(port)
    cb = b.tcp_connect(int(Ipv4Address("10.0.0.1")), port, 0.0)
    now = 0.0
    calls = []
    orig = TcpConnection.fast_input

    def spy(self, *args):
        r = orig(self, *args)
        calls.append(r)
        return r

    TcpConnection.fast_input = spy
    try:
        ca = None
        for _ in range(200):
            now += 0.001
            for stack, dev in ((a, link.a), (b, link.b)):
                dev.transmit(stack.poll(now))
            link.advance(now)
            for stack, dev in ((a, link.a), (b, link.b)):
                for data, nr in dev.receive():
                    stack.receive(data, now, not nr)
            if ca is None:
                ca = a.tcp_accept(lst)
                if ca is not None:
                    cb.send(b"x" * 100)
            elif ca.readable >= 100 and not ca.send_queued and not cb.readable:
                ca.recv()
                ca.send(b"y" * 10)
            if cb.readable:
                break
    finally:
        TcpConnection.fast_input = orig
    assert cb.recv() == b"y" * 10
    assert any(r for r in calls), calls
