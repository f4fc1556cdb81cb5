"""Tests of the sans-IO TCP state machine (libos/inet/tcp).

Everything runs on a virtual clock: a test feeds segments with ``rx(...)`` at a
time it chooses and checks the *exact* list of segments ``poll`` returns with
``tx(...)`` (an empty ``tx()`` means "nothing").  Fixtures drive a connection
into each state through the public API, one group of tests per state.

Numbering: our ISN is LOCAL_ISS and our first data byte is L; the peer's ISN
is REMOTE_ISS = 2**32 - 10, so the peer's sequence numbers wrap after its
ninth data byte in every test that receives data (R is its first byte).

The last groups connect two TcpConnections through a simulated link with
seeded loss, duplication, reordering and delay and compare SHA-256 of 1 MB
sent each way (TCP_WIRE_BYTES=10485760 in the environment for the 10 MB
target), and property-test reassembly and sequence wrap-around.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libos.inet.tcp import (
    NewReno,
    OutOfOrderQueue,
    OutSegment,
    RttEstimator,
    TcpConfig,
    TcpConnection,
    TcpListener,
    TcpState,
    initial_window,
    reset_for,
)
from libos.inet.wire import Ipv4Address, TcpFlags, TcpOptions, TcpSegment, seq_add
from libos.inet.wire.tcp_options import NO_OPTIONS

MASK = 0xFFFFFFFF
LOCAL_ADDR = int(Ipv4Address("10.0.0.1"))
REMOTE_ADDR = int(Ipv4Address("10.0.0.2"))
LOCAL_PORT = 80
REMOTE_PORT = 49500
LOCAL_ISS = 10000
REMOTE_ISS = 2**32 - 10
L = LOCAL_ISS + 1     # our first data byte
R = REMOTE_ISS + 1    # the peer's first data byte (R + 9 wraps to 0)
WIN = 65535           # our window with CFG and an empty receive queue
WIN_FIN = WIN - 1     # after the peer's FIN: it takes a sequence number, and receiver SWS
                      # avoidance does not move the right edge by a single byte
PEER_WIN = 65535
MSS = 1460
PEER_SYN_OPTS = TcpOptions.build(mss=1460, sack_permitted=True, window_scale=0)
OUR_SYN_OPTS = TcpOptions.build(mss=1460, sack_permitted=True, window_scale=0)

CFG = TcpConfig(recv_buffer_size=65535, send_buffer_size=65536, msl=0.5, fin_wait_2_timeout=10.0)

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_FLAG_LETTERS = {"S": TcpFlags.SYN, "A": TcpFlags.ACK, "P": TcpFlags.PSH, "F": TcpFlags.FIN, "R": TcpFlags.RST}


def flags_of(letters: str) -> TcpFlags:
    f = TcpFlags(0)
    for ch in letters:
        f |= _FLAG_LETTERS[ch]
    return f


def ours(seq: int, ack: int | None = None, flags: str = "A", win: int = WIN, payload: bytes = b"",
         options: TcpOptions = NO_OPTIONS) -> OutSegment:
    """A segment we expect the connection under test to send."""
    return OutSegment(
        LOCAL_PORT, REMOTE_PORT, seq & MASK, 0 if ack is None else ack & MASK, flags_of(flags), win,
        options, payload, LOCAL_ADDR, REMOTE_ADDR,
    )


def theirs(seq: int, ack: int | None = None, flags: str = "A", win: int = PEER_WIN, payload: bytes = b"",
           options: TcpOptions = NO_OPTIONS, sport: int = REMOTE_PORT) -> TcpSegment:
    """A segment from the peer, as the wire layer would parse it."""
    return TcpSegment(sport, LOCAL_PORT, seq & MASK, 0 if ack is None else ack & MASK, flags_of(flags), win,
                      options=options, payload=payload)


class FixedIsn(random.Random):
    """An rng whose getrandbits(32) always returns the ISN we want."""

    def __init__(self, isn: int) -> None:
        super().__init__(0)
        self.isn = isn

    def getrandbits(self, k: int) -> int:
        return self.isn


class Tcp:
    """One connection on a virtual clock, with packetdrill-like helpers."""

    def __init__(self, conn: TcpConnection, now: float = 0.0) -> None:
        self.conn = conn
        self.now = now

    def at(self, t: float) -> Tcp:
        assert t >= self.now, "virtual time only moves forward"
        self.now = t
        return self

    def rx(self, seq: int, ack: int | None = None, flags: str = "A", *, at: float | None = None, **kw) -> None:
        if at is not None:
            self.at(at)
        self.conn.on_segment(theirs(seq, ack, flags, **kw), self.now)

    def poll(self, at: float | None = None) -> list[OutSegment]:
        if at is not None:
            self.at(at)
        return self.conn.poll(self.now)

    def tx(self, *expected: OutSegment, at: float | None = None) -> None:
        got = self.poll(at)
        assert got == list(expected), f"\n got      {got}\n expected {list(expected)}"

    def tx_at_deadline(self, when: float, *expected: OutSegment) -> None:
        """The next timer is due at ``when`` (give or take float rounding): nothing
        before it, then exactly ``expected`` when it fires."""
        deadline = self.conn.next_deadline()
        assert deadline == pytest.approx(when), (deadline, when)
        self.tx(at=deadline - 0.001)
        self.tx(*expected, at=deadline)

    @property
    def state(self) -> TcpState:
        return self.conn.state


def new_conn(config: TcpConfig = CFG, iss: int = LOCAL_ISS) -> TcpConnection:
    return TcpConnection(LOCAL_PORT, REMOTE_PORT, local_addr=LOCAL_ADDR, remote_addr=REMOTE_ADDR,
                         config=config, rng=FixedIsn(iss))


# ---------------------------------------------------------------- fixtures per state

def syn_sent(config: TcpConfig = CFG, iss: int = LOCAL_ISS) -> Tcp:
    t = Tcp(new_conn(config, iss))
    t.conn.connect(0.0)
    syn_opts = TcpOptions.build(mss=config.mss, sack_permitted=config.sack,
                                window_scale=config.offered_window_scale if config.window_scaling else None)
    t.tx(ours(iss, None, "S", min(config.recv_buffer_size, 0xFFFF), options=syn_opts))
    assert t.state is TcpState.SYN_SENT
    return t


def established(config: TcpConfig = CFG, iss: int = LOCAL_ISS, peer_opts: TcpOptions = PEER_SYN_OPTS,
                peer_win: int = PEER_WIN) -> Tcp:
    t = syn_sent(config, iss)
    t.rx(REMOTE_ISS, iss + 1, "SA", win=peer_win, options=peer_opts)
    t.tx(ours(iss + 1, R, "A", min(config.recv_buffer_size >> t.conn.window_scales[1], 0xFFFF)))
    assert t.state is TcpState.ESTABLISHED
    return t


def syn_received(config: TcpConfig = CFG) -> Tcp:
    conn = new_conn(config)
    conn.accept_syn(theirs(REMOTE_ISS, None, "S", options=PEER_SYN_OPTS), 0.0)
    t = Tcp(conn)
    t.tx(ours(LOCAL_ISS, R, "SA", options=OUR_SYN_OPTS))
    assert t.state is TcpState.SYN_RECEIVED
    return t


def fin_wait_1(config: TcpConfig = CFG) -> Tcp:
    t = established(config)
    t.conn.close()
    t.tx(ours(L, R, "FA"))
    assert t.state is TcpState.FIN_WAIT_1
    return t


def fin_wait_2(config: TcpConfig = CFG) -> Tcp:
    t = fin_wait_1(config)
    t.rx(R, L + 1)
    t.tx()
    assert t.state is TcpState.FIN_WAIT_2
    return t


def closing(config: TcpConfig = CFG) -> Tcp:
    t = fin_wait_1(config)
    t.rx(R, L, "FA")          # the peer's FIN crosses ours: it does not ACK our FIN yet
    t.tx(ours(L + 1, R + 1, "A", WIN_FIN))
    assert t.state is TcpState.CLOSING
    return t


def time_wait(config: TcpConfig = CFG) -> Tcp:
    t = fin_wait_2(config)
    t.rx(R, L + 1, "FA")
    t.tx(ours(L + 1, R + 1, "A", WIN_FIN))
    assert t.state is TcpState.TIME_WAIT
    return t


def close_wait(config: TcpConfig = CFG) -> Tcp:
    t = established(config)
    t.rx(R, L, "FA")
    t.tx(ours(L, R + 1, "A", WIN_FIN))
    assert t.state is TcpState.CLOSE_WAIT
    return t


def last_ack(config: TcpConfig = CFG) -> Tcp:
    t = close_wait(config)
    t.conn.close()
    t.tx(ours(L, R + 1, "FA", WIN_FIN))
    assert t.state is TcpState.LAST_ACK
    return t


def listener(**kw) -> TcpListener:
    return TcpListener(LOCAL_PORT, local_addr=LOCAL_ADDR, config=CFG, rng=FixedIsn(LOCAL_ISS), **kw)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# =============================================================================== LISTEN

def test_listen_syn_creates_half_open_connection_and_syn_ack() -> None:
    lst = listener()
    assert lst.state is TcpState.LISTEN
    lst.on_segment(theirs(REMOTE_ISS, None, "S", options=PEER_SYN_OPTS), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.half_open == 1 and lst.accept() is None
    assert lst.poll(0.0) == [ours(LOCAL_ISS, R, "SA", options=OUR_SYN_OPTS)]


def test_listen_syn_ack_carries_only_the_options_the_peer_offered() -> None:
    lst = listener()
    lst.on_segment(theirs(REMOTE_ISS, None, "S"), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.poll(0.0) == [ours(LOCAL_ISS, R, "SA", options=TcpOptions.build(mss=1460))]
    lst.on_segment(theirs(R, L), 0.1, remote_addr=REMOTE_ADDR)
    conn = lst.accept()
    assert conn is not None and conn.state is TcpState.ESTABLISHED
    assert conn.snd_mss == 536                      # RFC 9293: no MSS option means 536
    assert conn.window_scales == (0, 0) and not conn.sack_permitted


def test_listen_handshake_then_accept_hands_over_the_connection() -> None:
    lst = listener()
    lst.on_segment(theirs(REMOTE_ISS, None, "S", options=PEER_SYN_OPTS), 0.0, remote_addr=REMOTE_ADDR)
    lst.poll(0.0)
    lst.on_segment(theirs(R, L, "PA", payload=b"hello"), 0.05, remote_addr=REMOTE_ADDR)
    assert lst.pending == 1 and lst.half_open == 0
    # Until accept(), the listener still routes and polls the connection.
    assert lst.poll(0.05) == [ours(L, R + 5, "A", WIN - 5)]
    conn = lst.accept()
    assert conn.four_tuple == (LOCAL_ADDR, LOCAL_PORT, REMOTE_ADDR, REMOTE_PORT)
    assert conn.recv() == b"hello" and lst.accept() is None
    assert conn.srtt == pytest.approx(0.05)


def test_listen_ignores_rst() -> None:
    lst = listener()
    lst.on_segment(theirs(1234, None, "R"), 0.0, remote_addr=REMOTE_ADDR)
    lst.on_segment(theirs(1234, 99, "RA"), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.poll(0.0) == [] and lst.half_open == 0


def test_listen_answers_any_ack_with_reset_at_seg_ack() -> None:
    lst = listener()
    lst.on_segment(theirs(1234, 5678, "PA", payload=b"x"), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.poll(0.0) == [ours(5678, None, "R", 0)]


def test_listen_drops_segments_without_syn_ack_or_rst() -> None:
    lst = listener()
    lst.on_segment(theirs(1234, None, "F"), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.poll(0.0) == [] and lst.half_open == 0


def test_listen_retransmitted_syn_gets_the_syn_ack_again() -> None:
    lst = listener()
    syn = theirs(REMOTE_ISS, None, "S", options=PEER_SYN_OPTS)
    lst.on_segment(syn, 0.0, remote_addr=REMOTE_ADDR)
    synack = ours(LOCAL_ISS, R, "SA", options=OUR_SYN_OPTS)
    assert lst.poll(0.0) == [synack]
    lst.on_segment(syn, 0.5, remote_addr=REMOTE_ADDR)
    assert lst.poll(0.5) == [synack] and lst.half_open == 1


def test_listen_syn_backlog_drops_the_oldest_half_open_connection() -> None:
    lst = listener(backlog=4, syn_backlog=2)
    for port in (1001, 1002, 1003):
        lst.on_segment(theirs(REMOTE_ISS, None, "S", sport=port), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.half_open == 2 and lst.syn_backlog_drops == 1
    lst.poll(0.0)
    # The oldest (port 1001) is gone: its ACK now gets a RST from the listener.
    lst.on_segment(theirs(R, L, sport=1001), 0.1, remote_addr=REMOTE_ADDR)
    rst = lst.poll(0.1)
    assert len(rst) == 1 and rst[0].flags == TcpFlags.RST and rst[0].dst_port == 1001
    lst.on_segment(theirs(R, L, sport=1003), 0.1, remote_addr=REMOTE_ADDR)
    assert lst.accept().remote_port == 1003


def test_listen_full_accept_queue_drops_new_syns() -> None:
    lst = listener(backlog=1)
    lst.on_segment(theirs(REMOTE_ISS, None, "S", sport=1001), 0.0, remote_addr=REMOTE_ADDR)
    lst.poll(0.0)
    lst.on_segment(theirs(R, L, sport=1001), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.pending == 1
    lst.on_segment(theirs(REMOTE_ISS, None, "S", sport=1002), 0.0, remote_addr=REMOTE_ADDR)
    assert lst.poll(0.0) == [] and lst.accept_queue_drops == 1 and lst.half_open == 0


def test_listen_half_open_connection_gives_up_after_syn_ack_retries() -> None:
    cfg = TcpConfig(recv_buffer_size=65535, synack_retries=2)
    lst = TcpListener(LOCAL_PORT, local_addr=LOCAL_ADDR, config=cfg, rng=FixedIsn(LOCAL_ISS))
    lst.on_segment(theirs(REMOTE_ISS, None, "S"), 0.0, remote_addr=REMOTE_ADDR)
    times = []
    t = 0.0
    while lst.half_open and t < 100:
        if lst.poll(t):
            times.append(t)
        t = lst.next_deadline() if lst.half_open else t
    assert times == [0.0, 1.0, 3.0]    # SYN-ACK, then 2 retransmissions 1 s and 2 s apart
    assert lst.half_open == 0


def test_listen_close_resets_connections_not_yet_accepted() -> None:
    lst = listener()
    lst.on_segment(theirs(REMOTE_ISS, None, "S"), 0.0, remote_addr=REMOTE_ADDR)
    lst.poll(0.0)
    lst.on_segment(theirs(R, L), 0.0, remote_addr=REMOTE_ADDR)
    lst.close()
    assert lst.state is TcpState.CLOSED
    assert lst.poll(0.0) == [ours(L, R, "RA", 0)]
    lst.on_segment(theirs(REMOTE_ISS, None, "S", sport=2000), 0.0, remote_addr=REMOTE_ADDR)
    assert [s.flags for s in lst.poll(0.0)] == [TcpFlags.RST | TcpFlags.ACK]


def test_reset_for_segments_to_a_closed_port() -> None:
    # RFC 9293 3.10.7.1: with ACK -> <SEQ=SEG.ACK><CTL=RST>, else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    assert reset_for(theirs(MASK, None, "S")) == OutSegment(LOCAL_PORT, REMOTE_PORT, 0, 0, flags_of("RA"), 0)
    assert reset_for(theirs(7, 99, "PA", payload=b"abc")) == OutSegment(LOCAL_PORT, REMOTE_PORT, 99, 0,
                                                                         TcpFlags.RST, 0)
    assert reset_for(theirs(7, None, "F", payload=b"abc")).ack == 11
    assert reset_for(theirs(7, 99, "RA")) is None


# ============================================================================= SYN_SENT

def test_syn_sent_emits_syn_with_mss_sack_and_window_scale() -> None:
    t = syn_sent()                # the fixture checks the exact SYN
    assert t.conn.next_deadline() == pytest.approx(1.0)   # RFC 6298 initial RTO
    assert t.conn.iss == LOCAL_ISS


def test_syn_sent_syn_ack_establishes_and_negotiates() -> None:
    t = syn_sent()
    t.rx(REMOTE_ISS, L, "SA", win=1000, options=TcpOptions.build(mss=1400, sack_permitted=True, window_scale=7),
         at=0.03)
    t.tx(ours(L, R))
    c = t.conn
    assert c.state is TcpState.ESTABLISHED
    assert c.snd_mss == 1400 and c.sack_permitted and c.window_scales == (7, 0)
    assert c.snd_wnd == 1000          # the window of a SYN is never scaled
    assert c.irs == REMOTE_ISS and c.rcv_nxt == R & MASK
    assert c.srtt == pytest.approx(0.03) and c.rto == pytest.approx(0.2)  # 0.03 + 4*0.015 < 200 ms minimum
    assert c.cwnd == initial_window(1400) == 3 * 1400


def test_syn_sent_window_scale_and_sack_only_when_both_sides_offer() -> None:
    t = syn_sent(TcpConfig(recv_buffer_size=1 << 20))
    t.rx(REMOTE_ISS, L, "SA", options=TcpOptions.build(mss=1460))
    assert t.conn.window_scales == (0, 0) and not t.conn.sack_permitted
    # Without window scaling we can advertise at most 65535 bytes.
    assert t.poll() == [ours(L, R, "A", 65535)]


def test_syn_sent_our_window_scale_fits_the_receive_buffer() -> None:
    cfg = TcpConfig(recv_buffer_size=1 << 20)
    assert cfg.offered_window_scale == 5           # 2**20 >> 5 == 32768 <= 65535
    t = syn_sent(cfg)
    t.rx(REMOTE_ISS, L, "SA", options=TcpOptions.build(mss=1460, window_scale=2))
    assert t.conn.window_scales == (2, 5)
    assert t.poll() == [ours(L, R, "A", (1 << 20) >> 5)]


def test_syn_sent_syn_retransmission_backs_off_1_2_4_then_etimedout() -> None:
    t = syn_sent(TcpConfig(recv_buffer_size=65535, syn_retries=3))
    syn = ours(LOCAL_ISS, None, "S", options=OUR_SYN_OPTS)
    t.tx(at=0.999)
    t.tx(syn, at=1.0)
    t.tx(at=2.999)
    t.tx(syn, at=3.0)
    t.tx(syn, at=7.0)
    assert t.conn.next_deadline() == pytest.approx(15.0)
    t.tx(at=15.0)                # the 4th timeout exceeds syn_retries=3
    assert t.state is TcpState.CLOSED and t.conn.error == errno.ETIMEDOUT
    assert t.conn.counters.retransmits == 3
    with pytest.raises(TimeoutError):
        t.conn.send(b"x")


def test_syn_sent_karn_no_rtt_sample_from_retransmitted_syn() -> None:
    t = syn_sent()
    t.tx(ours(LOCAL_ISS, None, "S", options=OUR_SYN_OPTS), at=1.0)
    t.rx(REMOTE_ISS, L, "SA", at=1.05)
    assert t.conn.srtt is None and t.conn.rto == pytest.approx(1.0)


def test_syn_sent_rst_with_acceptable_ack_is_connection_refused() -> None:
    t = syn_sent()
    t.rx(0, L, "RA")
    t.tx()
    assert t.state is TcpState.CLOSED and t.conn.error == errno.ECONNREFUSED
    with pytest.raises(ConnectionRefusedError):
        t.conn.recv()


def test_syn_sent_rst_without_ack_or_with_bad_ack_is_ignored() -> None:
    t = syn_sent()
    t.rx(0, None, "R")
    t.rx(0, L + 5, "RA")
    t.tx()
    assert t.state is TcpState.SYN_SENT and t.conn.error is None


def test_syn_sent_unacceptable_ack_gets_reset() -> None:
    t = syn_sent()
    t.rx(REMOTE_ISS, LOCAL_ISS, "SA")       # acks our ISN itself: not acceptable
    t.tx(ours(LOCAL_ISS, None, "R", 0))
    t.rx(REMOTE_ISS, L + 1000, "A")
    t.tx(ours(L + 1000, None, "R", 0))
    assert t.state is TcpState.SYN_SENT


def test_syn_sent_plain_segment_without_syn_is_dropped() -> None:
    t = syn_sent()
    t.rx(REMOTE_ISS, L, "A")                  # acceptable ACK, but no SYN
    t.rx(REMOTE_ISS, None, "P", payload=b"x")  # neither SYN nor ACK
    t.tx()
    assert t.state is TcpState.SYN_SENT


def test_syn_sent_simultaneous_open() -> None:
    t = syn_sent()
    t.rx(REMOTE_ISS, None, "S", options=PEER_SYN_OPTS, at=0.01)
    assert t.state is TcpState.SYN_RECEIVED
    t.tx(ours(LOCAL_ISS, R, "SA", options=OUR_SYN_OPTS))
    t.rx(REMOTE_ISS, L, "SA", win=5000, at=0.02)   # their SYN-ACK acknowledges our SYN
    assert t.state is TcpState.ESTABLISHED and t.conn.snd_wnd == 5000
    t.tx(ours(L, R))
    t.rx(R, L, "A", at=0.03)                       # and the ACK of our SYN-ACK is a plain ACK
    t.tx()
    assert t.state is TcpState.ESTABLISHED


def test_simultaneous_open_between_two_connections() -> None:
    a = TcpConnection(1, 2, config=CFG, rng=FixedIsn(100))
    b = TcpConnection(2, 1, config=CFG, rng=FixedIsn(2**32 - 1))
    a.connect(0.0)
    b.connect(0.0)
    sa, sb = a.poll(0.0), b.poll(0.0)              # both SYNs cross
    for s in sa:
        b.on_segment(s.to_wire(), 0.01)
    for s in sb:
        a.on_segment(s.to_wire(), 0.01)
    assert a.state is b.state is TcpState.SYN_RECEIVED
    sa, sb = a.poll(0.01), b.poll(0.01)            # both SYN-ACKs cross
    for s in sa:
        b.on_segment(s.to_wire(), 0.02)
    for s in sb:
        a.on_segment(s.to_wire(), 0.02)
    assert a.state is b.state is TcpState.ESTABLISHED
    a.send(b"ping")
    for s in a.poll(0.02):
        b.on_segment(s.to_wire(), 0.03)
    assert b.recv() == b"ping"


def test_syn_sent_close_just_closes() -> None:
    t = syn_sent()
    t.conn.close()
    t.tx()
    assert t.state is TcpState.CLOSED and t.conn.error is None and t.conn.next_deadline() is None


def test_syn_sent_data_waits_for_the_handshake() -> None:
    t = syn_sent()
    assert t.conn.send(b"early") == 5
    t.tx()
    t.rx(REMOTE_ISS, L, "SA", options=PEER_SYN_OPTS)
    t.tx(ours(L, R, "PA", payload=b"early"))


def test_syn_sent_syn_ack_with_data_is_delivered() -> None:
    t = syn_sent()
    t.rx(REMOTE_ISS, L, "SA", payload=b"hi!")
    t.tx(ours(L, R + 3, "A", WIN - 3))
    assert t.conn.recv() == b"hi!"


def test_send_before_connect_raises_enotconn() -> None:
    c = new_conn()
    with pytest.raises(OSError) as info:
        c.send(b"x")
    assert info.value.errno == errno.ENOTCONN
    assert c.poll(0.0) == [] and c.next_deadline() is None
    with pytest.raises(RuntimeError):
        c.connect(0.0)
        c.connect(0.0)


# ========================================================================= SYN_RECEIVED

def test_syn_received_ack_establishes() -> None:
    t = syn_received()
    t.rx(R, L, at=0.02)
    t.tx()
    assert t.state is TcpState.ESTABLISHED and t.conn.srtt == pytest.approx(0.02)


def test_syn_received_unacceptable_ack_gets_reset() -> None:
    t = syn_received()
    t.rx(R, L + 7)
    t.tx(ours(L + 7, None, "R", 0))
    assert t.state is TcpState.SYN_RECEIVED


def test_syn_received_rst_from_passive_open_closes_quietly() -> None:
    t = syn_received()
    t.rx(R, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error is None


def test_syn_received_rst_after_simultaneous_open_is_refused() -> None:
    t = syn_sent()
    t.rx(REMOTE_ISS, None, "S")
    t.poll()
    t.rx(R, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error == errno.ECONNREFUSED


def test_syn_received_syn_ack_retransmitted_with_backoff() -> None:
    t = syn_received()
    synack = ours(LOCAL_ISS, R, "SA", options=OUR_SYN_OPTS)
    t.tx(synack, at=1.0)
    t.tx(at=2.9)
    t.tx(synack, at=3.0)


def test_syn_received_data_with_the_ack_is_delivered() -> None:
    t = syn_received()
    t.rx(R, L, "PA", payload=b"0123456789")     # R + 9 wraps around 2**32
    t.tx(ours(L, R + 10, "A", WIN - 10))
    assert t.conn.recv() == b"0123456789" and t.conn.rcv_nxt == 1


def test_syn_received_close_sends_fin_once_established() -> None:
    t = syn_received()
    t.conn.close()
    t.tx()
    t.rx(R, L)
    assert t.state is TcpState.FIN_WAIT_1
    t.tx(ours(L, R, "FA"))


def test_syn_received_in_window_syn_gets_challenge_ack() -> None:
    t = syn_received()
    t.rx(R + 100, None, "S")
    t.tx(ours(L, R))
    assert t.conn.counters.challenge_acks == 1 and t.state is TcpState.SYN_RECEIVED


# ========================================================================== ESTABLISHED

def test_established_sends_data_in_mss_segments_with_psh_on_the_last() -> None:
    t = established()
    data = payload(3000)
    assert t.conn.send(data) == 3000
    t.tx(ours(L, R, "A", payload=data[:1460]),
         ours(L + 1460, R, "A", payload=data[1460:2920]),
         ours(L + 2920, R, "PA", payload=data[2920:]))
    t.rx(R, L + 3000)
    assert t.conn.next_deadline() == 0.0        # an input arrived: poll() is due now
    t.tx()
    assert t.conn.snd_una == (L + 3000) & MASK and t.conn.send_queued == 0
    assert t.conn.next_deadline() is None       # nothing outstanding: no timer at all


def test_established_respects_the_peer_mss() -> None:
    t = established(peer_opts=TcpOptions.build(mss=536))
    data = payload(1000)
    t.conn.send(data)
    t.tx(ours(L, R, "A", payload=data[:536]), ours(L + 536, R, "PA", payload=data[536:]))


def test_established_initial_window_limits_the_first_flight() -> None:
    t = established()
    data = payload(10 * MSS)
    t.conn.send(data)
    segs = t.poll()
    assert [s.seq for s in segs] == [(L + i * MSS) & MASK for i in range(3)]   # IW = 3 * 1460
    t.rx(R, L + 2 * MSS)                              # slow start: +2 MSS for 2 MSS acked
    assert t.conn.cwnd == 5 * MSS
    assert [s.seq for s in t.poll()] == [(L + i * MSS) & MASK for i in range(3, 7)]


def test_established_send_buffer_is_bounded() -> None:
    t = established(TcpConfig(recv_buffer_size=65535, send_buffer_size=5000))
    assert t.conn.send(payload(8000)) == 5000
    assert t.conn.send(b"more") == 0 and t.conn.send_space == 0
    t.poll()
    t.rx(R, L + 1460)
    assert t.conn.send_space == 1460 and t.conn.send(b"x" * 2000) == 1460


def test_established_delayed_ack_after_40_ms() -> None:
    t = established()
    t.rx(R, L, "A", payload=b"a" * 100)
    t.tx()
    assert t.conn.next_deadline() == pytest.approx(0.04)
    t.tx(at=0.039)
    t.tx(ours(L, R + 100, "A", WIN - 100), at=0.04)
    assert t.conn.counters.delayed_acks == 1


def test_established_acks_every_second_full_segment_at_once() -> None:
    t = established()
    t.rx(R, L, "A", payload=b"a" * MSS)
    t.tx()
    t.rx(R + MSS, L, "A", payload=b"b" * MSS)
    t.tx(ours(L, R + 2 * MSS, "A", WIN - 2 * MSS))


def test_established_acks_push_at_once_and_delayed_acks_can_be_disabled() -> None:
    t = established()
    t.rx(R, L, "PA", payload=b"ping")
    t.tx(ours(L, R + 4, "A", WIN - 4))
    t2 = established(TcpConfig(recv_buffer_size=65535, delayed_ack=None))
    t2.rx(R, L, "A", payload=b"ping")
    t2.tx(ours(L, R + 4, "A", WIN - 4))


def test_established_ack_piggybacks_on_data() -> None:
    t = established()
    t.rx(R, L, "A", payload=b"question")
    t.conn.send(b"answer")
    t.tx(ours(L, R + 8, "PA", WIN - 8, payload=b"answer"))


def test_established_out_of_window_segment_gets_an_ack_and_is_dropped() -> None:
    t = established()
    t.rx(R + 70000, L, "PA", payload=b"far away")
    t.tx(ours(L, R))
    assert t.conn.readable == 0 and t.conn.counters.out_of_window == 1


def test_established_old_duplicate_data_gets_an_ack() -> None:
    t = established()
    t.rx(R, L, "PA", payload=b"abc")
    t.tx(ours(L, R + 3, "A", WIN - 3))
    t.rx(R, L, "PA", payload=b"abc")            # a spurious retransmission
    t.tx(ours(L, R + 3, "A", WIN - 3))
    assert t.conn.recv() == b"abc"


def test_established_overlapping_segment_is_trimmed() -> None:
    t = established()
    t.rx(R, L, "A", payload=b"hello")
    t.rx(R + 3, L, "PA", payload=b"lo world")
    assert t.conn.recv() == b"hello world"


def test_established_data_beyond_the_window_is_trimmed() -> None:
    t = established(TcpConfig(recv_buffer_size=4000))
    t.rx(R, L, "A", payload=payload(5000))
    assert t.conn.readable == 4000
    t.tx(ours(L, R + 4000, "A", 0))


def test_established_in_window_rst_not_at_rcv_nxt_gets_challenge_ack() -> None:
    t = established()
    t.rx(R + 1, None, "R")
    t.tx(ours(L, R))
    assert t.state is TcpState.ESTABLISHED and t.conn.counters.challenge_acks == 1


def test_established_rst_outside_the_window_is_ignored() -> None:
    t = established()
    t.rx(R + 100000, None, "R")
    t.rx(R - 1, None, "R")
    t.tx()
    assert t.state is TcpState.ESTABLISHED and t.conn.counters.rst_in == 2


def test_established_rst_at_rcv_nxt_resets_the_connection() -> None:
    t = established()
    t.rx(R, L, "A", payload=b"last words")
    t.rx(R + 10, None, "R")
    t.tx()
    c = t.conn
    assert c.state is TcpState.CLOSED and c.error == errno.ECONNRESET
    assert c.recv() == b"last words"            # queued data can still be read...
    with pytest.raises(ConnectionResetError):
        c.recv()                                # ...then the error
    with pytest.raises(ConnectionResetError):
        c.send(b"x")
    assert c.next_deadline() is None


def test_established_syn_gets_challenge_ack() -> None:
    t = established()
    t.rx(R + 5, None, "S")
    t.rx(12345, None, "S")                      # any sequence number (RFC 5961 4)
    t.tx(ours(L, R))
    assert t.conn.counters.challenge_acks == 2 and t.state is TcpState.ESTABLISHED


def test_established_challenge_acks_are_rate_limited() -> None:
    t = established(TcpConfig(recv_buffer_size=65535, challenge_ack_limit=3))
    for i in range(5):
        t.rx(R + 1 + i, None, "R")
        assert t.poll() == ([ours(L, R)] if i < 3 else [])
    assert t.conn.counters.challenge_acks == 3 and t.conn.counters.acks_rate_limited == 2
    t.rx(R + 1, None, "R", at=1.0)              # a new second
    t.tx(ours(L, R))


def test_established_ack_of_unsent_data_is_answered_and_dropped() -> None:
    t = established()
    t.rx(R, L + 50, "PA", payload=b"x")
    t.tx(ours(L, R))
    assert t.conn.readable == 0 and t.conn.counters.bad_acks == 1


def test_established_too_old_ack_gets_challenge_ack() -> None:
    t = established(peer_win=1000)
    t.rx(R, L - 5000)          # older than SND.UNA - MAX.SND.WND (RFC 5961 5.2)
    t.tx(ours(L, R))
    assert t.conn.counters.challenge_acks == 1


def test_established_old_segment_does_not_update_the_window() -> None:
    t = established()
    t.rx(R, L, "A", payload=b"x", win=5000)
    assert t.conn.snd_wnd == 5000
    t.rx(R, L, "A", win=9999)          # pure ACK at the same seq and ack: newer, updates
    assert t.conn.snd_wnd == 9999
    t.rx(R - 1, L, "A", win=1)         # older seq (SND.WL1 rule): ignored
    assert t.conn.snd_wnd == 9999


def test_established_three_dup_acks_trigger_retransmission_of_snd_una() -> None:
    t = established()
    data = payload(5 * MSS)
    t.conn.send(data)
    assert len(t.poll()) == 3
    t.rx(R, L)
    t.rx(R, L)
    t.tx()
    t.rx(R, L)                          # third duplicate: fast retransmit
    seg = [ours(L, R, payload=data[:MSS]),                      # SND.UNA again
           ours(L + 3 * MSS, R, payload=data[3 * MSS:4 * MSS]),  # cwnd = ssthresh + 3 MSS
           ours(L + 4 * MSS, R, "PA", payload=data[4 * MSS:])]
    t.tx(*seg)
    c = t.conn
    assert c.counters.dup_acks == 3 and c.counters.fast_retransmits == 1 and c.in_recovery
    assert c.ssthresh == 2 * MSS and c.cwnd == 5 * MSS


def test_established_newreno_partial_ack_retransmits_the_next_hole() -> None:
    t = established()
    data = payload(5 * MSS)
    t.conn.send(data)
    t.poll()
    for _ in range(3):
        t.rx(R, L)
    t.poll()
    t.rx(R, L + MSS)                    # partial ACK: below recover (L + 3 MSS)
    t.tx(ours(L + MSS, R, payload=data[MSS:2 * MSS]))
    assert t.conn.in_recovery
    t.rx(R, L + 5 * MSS)                # covers recover: recovery ends
    assert not t.conn.in_recovery and t.conn.cwnd == 2 * MSS   # min(ssthresh, flight + MSS)


def test_established_sack_blocks_count_as_duplicate_acks_even_with_data() -> None:
    t = established()
    data = payload(5 * MSS)
    t.conn.send(data)
    t.poll()
    for i in range(1, 4):               # the peer sends data and SACKs our segments 2..3
        sack = TcpOptions.build(sack_blocks=[((L + MSS) & MASK, (L + MSS + i * 500) & MASK)])
        t.rx(R + i - 1, L, "A", payload=b"z", options=sack)
    assert t.conn.counters.fast_retransmits == 1
    assert t.poll()[0] == ours(L, R + 3, "A", WIN - 3, payload=data[:MSS])


def test_established_rto_backs_off_1_2_4_8() -> None:
    t = established(TcpConfig(recv_buffer_size=65535, min_rto=1.0))
    t.conn.send(b"data")
    seg = ours(L, R, "PA", payload=b"data")
    t.tx(seg)
    for when in (1.0, 3.0, 7.0, 15.0):
        t.tx(at=when - 0.001)
        t.tx(seg, at=when)
    assert t.conn.counters.rto_timeouts == 4 and t.conn.rto == pytest.approx(16.0)
    t.rx(R, L + 4, at=15.5)            # an ACK of new data clears the backoff
    assert t.conn.rto == pytest.approx(1.0)


def test_established_rto_is_capped_at_max_rto_and_gives_up_with_etimedout() -> None:
    t = established(TcpConfig(recv_buffer_size=65535, max_rto=1.0, max_retries=3))
    t.conn.send(b"x")
    t.poll()
    times = []
    while t.state is not TcpState.CLOSED:
        d = t.conn.next_deadline()
        if t.poll(at=d):
            times.append(round(d, 3))
    assert times == [0.2, 0.6, 1.4]     # 0.2, 0.4, 0.8 apart, then 1.6 capped at 1 s
    assert t.now == pytest.approx(2.4) and t.conn.error == errno.ETIMEDOUT


def test_established_rto_collapses_cwnd_and_goes_back_to_snd_una() -> None:
    t = established()
    data = payload(3 * MSS)
    t.conn.send(data)
    t.poll()
    t.tx(ours(L, R, payload=data[:MSS]), at=0.2)   # only one segment: cwnd = 1 MSS
    assert t.conn.cwnd == MSS and t.conn.ssthresh == 2 * MSS
    t.rx(R, L + MSS, at=0.25)
    t.tx(ours(L + MSS, R, payload=data[MSS:2 * MSS]),          # slow start again: 2 segments
         ours(L + 2 * MSS, R, "PA", payload=data[2 * MSS:]))
    assert t.conn.counters.retransmits == 3


def test_established_karn_no_rtt_sample_from_a_retransmission() -> None:
    t = established()
    t.conn.send(b"a")
    t.poll(at=1.0)
    t.poll(at=1.2)                     # retransmitted
    t.rx(R, L + 1, at=1.25)
    assert t.conn.srtt == 0.0          # still the handshake's sample
    t.conn.send(b"b")
    t.poll(at=2.0)
    t.rx(R, L + 2, at=2.1)
    assert t.conn.srtt == pytest.approx(0.1 / 8)


def test_established_out_of_order_data_gets_dup_ack_with_sack_blocks() -> None:
    t = established()
    t.rx(R + 1000, L, "A", payload=b"b" * 100)
    sack1 = TcpOptions.build(sack_blocks=[((R + 1000) & MASK, (R + 1100) & MASK)])
    t.tx(ours(L, R, options=sack1))
    t.rx(R + 2000, L, "A", payload=b"c" * 100)
    sack2 = TcpOptions.build(sack_blocks=[((R + 2000) & MASK, (R + 2100) & MASK),
                                          ((R + 1000) & MASK, (R + 1100) & MASK)])
    t.tx(ours(L, R, options=sack2))     # the most recent block first (RFC 2018 4)
    t.rx(R + 1100, L, "A", payload=b"b" * 100)
    sack3 = TcpOptions.build(sack_blocks=[((R + 1000) & MASK, (R + 1200) & MASK),
                                          ((R + 2000) & MASK, (R + 2100) & MASK)])
    t.tx(ours(L, R, options=sack3))
    t.rx(R, L, "A", payload=b"a" * 1000)   # fills the first hole: immediate ACK, one block left
    t.tx(ours(L, R + 1200, "A", WIN - 1200,
              options=TcpOptions.build(sack_blocks=[((R + 2000) & MASK, (R + 2100) & MASK)])))
    t.rx(R + 1200, L, "A", payload=b"x" * 800)
    t.tx(ours(L, R + 2100, "A", WIN - 2100))
    assert t.conn.recv() == b"a" * 1000 + b"b" * 200 + b"x" * 800 + b"c" * 100
    assert t.conn.counters.out_of_order == 3


def test_established_no_sack_blocks_unless_negotiated() -> None:
    t = established(peer_opts=TcpOptions.build(mss=1460))
    t.rx(R + 1000, L, "A", payload=b"b" * 100)
    t.tx(ours(L, R))


def test_established_reassembly_queue_is_bounded() -> None:
    t = established(TcpConfig(recv_buffer_size=65535, max_ooo_blocks=2))
    for i in (1, 3, 5):
        t.rx(R + 100 * i, L, "A", payload=bytes([i]) * 50)
    t.poll()
    assert t.conn.counters.ooo_dropped == 1         # the third range did not fit
    t.rx(R, L, "A", payload=bytes(300))
    assert t.conn.readable == 350                   # up to the dropped range at R + 500


def test_established_out_of_order_fin_waits_for_the_hole() -> None:
    t = established()
    t.rx(R + 5, L, "FA", payload=b"world")
    t.poll()
    assert t.state is TcpState.ESTABLISHED
    t.rx(R, L, "A", payload=b"hello")
    t.tx(ours(L, R + 11, "A", WIN - 11))
    assert t.state is TcpState.CLOSE_WAIT and t.conn.recv() == b"helloworld" and t.conn.eof


def test_established_zero_window_probes_back_off() -> None:
    t = established()
    t.rx(R, L, win=0)
    t.conn.send(b"blocked")
    t.tx()
    probe = ours(L - 1, R)              # Linux-style probe: SND.UNA - 1, no data
    for when in (0.2, 0.6, 1.4, 3.0):   # RTO 0.2 s, doubling
        t.tx_at_deadline(when, probe)
        t.rx(R, L, win=0)               # the peer answers: still closed
        t.tx()
    assert t.conn.counters.zero_window_probes == 4 and t.state is TcpState.ESTABLISHED
    t.rx(R, L, win=100, at=3.1)         # the window opens: data goes at once
    t.tx(ours(L, R, "PA", payload=b"blocked"))


def test_established_unanswered_zero_window_probes_time_out() -> None:
    t = established(TcpConfig(recv_buffer_size=65535, max_retries=2))
    t.rx(R, L, win=0)
    t.conn.send(b"x")
    while t.state is not TcpState.CLOSED:
        t.poll(at=t.conn.next_deadline())
    assert t.conn.error == errno.ETIMEDOUT and t.conn.counters.zero_window_probes == 2


def test_established_receiver_advertises_zero_window_and_reopens_it() -> None:
    t = established(TcpConfig(recv_buffer_size=4000))
    t.rx(R, L, "PA", payload=payload(4000))
    t.tx(ours(L, R + 4000, "A", 0))
    t.rx(R + 4000, L, "PA", payload=b"more")        # no room: dropped, ACKed with window 0
    t.tx(ours(L, R + 4000, "A", 0))
    t.rx(R + 3999, L)                               # a zero-window probe from the peer
    t.tx(ours(L, R + 4000, "A", 0))
    assert len(t.conn.recv(1000)) == 1000           # frees less than one MSS: no update (SWS)
    t.tx()
    assert len(t.conn.recv(1000)) == 1000           # now 2000 bytes free >= MSS: window update
    t.tx(ours(L, R + 4000, "A", 2000))
    assert t.conn.counters.window_updates == 1


def test_established_ack_and_window_are_processed_even_with_zero_receive_window() -> None:
    t = established(TcpConfig(recv_buffer_size=2000))
    t.conn.send(b"q")
    t.poll()
    t.rx(R, L, "A", payload=payload(2000))
    t.poll()
    t.rx(R + 2000, L + 1, "PA", win=777, payload=b"more")   # data dropped, ACK and window kept
    assert t.conn.snd_una == (L + 1) & MASK and t.conn.snd_wnd == 777
    t.tx(ours(L + 1, R + 2000, "A", 0))


def test_established_receiver_sws_avoidance_holds_small_window_increases() -> None:
    t = established(TcpConfig(recv_buffer_size=10000))
    t.rx(R, L, "PA", payload=payload(9500))
    t.tx(ours(L, R + 9500, "A", 500))
    t.conn.recv(1000)                 # the right edge could move by 1000 < MSS: held back
    t.conn.send(b"x")
    t.tx(ours(L, R + 9500, "PA", 500, payload=b"x"))
    t.conn.recv(500)                  # now by 1500 >= MSS, and the window at least doubles
    t.tx(ours(L + 1, R + 9500, "A", 2000))
    t.conn.recv(100)
    t.conn.send(b"y")
    t.tx(ours(L + 1, R + 9500, "PA", 2000, payload=b"y"))   # +100 is held back


def test_established_sender_sws_avoidance_waits_for_a_useful_window() -> None:
    t = established(peer_win=10000)
    data = payload(3 * MSS)
    t.conn.send(data)
    t.rx(R, L, win=100)                # a window far below MSS and below half the largest seen
    t.tx()
    t.tx(ours(L, R, payload=data[:100]), at=0.2)   # the persist timer overrides
    t.rx(R, L + 100, win=6000, at=0.3)
    segs = t.poll()
    assert [len(s.payload) for s in segs] == [MSS, MSS, MSS - 100]   # cwnd 4380 + 100 (slow start)


def test_established_nagle_holds_small_segments_while_data_is_in_flight() -> None:
    t = established(TcpConfig(recv_buffer_size=65535, nagle=True))
    t.conn.send(b"a")
    t.tx(ours(L, R, "PA", payload=b"a"))
    t.conn.send(b"b")
    t.conn.send(b"c")
    t.tx()
    t.rx(R, L + 1, at=0.01)
    t.tx(ours(L + 1, R, "PA", payload=b"bc"))


def test_established_nodelay_is_the_default() -> None:
    t = established()
    t.conn.send(b"a")
    t.tx(ours(L, R, "PA", payload=b"a"))
    t.conn.send(b"b")
    t.tx(ours(L + 1, R, "PA", payload=b"b"))


def test_established_window_scaling_applies_to_both_directions() -> None:
    cfg = TcpConfig(recv_buffer_size=1 << 18)       # offers wscale 3
    t = established(cfg, peer_opts=TcpOptions.build(mss=1460, window_scale=4), peer_win=5000)
    assert t.conn.window_scales == (4, 3) and t.conn.snd_wnd == 5000
    t.rx(R, L, win=1000)
    assert t.conn.snd_wnd == 16000
    t.rx(R, L, "PA", payload=b"x" * 80)
    t.tx(ours(L, R + 80, "A", ((1 << 18) - 80) >> 3))


def test_established_keepalive_probes_then_reset_with_etimedout() -> None:
    cfg = TcpConfig(recv_buffer_size=65535, keepalive_idle=10.0, keepalive_interval=1.0, keepalive_count=3)
    t = established(cfg)
    probe = ours(L - 1, R)
    t.tx(at=9.99)
    t.tx(probe, at=10.0)
    t.tx(probe, at=11.0)
    t.tx(probe, at=12.0)
    t.tx(ours(L, R, "RA", 0), at=13.0)
    assert t.state is TcpState.CLOSED and t.conn.error == errno.ETIMEDOUT


def test_established_keepalive_answer_resets_the_idle_timer() -> None:
    cfg = TcpConfig(recv_buffer_size=65535, keepalive_idle=10.0, keepalive_interval=1.0, keepalive_count=3)
    t = established(cfg)
    t.tx(ours(L - 1, R), at=10.0)
    t.rx(R, L, at=10.01)               # the ACK of the probe
    t.tx()
    assert t.conn.next_deadline() == pytest.approx(20.01)
    assert t.conn.counters.keepalive_probes == 1


def test_established_answers_a_peer_keepalive_probe() -> None:
    t = established()
    t.rx(R - 1, L)                     # seq = RCV.NXT - 1, no data
    t.tx(ours(L, R))


def test_established_abort_sends_rst_and_discards_everything() -> None:
    t = established()
    t.conn.send(b"unsent")
    t.rx(R, L, "A", payload=b"unread")
    t.conn.abort()
    t.tx(ours(L, R + 6, "RA", 0))
    assert t.state is TcpState.CLOSED and t.conn.error is None and t.conn.recv() == b""
    with pytest.raises(BrokenPipeError):
        t.conn.send(b"x")


def test_established_sequence_numbers_wrap_on_the_send_side() -> None:
    iss = 2**32 - 10
    t = established(iss=iss)
    data = payload(100)
    t.conn.send(data)
    t.tx(ours(iss + 1, R, "PA", payload=data))
    t.rx(R, iss + 1 + 50)             # acks across the wrap: 0xFFFFFFF7 + 50 = 41
    assert t.conn.snd_una == 41 and t.conn.send_queued == 50
    t.rx(R, iss + 101)
    assert t.conn.snd_una == 91 and t.conn.send_queued == 0
    t.conn.close()
    t.tx(ours(iss + 101, R, "FA"))
    t.rx(R, iss + 102)
    assert t.state is TcpState.FIN_WAIT_2


def test_established_sequence_numbers_wrap_on_the_receive_side() -> None:
    t = established()
    chunks = [payload(5, i) for i in range(6)]   # R = 2**32 - 9: byte 9 is sequence number 0
    for i, chunk in enumerate(chunks):
        t.rx(R + 5 * i, L, "A", payload=chunk)
    t.poll()
    assert t.conn.recv() == b"".join(chunks) and t.conn.rcv_nxt == 21


def test_established_pure_ack_overtaken_by_data_is_still_accepted() -> None:
    """Left edge at RCV.WUP (Linux): an ACK sent before the data it follows is not "old"."""
    t = established()
    t.conn.send(b"abc")
    t.poll()
    t.rx(R, L, "A", payload=b"12345")        # data arrives first...
    t.rx(R, L + 3)                          # ...then an older pure ACK (seq R < RCV.NXT)
    assert t.conn.snd_una == (L + 3) & MASK and t.conn.counters.out_of_window == 0
    t.tx()                                   # no ACK back for an ACK (the data's waits 40 ms)
    t.tx(ours(L + 3, R + 5, "A", WIN - 5), at=0.04)


def test_established_acks_use_the_highest_sequence_sent_after_a_timeout() -> None:
    """A go-back after an RTO rewinds SND.NXT; ACKs still carry SND.MAX (Linux's
    tcp_acceptable_seq), or the peer would drop them as old."""
    t = established()
    data = payload(3 * MSS)
    t.conn.send(data)
    t.poll()
    t.tx(ours(L, R, payload=data[:MSS]), at=0.2)    # RTO: SND.NXT back to L + MSS
    t.rx(R, L, "PA", payload=b"?", at=0.21)
    t.tx(ours(L + 3 * MSS, R + 1, "A", WIN - 1))


def test_established_one_dup_ack_per_out_of_order_segment_even_in_a_batch() -> None:
    t = established(peer_opts=TcpOptions.build(mss=1460))
    for i in range(1, 4):
        t.rx(R + 100 * i, L, "A", payload=b"x" * 100)   # three segments before one poll
    t.tx(ours(L, R), ours(L, R), ours(L, R))


def test_established_rto_resends_snd_una_even_into_a_closed_window() -> None:
    t = established()
    t.conn.send(b"0123456789")
    t.tx(ours(L, R, "PA", payload=b"0123456789"))
    t.rx(R, L, win=0)                        # the peer closes its window, data still unacked
    t.tx()
    t.tx_at_deadline(0.2, ours(L, R, "PA", payload=b"0123456789"))
    t.rx(R, L + 10, win=0, at=0.25)
    assert t.conn.send_queued == 0


# =========================================================================== FIN_WAIT_1

def test_fin_wait_1_fin_rides_on_the_last_data_segment() -> None:
    t = established()
    t.conn.send(b"bye")
    t.conn.close()
    assert t.state is TcpState.FIN_WAIT_1
    t.tx(ours(L, R, "FPA", payload=b"bye"))
    with pytest.raises(BrokenPipeError):
        t.conn.send(b"more")


def test_fin_wait_1_ack_of_fin_goes_to_fin_wait_2() -> None:
    fin_wait_2()


def test_fin_wait_1_ack_of_data_only_stays() -> None:
    t = established()
    t.conn.send(b"bye")
    t.conn.close()
    t.poll()
    t.rx(R, L + 3)
    assert t.state is TcpState.FIN_WAIT_1


def test_fin_wait_1_fin_without_ack_of_ours_goes_to_closing() -> None:
    closing()


def test_fin_wait_1_fin_with_ack_of_ours_goes_to_time_wait() -> None:
    t = fin_wait_1()
    t.rx(R, L + 1, "FA")
    t.tx(ours(L + 1, R + 1, "A", WIN_FIN))
    assert t.state is TcpState.TIME_WAIT


def test_fin_wait_1_fin_is_retransmitted() -> None:
    t = fin_wait_1()
    t.tx_at_deadline(0.2, ours(L, R, "FA"))
    t.tx_at_deadline(0.6, ours(L, R, "FA"))
    assert t.conn.counters.retransmits == 2


def test_fin_wait_1_still_receives_data() -> None:
    t = fin_wait_1()
    t.rx(R, L + 1, "PA", payload=b"half-close")
    t.tx(ours(L + 1, R + 10, "A", WIN - 10))
    assert t.conn.recv() == b"half-close" and t.state is TcpState.FIN_WAIT_2


def test_fin_wait_1_rst_resets() -> None:
    t = fin_wait_1()
    t.rx(R, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error == errno.ECONNRESET


def test_fin_wait_1_close_again_is_harmless() -> None:
    t = fin_wait_1()
    t.conn.close()
    t.tx()
    assert t.state is TcpState.FIN_WAIT_1


# =========================================================================== FIN_WAIT_2

def test_fin_wait_2_fin_goes_to_time_wait() -> None:
    time_wait()


def test_fin_wait_2_receives_data_then_fin() -> None:
    t = fin_wait_2()
    t.rx(R, L + 1, "A", payload=b"still talking")
    t.rx(R + 13, L + 1, "FA")
    t.tx(ours(L + 1, R + 14, "A", WIN - 14))
    assert t.conn.recv() == b"still talking" and t.conn.eof and t.state is TcpState.TIME_WAIT


def test_fin_wait_2_times_out_when_the_peer_goes_quiet() -> None:
    t = fin_wait_2()
    assert t.conn.next_deadline() == pytest.approx(10.0)
    t.rx(R, L + 1, at=5.0)               # any segment from the peer restarts it
    t.tx(at=14.99)
    t.tx(at=15.0)
    assert t.state is TcpState.CLOSED and t.conn.error is None


def test_fin_wait_2_rst_resets() -> None:
    t = fin_wait_2()
    t.rx(R, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error == errno.ECONNRESET


def test_fin_wait_2_out_of_window_segment_gets_ack() -> None:
    t = fin_wait_2()
    t.rx(R + 80000, L + 1, "A", payload=b"?")
    t.tx(ours(L + 1, R))


# =========================================================================== CLOSE_WAIT

def test_close_wait_reads_to_eof() -> None:
    t = established()
    t.rx(R, L, "FPA", payload=b"the end")
    t.tx(ours(L, R + 8, "A", WIN - 8))
    c = t.conn
    assert c.state is TcpState.CLOSE_WAIT and not c.eof
    assert c.recv() == b"the end" and c.eof and c.recv() == b""


def test_close_wait_can_still_send() -> None:
    t = close_wait()
    t.conn.send(b"reply")
    t.tx(ours(L, R + 1, "PA", WIN_FIN, payload=b"reply"))


def test_close_wait_close_goes_to_last_ack() -> None:
    last_ack()


def test_close_wait_retransmitted_fin_gets_ack() -> None:
    t = close_wait()
    t.rx(R, L, "FA")
    t.tx(ours(L, R + 1, "A", WIN_FIN))


def test_close_wait_rst_resets() -> None:
    t = close_wait()
    t.rx(R + 1, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error == errno.ECONNRESET


def test_close_wait_data_after_fin_is_ignored() -> None:
    t = close_wait()
    t.rx(R + 1, L, "PA", payload=b"ghost")
    t.poll()
    assert t.conn.readable == 0


# ============================================================================== CLOSING

def test_closing_ack_of_fin_goes_to_time_wait() -> None:
    t = closing()
    t.rx(R + 1, L + 1)
    t.tx()
    assert t.state is TcpState.TIME_WAIT


def test_closing_fin_is_retransmitted() -> None:
    t = closing()
    t.tx_at_deadline(0.2, ours(L, R + 1, "FA", WIN_FIN))


def test_closing_rst_closes_without_error() -> None:
    t = closing()
    t.rx(R + 1, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error is None


def test_simultaneous_close_between_two_connections() -> None:
    a = TcpConnection(1, 2, config=CFG, rng=FixedIsn(100))
    b = TcpConnection(2, 1, config=CFG, rng=FixedIsn(2**32 - 1))
    lst = TcpListener(2, config=CFG, rng=FixedIsn(2**32 - 1))
    a.connect(0.0)

    def deliver(segs, dst):
        for s in segs:
            seg = TcpSegment.parse(s.to_bytes(), 0, 0)
            dst.on_segment(seg, 0.0) if dst is not lst else lst.on_segment(seg, 0.0)

    deliver(a.poll(0.0), lst)
    deliver(lst.poll(0.0), a)
    deliver(a.poll(0.0), lst)
    b = lst.accept()
    assert a.state is b.state is TcpState.ESTABLISHED
    a.close()
    b.close()
    fa, fb = a.poll(0.0), b.poll(0.0)      # both FINs cross in flight
    deliver(fa, b)
    deliver(fb, a)
    assert a.state is b.state is TcpState.CLOSING
    deliver(a.poll(0.0), b)
    deliver(b.poll(0.0), a)
    assert a.state is b.state is TcpState.TIME_WAIT


# ============================================================================= LAST_ACK

def test_last_ack_ack_of_fin_closes() -> None:
    t = last_ack()
    t.rx(R + 1, L + 1)
    t.tx()
    assert t.state is TcpState.CLOSED and t.conn.error is None and t.conn.next_deadline() is None


def test_last_ack_fin_is_retransmitted_with_backoff() -> None:
    t = last_ack()
    fin = ours(L, R + 1, "FA", WIN_FIN)
    t.tx_at_deadline(0.2, fin)
    t.tx_at_deadline(0.6, fin)


def test_last_ack_gives_up_after_max_retries() -> None:
    t = last_ack(TcpConfig(recv_buffer_size=65535, max_retries=2))
    while t.state is not TcpState.CLOSED:
        t.poll(at=t.conn.next_deadline())
    assert t.conn.error == errno.ETIMEDOUT and t.conn.counters.retransmits == 2


def test_last_ack_rst_closes_without_error() -> None:
    t = last_ack()
    t.rx(R + 1, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error is None


def test_closed_connection_answers_with_reset() -> None:
    t = last_ack()
    t.rx(R + 1, L + 1)
    t.rx(R + 1, L + 1, "PA", payload=b"late")
    t.tx(ours(L + 1, None, "R", 0))


# ============================================================================ TIME_WAIT

def test_time_wait_lasts_two_msl() -> None:
    t = time_wait()
    assert t.conn.next_deadline() == pytest.approx(1.0)   # 2 * MSL with MSL = 0.5 s
    t.tx(at=0.999)
    assert t.state is TcpState.TIME_WAIT
    t.tx(at=1.0)
    assert t.state is TcpState.CLOSED and t.conn.error is None


def test_time_wait_retransmitted_fin_is_acked_and_restarts_the_timer() -> None:
    t = time_wait()
    t.rx(R, L + 1, "FA", at=0.5)
    t.tx(ours(L + 1, R + 1, "A", WIN_FIN))
    assert t.conn.next_deadline() == pytest.approx(1.5)


def test_time_wait_rst_closes() -> None:
    t = time_wait()
    t.rx(R + 1, None, "R")
    assert t.state is TcpState.CLOSED and t.conn.error is None


def test_time_wait_new_syn_may_reopen_the_four_tuple() -> None:
    t = time_wait()
    assert t.conn.accepts_new_syn(theirs(R + 100000, None, "S"))
    assert not t.conn.accepts_new_syn(theirs(R - 100, None, "S"))
    t.rx(R + 100000, None, "S")             # handed to us anyway: challenge ACK
    t.tx(ours(L + 1, R + 1, "A", WIN_FIN))


def test_time_wait_ignores_data() -> None:
    t = time_wait()
    t.rx(R + 1, L + 1, "PA", payload=b"zombie")
    t.tx()
    assert t.conn.readable == 0


# ================================================================ pieces: RTT, cwnd, queue

def test_rtt_estimator_follows_rfc_6298() -> None:
    est = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=60.0)
    assert est.rto == 1.0
    est.sample(0.5)
    assert est.srtt == 0.5 and est.rttvar == 0.25 and est.rto == pytest.approx(1.5)
    est.sample(0.1)
    assert est.rttvar == pytest.approx(0.75 * 0.25 + 0.25 * 0.4)
    assert est.srtt == pytest.approx(0.875 * 0.5 + 0.125 * 0.1)
    assert est.rto == pytest.approx(est.srtt + 4 * est.rttvar)
    for _ in range(50):
        est.sample(0.001)
    assert est.rto == 0.2
    est.sample(500)
    assert est.rto == 60.0


def test_newreno_window_arithmetic() -> None:
    cc = NewReno(1000, initial_window(1000))
    assert cc.cwnd == 4000                         # MSS <= 1095: 4 segments
    cc.on_ack(5000)
    assert cc.cwnd == 6000                         # slow start, at most 2 MSS per ACK
    cc.enter_recovery(flight=6000, recover=123)
    assert cc.ssthresh == 3000 and cc.cwnd == 6000 and cc.in_recovery
    cc.on_dup_ack()
    assert cc.cwnd == 7000
    assert cc.on_partial_ack(2000) is True and cc.cwnd == 6000
    assert cc.on_partial_ack(500) is False and cc.cwnd == 5500
    cc.exit_recovery(flight=1000)
    assert cc.cwnd == 2000 and not cc.in_recovery
    cc.ssthresh = 2000
    for _ in range(2):
        cc.on_ack(1000)                            # congestion avoidance: +1 MSS per cwnd acked
    assert cc.cwnd == 3000
    cc.on_timeout(flight=8000, first=True, recover=0)
    assert cc.cwnd == 1000 and cc.ssthresh == 4000
    cc.on_timeout(flight=1000, first=False, recover=0)
    assert cc.ssthresh == 4000


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TcpConfig(window_scale=15)
    with pytest.raises(ValueError):
        TcpConfig(min_rto=2.0, initial_rto=1.0)
    with pytest.raises(ValueError):
        TcpConfig(recv_buffer_size=100)
    assert TcpConfig().offered_window_scale == 3 and TcpConfig().time_wait == 60.0


def test_out_segment_encodes_through_the_wire_layer() -> None:
    seg = ours(L, R, "PA", payload=b"wire", options=TcpOptions.build(sack_blocks=[(1, 2)]))
    raw = seg.to_bytes()
    parsed = TcpSegment.parse(raw, LOCAL_ADDR, REMOTE_ADDR)        # checksum verified
    assert (parsed.seq, parsed.ack, parsed.flags, parsed.window) == (L, R & MASK, seg.flags, WIN)
    assert bytes(parsed.payload) == b"wire" and parsed.options == seg.options
    buf = bytearray(100)
    assert seg.emit_into(buf, 10) == len(raw) and bytes(buf[10:10 + len(raw)]) == raw
    assert seg.seq_len == 4 and "PA" not in repr(seg) and "len=4" in repr(seg)


def test_connection_counters_and_repr() -> None:
    t = established()
    assert t.conn.counters.segments_out == 2 and t.conn.counters.segments_in == 1
    assert "ESTABLISHED" in repr(t.conn) and t.conn.counters.as_dict()["segments_in"] == 1


# ================================================================ property tests (hypothesis)

@PROPS
@given(
    st.integers(1, 3000),
    st.lists(st.tuples(st.integers(0, 2999), st.integers(1, 400)), min_size=1, max_size=40),
    st.integers(1, 8),
    st.randoms(use_true_random=False),
)
def test_reassembly_invariants(size: int, pieces: list[tuple[int, int]], max_blocks: int, rnd) -> None:
    data = bytes(rnd.getrandbits(8) for _ in range(size))
    base = 2**32 - 7   # unwrapped positions near the 32-bit boundary
    q = OutOfOrderQueue(max_blocks)
    covered = set()
    for off, n in pieces:
        off %= size
        chunk = data[off:off + n]
        q.add(base + off, chunk)
        covered.update(range(off, off + len(chunk)))
        ranges = q.ranges()
        assert len(ranges) <= max_blocks
        for (s1, e1), (s2, e2) in zip(ranges, ranges[1:]):
            assert s1 < e1 < s2                        # sorted, disjoint, never adjacent
        blocks = q.sack_blocks(4)
        assert len(blocks) == min(4, len(ranges)) and set(blocks) <= set(ranges)
        last = base + off
        if any(s <= last < e for s, e in ranges):      # the latest segment's range comes first
            assert blocks[0][0] <= last < blocks[0][1]
    # drain from the lowest range: every stored byte is the right byte
    out = {}
    while q:
        start = q.ranges()[0][0]
        chunk = q.pop_ready(start)
        out[start - base] = bytes(chunk)
    for off, chunk in out.items():
        assert data[off:off + len(chunk)] == chunk
        assert set(range(off, off + len(chunk))) <= covered


@PROPS
@given(st.integers(1, 1500), st.lists(st.integers(1, 200), min_size=1, max_size=20), st.integers(1, 8),
       st.randoms(use_true_random=False))
def test_reassembly_delivers_everything_in_any_order(size: int, cuts: list[int], max_blocks: int, rnd) -> None:
    """Segments in any order, with duplicates, into a bounded queue: what the bound
    evicts comes again in the next round (as a sender retransmits), and the
    stream comes out whole."""
    data = bytes(rnd.getrandbits(8) for _ in range(size))
    segs = []
    pos = 0
    i = 0
    while pos < size:
        c = cuts[i % len(cuts)]
        segs.append((pos, data[pos:pos + c]))
        pos += c
        i += 1
    segs += rnd.sample(segs, k=len(segs) // 3)     # duplicates
    q = OutOfOrderQueue(max_blocks)
    nxt = 0
    out = bytearray()
    rounds = 0
    while nxt < size:
        rounds += 1
        assert rounds <= len(segs)                 # each round delivers at least the segment at nxt
        rnd.shuffle(segs)
        for off, chunk in segs:
            if off + len(chunk) <= nxt:
                continue
            if off <= nxt:
                out += chunk[nxt - off:]
                nxt = off + len(chunk)
                while (more := q.pop_ready(nxt)) is not None:
                    out += more
                    nxt += len(more)
            else:
                q.add(off, chunk)
            assert len(q) <= max_blocks
    assert bytes(out) == data and not q


@PROPS
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 2**32 - 1, 2**32 - 5000, 2**31 - 1, 2**31]),
    st.binary(min_size=1, max_size=6000),
    st.lists(st.integers(1, 1460), min_size=1, max_size=10),
    st.randoms(use_true_random=False),
)
def test_receiver_handles_any_isn_and_any_arrival_order(iss: int, peer_iss: int, data: bytes,
                                                       sizes: list[int], rnd) -> None:
    conn = TcpConnection(LOCAL_PORT, REMOTE_PORT, config=CFG, rng=FixedIsn(iss))
    conn.connect(0.0)
    conn.poll(0.0)
    conn.on_segment(TcpSegment(REMOTE_PORT, LOCAL_PORT, peer_iss, (iss + 1) & MASK, flags_of("SA"), 65535,
                               options=PEER_SYN_OPTS), 0.0)
    segs = []
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        segs.append(TcpSegment(REMOTE_PORT, LOCAL_PORT, seq_add(peer_iss, 1 + pos), (iss + 1) & MASK,
                               flags_of("A"), 65535, payload=data[pos:pos + n]))
        pos += n
        i += 1
    segs += rnd.sample(segs, k=len(segs) // 2)
    rnd.shuffle(segs)
    for s in segs:
        conn.on_segment(s, 0.0)
        for out in conn.poll(0.0):
            assert 0 <= out.seq <= MASK and 0 <= out.ack <= MASK
    assert conn.recv() == data
    assert conn.rcv_nxt == seq_add(peer_iss, 1 + len(data))


@PROPS
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 50000), st.integers(0, 2**16))
def test_transfer_across_any_isn_pair(iss_a: int, iss_b: int, size: int, seed: int) -> None:
    result = run_transfer(size, size // 3, loss=0.02, dup=0.02, reorder=0.1, seed=seed,
                          isns=(iss_a, iss_b), config=TcpConfig(msl=0.5, recv_buffer_size=20000))
    assert result.ok


# ============================================================ the in-process wire (simulated link)

CLIENT_ADDR = int(Ipv4Address("192.168.7.1"))
SERVER_ADDR = int(Ipv4Address("192.168.7.2"))


class Link:
    """A two-way link with seeded loss, duplication, reordering (extra delay) and jitter.

    Frames travel as bytes: OutSegment.to_bytes() in, TcpSegment.parse() with
    the checksum verified out, as they would through a device.  With
    ``encode=False`` segments are handed over as TcpSegment objects instead, to
    measure the state machine alone.
    """

    def __init__(self, rng: random.Random, loss: float, dup: float, reorder: float, delay: float,
                 jitter: float, encode: bool = True) -> None:
        self.rng, self.loss, self.dup, self.reorder = rng, loss, dup, reorder
        self.delay, self.jitter, self.encode = delay, jitter, encode
        self.queue: list[tuple[float, int, int, int, bytes]] = []
        self.count = 0
        self.sent = self.dropped = 0

    def transmit(self, segs: list[OutSegment], now: float) -> None:
        rng = self.rng
        for s in segs:
            self.sent += 1
            if rng.random() < self.loss:
                self.dropped += 1
                continue
            raw = s.to_bytes() if self.encode else s.to_wire()
            for _ in range(2 if rng.random() < self.dup else 1):
                d = self.delay + rng.random() * self.jitter
                if rng.random() < self.reorder:
                    d += rng.random() * 2 * self.delay
                self.count += 1
                heapq.heappush(self.queue, (now + d, self.count, s.src_addr, s.dst_addr, raw))

    def next_arrival(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def arrivals(self, now: float):
        q = self.queue
        while q and q[0][0] <= now:
            _, _, src, dst, raw = heapq.heappop(q)
            yield dst, TcpSegment.parse(raw, src, dst) if self.encode else raw


class TransferResult:
    def __init__(self, ok, wall, virtual, client, server, link, segments):
        self.ok, self.wall, self.virtual = ok, wall, virtual
        self.client, self.server, self.link, self.segments = client, server, link, segments


def run_transfer(size_c2s: int, size_s2c: int, *, loss: float = 0.0, dup: float = 0.0, reorder: float = 0.0,
                 seed: int = 1, delay: float = 0.005, jitter: float = 0.001,
                 config: TcpConfig | None = None, isns: tuple[int, int] | None = None,
                 max_virtual: float = 3600.0, read_chunk: int | None = None,
                 read_interval: float = 0.05, encode: bool = True) -> TransferResult:
    """Client and server exchange random data both ways, then both close; returns the outcome.

    With ``read_chunk``, the server application reads at most that many bytes
    every ``read_interval`` seconds (a slow reader: the client meets zero windows).
    """
    cfg = config or TcpConfig(msl=0.5)
    rng_c = FixedIsn(isns[0]) if isns else random.Random(seed * 7 + 1)
    rng_s = FixedIsn(isns[1]) if isns else random.Random(seed * 7 + 2)
    link = Link(random.Random(seed), loss, dup, reorder, delay, jitter, encode)
    client = TcpConnection(40000, 80, local_addr=CLIENT_ADDR, remote_addr=SERVER_ADDR, config=cfg, rng=rng_c)
    lst = TcpListener(80, local_addr=SERVER_ADDR, config=cfg, rng=rng_s)
    server = None
    up = random.Random(seed * 7 + 3).randbytes(size_c2s)
    down = random.Random(seed * 7 + 4).randbytes(size_s2c)
    got_up, got_down = bytearray(), bytearray()
    sent = {"c": 0, "s": 0}
    next_read = 0.0
    t = 0.0
    wall0 = time.perf_counter()
    client.connect(t)

    def app(conn: TcpConnection, data: bytes, key: str, got: bytearray) -> None:
        nonlocal next_read
        if conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            if sent[key] < len(data):
                sent[key] += conn.send(memoryview(data)[sent[key]:sent[key] + 65536])
            if sent[key] == len(data):
                conn.close()
        if read_chunk is None or key == "c":
            chunk = conn.recv()
        elif t >= next_read and conn.readable:
            chunk = conn.recv(read_chunk)
            next_read = t + read_interval
        else:
            return
        if chunk:
            got += chunk

    while True:
        app(client, up, "c", got_down)
        if server is None:
            server = lst.accept()
        if server is not None:
            app(server, down, "s", got_up)
        link.transmit(client.poll(t), t)
        link.transmit(lst.poll(t) if server is None else server.poll(t), t)
        done = (client.state in (TcpState.TIME_WAIT, TcpState.CLOSED) and server is not None
                and server.state in (TcpState.TIME_WAIT, TcpState.CLOSED)
                and not client.readable and not server.readable)
        if done or client.error or (server is not None and server.error):
            break
        cands = [d for d in (client.next_deadline(), (server or lst).next_deadline(), link.next_arrival())
                 if d is not None]
        if read_chunk is not None and server is not None and server.readable:
            cands.append(max(t, next_read))
        if not cands or t > max_virtual:
            break
        t = max(t, min(cands))
        for dst, seg in link.arrivals(t):
            if dst == CLIENT_ADDR:
                client.on_segment(seg, t)
            elif server is not None:
                server.on_segment(seg, t)
            else:
                lst.on_segment(seg, t, remote_addr=CLIENT_ADDR)
    wall = time.perf_counter() - wall0
    ok = (server is not None and hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
          and hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
          and client.error is None and server.error is None)
    segments = client.counters.segments_out + (server.counters.segments_out if server else 0)
    return TransferResult(ok, wall, t, client, server, link, segments)


WIRE_BYTES = int(os.environ.get("TCP_WIRE_BYTES", str(1 << 20)))


@pytest.mark.parametrize(("loss", "dup", "reorder"), [(0.0, 0.01, 0.05), (0.01, 0.01, 0.05), (0.05, 0.01, 0.05)],
                         ids=["loss0", "loss1pct", "loss5pct"])
def test_wire_transfer_both_ways_sha256(loss: float, dup: float, reorder: float) -> None:
    r = run_transfer(WIRE_BYTES, WIRE_BYTES, loss=loss, dup=dup, reorder=reorder, seed=42)
    assert r.ok, (r.client, r.server, r.client.counters, r.server and r.server.counters)
    assert r.client.state is TcpState.TIME_WAIT or r.server.state is TcpState.TIME_WAIT
    if loss:
        assert r.client.counters.retransmits and r.server.counters.retransmits
        assert r.link.dropped
    print(f"\n{WIRE_BYTES * 2 / 1e6:.1f} MB in {r.wall:.2f} s wall = {WIRE_BYTES * 2 / 1e6 / r.wall:.1f} MB/s;"
          f" virtual {r.virtual:.2f} s; {r.segments} segments; loss {loss}")


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_wire_slow_reader_meets_zero_windows(loss: float) -> None:
    """The server reads 4000 bytes a second from an 8 KiB buffer: the client probes the
    zero window (persist timer) and the server's window updates restart the flow."""
    r = run_transfer(60_000, 1000, loss=loss, dup=0.01, reorder=0.05, seed=7,
                     config=TcpConfig(msl=0.5, recv_buffer_size=8192), read_chunk=4000, read_interval=1.0)
    assert r.ok, (r.client, r.server)
    assert r.virtual > 14.0                                   # paced by the reader
    assert r.server.counters.window_updates > 5 and r.client.counters.zero_window_probes > 5


@pytest.mark.parametrize("seed", range(6))
def test_wire_small_windows_slow_paths_and_heavy_loss(seed: int) -> None:
    """Tiny buffers, small MSS, no SACK or window scaling, Nagle: every slow path at once."""
    rnd = random.Random(seed)
    cfg = TcpConfig(msl=0.5, mss=rnd.choice([536, 1000]), recv_buffer_size=rnd.choice([1000, 3000, 8000]),
                    send_buffer_size=rnd.choice([700, 5000]), sack=rnd.random() < 0.5,
                    window_scaling=rnd.random() < 0.5, nagle=rnd.random() < 0.5, max_ooo_blocks=rnd.choice([1, 4]))
    r = run_transfer(rnd.choice([0, 1, 30000]), rnd.choice([0, 5, 30000]), loss=rnd.choice([0.1, 0.2]),
                     dup=0.05, reorder=0.2, seed=seed, config=cfg)
    assert r.ok, (cfg, r.client, r.server)


if __name__ == "__main__":
    # Throughput of the state machine on the simulated link (a measurement, not a test):
    #   python tests/test_inet_tcp.py [bytes each way]
    import sys

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 10 << 20
    print(f"{size} bytes each way; MB/s counts both directions; best of 3")
    for label, kw in [
        ("state machine only, clean link", dict(encode=False, jitter=0.0)),
        ("+ encode/checksum/parse, clean link", dict(jitter=0.0)),
        ("+ encode, 1% loss, 1% dup, 5% reorder", dict(loss=0.01, dup=0.01, reorder=0.05)),
        ("+ encode, 5% loss, 1% dup, 5% reorder", dict(loss=0.05, dup=0.01, reorder=0.05)),
    ]:
        runs = [run_transfer(size, size, seed=42, **kw) for _ in range(3)]
        best = min(runs, key=lambda r: r.wall)
        assert all(r.ok for r in runs)
        print(f"  {label:40s} {2 * size / 1e6 / best.wall:6.1f} MB/s  {best.segments / best.wall:7.0f} segments/s"
              f"  (virtual {best.virtual:.1f} s, {best.segments} segments)")
