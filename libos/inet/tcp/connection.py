"""One TCP connection as a sans-IO state machine (RFC 9293 and friends).

A :class:`TcpConnection` never reads a clock and never does I/O.  Its inputs
are method calls, each with the current time ``now`` (float seconds) where
time matters:

* ``on_segment(seg, now)``: a parsed :class:`libos.inet.wire.TcpSegment` for
  this connection's 4-tuple (the caller demultiplexes);
* ``send(data)`` / ``recv(max)`` / ``close()`` / ``abort()``: the application;
* ``poll(now)``: returns the segments to transmit now (:class:`OutSegment`)
  and runs the timers that are due;
* ``next_deadline()``: when ``poll`` must be called next, if nothing else
  happens first (the time of the last input if ``poll`` has work right now).

The usual loop: feed every received segment, call ``poll`` for each
connection that was touched, transmit what it returns, and sleep until the
earliest ``next_deadline()`` or the next frame.

Sequence numbers
----------------
Inside, both sequence spaces are *unwrapped*: plain Python ints that start at
the 32-bit ISN and keep growing past 2**32.  A wire value is ``x & 0xFFFFFFFF``;
an incoming one is placed next to the current reference point with
:func:`libos.inet.wire.seq_sub` (``snd_una`` for acknowledgement numbers,
``rcv_nxt`` for sequence numbers), which is exact because TCP windows stay far
below 2**31.  So every comparison in the state machine is an ordinary integer
comparison, and wrap-around is dealt with only at the boundary: ``seq_sub``
on the way in, ``& 0xFFFFFFFF`` on the way out.  The properties
(``snd_una``, ``rcv_nxt``...) report wire (32-bit) values.

Documented choices
------------------
* ISNs come from ``rng.getrandbits(32)`` (default ``random.SystemRandom``);
  tests inject a seeded or fixed generator.  (RFC 6528's clock + keyed hash
  is not implemented: a random ISN is unpredictable but not monotonic per
  4-tuple.)
* RTO per RFC 6298 with Karn's rule (only segments sent once are timed, one
  at a time); min 200 ms like Linux, max 60 s, doubling per timeout; the
  backoff is cleared by an ACK of new data.  After a timeout the sender goes
  back to SND.UNA and resends under a one-segment cwnd (go-back-N, as Linux
  marks the whole flight lost); the first segment goes out even into a
  closed or small window, as Linux does, so it can never stall.
* Fast retransmit on the third duplicate ACK and NewReno recovery (RFC 5681,
  RFC 6582 with the "impatient" timer: the RTO is restarted only by the
  first partial ACK).  Fast retransmit is allowed when SND.UNA >= recover.
  An ACK at SND.UNA counts as duplicate if it is a pure ACK with an unchanged
  window (RFC 5681) or, when SACK was negotiated, if its SACK blocks reach
  higher than any before (RFC 6675's DupAck, which also counts ACKs riding on
  data, so loss is detected in bidirectional transfers).  Beyond that, SACK
  blocks are not used by the sender (no RFC 6675 scoreboard or pipe).
* Receiver: one duplicate ACK per out-of-order segment (queued at once, so a
  caller that polls once per batch of frames still produces them all),
  an immediate ACK when a hole fills.  The acceptability test's left edge is
  RCV.WUP (RCV.NXT as of our last ACK) as in Linux, so a pure ACK overtaken
  by data is still processed instead of being dropped as old.
* Pure ACKs carry SND.MAX (capped at the peer's right window edge), like
  Linux's tcp_acceptable_seq, not a SND.NXT that a timeout rewound: two
  peers that both went back after timeouts would otherwise drop each
  other's ACKs as old, forever.
* Zero-window probes are Linux's: a pure ACK with seq = SND.UNA-1 that makes
  the receiver answer with its current window; they back off like the RTO
  and reset when the window opens.  The same timer (the persist timer) also
  overrides sender SWS avoidance when a small usable window has been held
  back and nothing is in flight.
* Receiver SWS avoidance: the advertised right edge only moves forward by at
  least min(buffer/2, MSS).  The window never shrinks; with window scaling
  it is rounded up, so the receive queue may exceed its size by less than
  2**wscale bytes.
* A window update is sent after ``recv()`` when the window that can be
  advertised has at least doubled and grown by the SWS threshold.
* Received data while the receive window is zero is dropped, but a segment
  at RCV.NXT still has its ACK, window and FIN processed (RFC 9293's
  "special allowance").
* Challenge ACKs (RFC 5961) answer an in-window RST that is not exactly at
  RCV.NXT, any SYN in a synchronized state, and ACKs older than
  SND.UNA - MAX.SND.WND; they and replies to out-of-window segments that
  carry no data are limited to ``challenge_ack_limit`` per second.
* Segments carrying data in SYN or SYN-ACK are not accepted beyond the SYN
  (no TCP Fast Open); the peer retransmits the data.
* After an error the connection is CLOSED, ``error`` holds the errno, queued
  received bytes can still be read, then ``recv`` raises.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import asdict, dataclass

from libos.inet.wire import TcpOptions, TcpSegment, seq_gt, seq_sub
from libos.inet.wire.errors import ReadableBuffer
from libos.inet.wire.seq import SEQ_MASK
from libos.inet.wire.tcp_options import NO_OPTIONS

from .config import DEFAULT_CONFIG, TcpConfig
from .congestion import NewReno, initial_window
from .reassembly import OutOfOrderQueue
from .rtt import RttEstimator
from .segment import FLAGS, OutSegment, reset_for
from .state import TcpState

__all__ = ["TcpConnection", "TcpCounters"]

_MASK = SEQ_MASK
_FIN, _SYN, _RST, _PSH, _ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_FLAGS_ACK_PSH = FLAGS[_ACK | _PSH]

_CLOSED = TcpState.CLOSED
_SYN_SENT = TcpState.SYN_SENT
_SYN_RECEIVED = TcpState.SYN_RECEIVED
_ESTABLISHED = TcpState.ESTABLISHED
_FIN_WAIT_1 = TcpState.FIN_WAIT_1
_FIN_WAIT_2 = TcpState.FIN_WAIT_2
_CLOSE_WAIT = TcpState.CLOSE_WAIT
_CLOSING = TcpState.CLOSING
_LAST_ACK = TcpState.LAST_ACK
_TIME_WAIT = TcpState.TIME_WAIT

# State sets are tuples: membership tests by identity, where a frozenset would
# call Enum.__hash__ (a Python function) on every segment.
#: States in which data and FIN are (re)transmitted.
_SENDING = (_ESTABLISHED, _CLOSE_WAIT, _FIN_WAIT_1, _CLOSING, _LAST_ACK)
#: States in which the peer may still send data.
_RECEIVING = (_ESTABLISHED, _FIN_WAIT_1, _FIN_WAIT_2)
#: States in which the application may still call send().
_USER_SEND = (_ESTABLISHED, _CLOSE_WAIT, _SYN_SENT, _SYN_RECEIVED)
#: States in which a RST from the peer is reported as ECONNRESET.
_RESET_IS_ERROR = (_ESTABLISHED, _FIN_WAIT_1, _FIN_WAIT_2, _CLOSE_WAIT)

_SYSTEM_RNG = random.SystemRandom()


@dataclass(slots=True)
class TcpCounters:
    """Event counts of one connection (all start at 0)."""

    segments_in: int = 0
    segments_out: int = 0
    bytes_in: int = 0            #: payload bytes delivered in order to the receive queue
    bytes_out: int = 0           #: payload bytes sent for the first time
    retransmits: int = 0         #: segments sent again (timeout, fast retransmit, SYN, FIN)
    rto_timeouts: int = 0        #: retransmission timer expiries
    fast_retransmits: int = 0    #: entries into fast recovery
    dup_acks: int = 0            #: duplicate ACKs received (RFC 5681 definition)
    out_of_order: int = 0        #: data segments queued for reassembly
    ooo_dropped: int = 0         #: out-of-order segments dropped: reassembly queue full
    out_of_window: int = 0       #: segments that failed the acceptability test
    challenge_acks: int = 0      #: RFC 5961 challenge ACKs sent
    acks_rate_limited: int = 0   #: challenge / out-of-window ACKs not sent (rate limit)
    bad_acks: int = 0            #: ACKs of data never sent (dropped, answered with an ACK)
    rst_in: int = 0              #: RSTs received (valid or not)
    rst_out: int = 0             #: RSTs sent
    zero_window_probes: int = 0
    keepalive_probes: int = 0
    delayed_acks: int = 0        #: ACKs sent because the delayed-ACK timer fired
    window_updates: int = 0      #: ACKs sent because recv() opened the window

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TcpConnection:
    """The TCB and state machine of one connection (one 4-tuple).

    Create one, then either :meth:`connect` (active open) or let a
    :class:`~libos.inet.tcp.TcpListener` create it from a SYN (passive open,
    :meth:`accept_syn`).  ``local_addr`` / ``remote_addr`` are only carried
    into the :class:`OutSegment` results (for the checksum and routing).
    """

    __slots__ = (
        "local_port", "remote_port", "local_addr", "remote_addr", "config", "counters", "error",
        "_rng", "_state", "_passive", "_opened", "_now", "_dirty", "_ctl",
        "_iss", "_snd_una", "_snd_nxt", "_snd_max", "_snd_wnd", "_max_snd_wnd", "_snd_wl1", "_snd_wl2",
        "_sndbuf", "_snd_buf_seq", "_fin_queued", "_fin_seq", "_snd_mss", "_snd_wscale", "_rcv_wscale",
        "_ws_ok", "_sack_ok",
        "_irs", "_rcv_nxt", "_rcv_wup", "_rcv_adv", "_rcvbuf", "_ooo", "_fin_received", "_ooo_fin", "_rcv_mss",
        "_unacked_rcv", "_ack_now", "_sws_threshold",
        "_rto_deadline", "_delack_deadline", "_persist_deadline", "_keepalive_deadline", "_close_deadline",
        "_sack_high", "_rtt", "_backoff", "_retries", "_rtt_seq", "_rtt_time", "_retransmit_now", "_dupacks", "_cc",
        "_persist_backoff", "_probes_out", "_keepalive_sent", "_ka_idle",
        "_ack_window_start", "_ack_window_count", "_active",
    )

    def __init__(
        self,
        local_port: int,
        remote_port: int,
        *,
        local_addr: int = 0,
        remote_addr: int = 0,
        config: TcpConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        cfg = config if config is not None else DEFAULT_CONFIG
        self.local_port = local_port
        self.remote_port = remote_port
        self.local_addr = int(local_addr)
        self.remote_addr = int(remote_addr)
        self.config = cfg
        self.counters = TcpCounters()
        #: errno of the failure that closed the connection (ECONNRESET,
        #: ECONNREFUSED, ETIMEDOUT), or None.
        self.error: int | None = None
        self._rng = rng if rng is not None else _SYSTEM_RNG
        self._state = _CLOSED
        self._passive = False
        self._opened = False
        self._now = 0.0
        self._dirty = False
        self._ctl: list[OutSegment] = []
        # send sequence space (unwrapped)
        self._iss = 0
        self._snd_una = self._snd_nxt = self._snd_max = 0
        self._snd_wnd = self._max_snd_wnd = 0
        self._snd_wl1 = self._snd_wl2 = 0
        self._sndbuf = bytearray()
        self._snd_buf_seq = 0          # sequence number of _sndbuf[0]
        self._fin_queued = False       # close() was called: FIN follows the data
        self._fin_seq = 0              # the FIN's sequence number, once queued
        self._snd_mss = min(cfg.mss, 536)
        self._snd_wscale = self._rcv_wscale = 0
        self._ws_ok = False
        self._sack_ok = False
        # receive sequence space (unwrapped)
        self._irs = 0
        self._rcv_nxt = 0
        self._rcv_wup = 0              # RCV.NXT when we last sent an ACK (left edge for acceptability)
        self._rcv_adv = 0              # right edge of the window we advertised
        self._rcvbuf = bytearray()
        self._ooo = OutOfOrderQueue(cfg.max_ooo_blocks)
        self._fin_received = False
        self._ooo_fin: int | None = None
        self._rcv_mss = min(cfg.mss, 536)  # largest segment seen: "full-sized" for delayed ACKs
        self._unacked_rcv = 0
        self._ack_now = False
        self._sws_threshold = min(cfg.recv_buffer_size // 2, cfg.mss)
        # timers (absolute deadlines, or None)
        self._rto_deadline: float | None = None
        self._delack_deadline: float | None = None
        self._persist_deadline: float | None = None
        self._keepalive_deadline: float | None = None
        self._close_deadline: float | None = None  # TIME_WAIT end, or FIN_WAIT_2 timeout
        # retransmission and congestion control
        self._rtt = RttEstimator(cfg.initial_rto, cfg.min_rto, cfg.max_rto)
        self._backoff = 0
        self._retries = 0
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._retransmit_now = False
        self._dupacks = 0
        self._sack_high = 0            # highest right edge of a SACK block received
        self._cc = NewReno(self._snd_mss, initial_window(self._snd_mss, cfg.initial_cwnd))
        self._persist_backoff = 0
        self._probes_out = 0
        self._keepalive_sent = 0
        self._ka_idle = cfg.keepalive_idle
        self._ack_window_start = float("-inf")
        self._ack_window_count = 0
        #: set by the owner (libos.inet.stack.Stack): a dict used as an ordered set of the
        #: connections that have work for poll(); application calls (send, recv that opens the
        #: window, close, abort) put this connection in it, so the owner never scans them all
        self._active: dict | None = None

    # ------------------------------------------------------------------ opening

    def connect(self, now: float) -> None:
        """Active open: go to SYN_SENT; the SYN comes out of the next :meth:`poll`."""
        self._open(now)
        self._init_send(self._rng.getrandbits(32))
        self._state = _SYN_SENT
        self._dirty = True

    def accept_syn(self, seg: TcpSegment, now: float) -> None:
        """Passive open from a listener's SYN: go to SYN_RECEIVED (SYN-ACK on the next poll).

        Data and FIN on the SYN are ignored (the peer sends them again).
        """
        flags = int(seg.flags)
        if flags & (_SYN | _ACK | _RST) != _SYN:
            raise ValueError(f"accept_syn needs a segment with SYN and without ACK/RST, got {seg.flags!r}")
        self._open(now)
        self._passive = True
        self._irs = seg.seq
        self._rcv_nxt = self._rcv_wup = seg.seq + 1
        self._negotiate(seg.options)
        self._rcv_adv = self._rcv_nxt
        self._init_send(self._rng.getrandbits(32))
        self._state = _SYN_RECEIVED
        self._dirty = True

    def _open(self, now: float) -> None:
        if self._opened:
            raise RuntimeError("this TcpConnection was already opened; create a new one per connection")
        self._opened = True
        self._now = now

    def _init_send(self, iss: int) -> None:
        self._iss = iss
        self._snd_una = self._snd_nxt = self._snd_max = iss
        self._snd_buf_seq = iss + 1
        self._snd_wl2 = iss

    def _negotiate(self, opts: TcpOptions) -> None:
        """Options of the peer's SYN: MSS (536 if absent), window scale and SACK if both sides offer."""
        cfg = self.config
        peer_mss = opts.mss if opts.mss is not None else 536
        self._snd_mss = max(64, min(peer_mss, cfg.mss))
        self._rcv_mss = min(cfg.mss, max(peer_mss, 64))
        if cfg.window_scaling and opts.window_scale is not None:
            self._ws_ok = True
            self._snd_wscale = min(opts.window_scale, 14)
            self._rcv_wscale = cfg.offered_window_scale
        else:
            self._ws_ok = False
            self._snd_wscale = self._rcv_wscale = 0
        self._sack_ok = cfg.sack and opts.sack_permitted

    # --------------------------------------------------------------- properties

    @property
    def state(self) -> TcpState:
        return self._state

    @property
    def eof(self) -> bool:
        """The peer's FIN was received and every byte before it has been read."""
        return self._fin_received and not self._rcvbuf

    @property
    def closed(self) -> bool:
        """CLOSED: nothing more will happen except queued RSTs from :meth:`poll`."""
        return self._state is _CLOSED

    @property
    def readable(self) -> int:
        """Bytes :meth:`recv` can return now."""
        return len(self._rcvbuf)

    @property
    def send_space(self) -> int:
        """Bytes :meth:`send` would accept now."""
        return self.config.send_buffer_size - len(self._sndbuf)

    @property
    def send_queued(self) -> int:
        """Bytes in the send queue (unacknowledged plus unsent)."""
        return len(self._sndbuf)

    @property
    def iss(self) -> int:
        return self._iss

    @property
    def irs(self) -> int:
        return self._irs & _MASK

    @property
    def snd_una(self) -> int:
        return self._snd_una & _MASK

    @property
    def snd_nxt(self) -> int:
        return self._snd_nxt & _MASK

    @property
    def snd_max(self) -> int:
        """Highest sequence number sent so far (SND.NXT before any retransmission rewound it)."""
        return self._snd_max & _MASK

    @property
    def rcv_nxt(self) -> int:
        return self._rcv_nxt & _MASK

    @property
    def snd_wnd(self) -> int:
        """The peer's window, scaled, in bytes."""
        return self._snd_wnd

    @property
    def rcv_wnd(self) -> int:
        """The window we last advertised, in bytes from RCV.NXT."""
        return max(0, self._rcv_adv - self._rcv_nxt)

    @property
    def snd_mss(self) -> int:
        """Largest payload we send (peer's MSS capped by ours)."""
        return self._snd_mss

    @property
    def window_scales(self) -> tuple[int, int]:
        """(send shift, receive shift); (0, 0) unless both SYNs carried the option."""
        return self._snd_wscale, self._rcv_wscale

    @property
    def sack_permitted(self) -> bool:
        return self._sack_ok

    @property
    def cwnd(self) -> int:
        return self._cc.cwnd

    @property
    def ssthresh(self) -> int:
        return self._cc.ssthresh

    @property
    def in_recovery(self) -> bool:
        return self._cc.in_recovery

    @property
    def srtt(self) -> float | None:
        return self._rtt.srtt

    @property
    def rto(self) -> float:
        """The current retransmission timeout, including backoff."""
        rto = self._rtt.rto * (1 << self._backoff) if self._backoff < 30 else self.config.max_rto
        return rto if rto < self.config.max_rto else self.config.max_rto

    @property
    def four_tuple(self) -> tuple[int, int, int, int]:
        """(local_addr, local_port, remote_addr, remote_port)."""
        return self.local_addr, self.local_port, self.remote_addr, self.remote_port

    def __repr__(self) -> str:
        return (
            f"<TcpConnection {self.local_port}->{self.remote_port} {self._state.name}"
            f" una={self.snd_una} nxt={self.snd_nxt} rcv_nxt={self.rcv_nxt}"
            f"{' error=' + errno.errorcode.get(self.error, str(self.error)) if self.error else ''}>"
        )

    # -------------------------------------------------------- application calls

    def send(self, data: ReadableBuffer) -> int:
        """Queue bytes for sending; return how many fit in the send buffer (possibly 0).

        Raises the connection's error (ConnectionResetError...) after a
        failure, BrokenPipeError after close()/abort() or once the connection
        is closed, and OSError(ENOTCONN) before connect().
        """
        if self._state not in _USER_SEND or self._fin_queued:
            if self.error is not None:
                raise OSError(self.error, os.strerror(self.error))
            if not self._opened:
                raise OSError(errno.ENOTCONN, "send() before connect(): the connection is not open")
            raise OSError(errno.EPIPE, "send() after close() or abort(): the sending side is shut down")
        buf = self._sndbuf
        n = len(data)
        space = self.config.send_buffer_size - len(buf)
        if n > space:
            n = space
            data = memoryview(data)[:n]
        if n:
            buf += data
            self._dirty = True
            if self._active is not None:
                self._active[self] = None
        return n

    def recv(self, max_bytes: int = 1 << 30) -> bytes:
        """Take up to ``max_bytes`` received bytes.

        Returns b"" when nothing is queued: check :attr:`eof` to tell the
        end of the stream from "nothing yet".  When the connection failed and
        the queue is empty, raises the error (e.g. ConnectionResetError).
        """
        buf = self._rcvbuf
        if buf:
            if max_bytes >= len(buf):
                data = bytes(buf)
                buf.clear()
            else:
                data = bytes(memoryview(buf)[:max_bytes])
                del buf[:max_bytes]
            # a window update: the window that can be advertised has at least doubled and
            # grown by the SWS threshold (while the peer may still send)
            st = self._state
            if st is _ESTABLISHED or st is _FIN_WAIT_1 or st is _FIN_WAIT_2:
                free = self.config.recv_buffer_size - len(buf)
                cur = self._rcv_adv - self._rcv_nxt
                if free - cur >= self._sws_threshold and free >= 2 * cur:
                    self._ack_now = True
                    self._dirty = True
                    self.counters.window_updates += 1
                    if self._active is not None:
                        self._active[self] = None
            return data
        if self.error is not None and not self._fin_received:
            raise OSError(self.error, os.strerror(self.error))
        return b""

    def close(self) -> None:
        """Close the sending side: FIN after the queued data (data can still be received).

        In SYN_SENT the connection just goes to CLOSED; in SYN_RECEIVED the FIN
        waits for the handshake to finish.  Calling it again does nothing.
        """
        st = self._state
        if self._active is not None:
            self._active[self] = None
        if st is _SYN_SENT:
            self._enter_closed()
            return
        if st is _SYN_RECEIVED or st is _ESTABLISHED or st is _CLOSE_WAIT:
            if self._fin_queued:
                return
            self._fin_queued = True
            self._fin_seq = self._snd_buf_seq + len(self._sndbuf)
            if st is _ESTABLISHED:
                self._state = _FIN_WAIT_1
            elif st is _CLOSE_WAIT:
                self._state = _LAST_ACK
            self._dirty = True

    def abort(self) -> None:
        """Reset the connection: RST (in synchronized states with data flow), discard everything, CLOSED."""
        st = self._state
        if st is _CLOSED:
            return
        if self._active is not None:
            self._active[self] = None
        if st in _RESET_IS_ERROR or st is _SYN_RECEIVED:
            self._ctl.append(self._rst(self._snd_max, True))
        self._rcvbuf.clear()
        self._fin_received = False
        self._enter_closed()
        self._fin_queued = True  # send() now raises BrokenPipeError

    # ------------------------------------------------------------------- input

    def on_segment(self, seg: TcpSegment, now: float) -> None:
        """Process one segment from the peer (RFC 9293 3.10.7)."""
        self._now = now
        self.counters.segments_in += 1
        state = self._state
        flags = int(seg.flags)
        self._dirty = True
        if state is _SYN_SENT:
            self._on_syn_sent(seg, flags, now)
            return
        if state is _CLOSED:
            rst = reset_for(seg, src_addr=self.local_addr, dst_addr=self.remote_addr)
            if rst is not None:
                self.counters.rst_out += 1
                self._ctl.append(rst)
            return
        if self._ka_idle is not None:
            self._keepalive_deadline = now + self._ka_idle
            self._keepalive_sent = 0
        c = self.counters
        rcv_nxt = self._rcv_nxt
        seq = rcv_nxt + seq_sub(seg.seq, rcv_nxt & _MASK)
        payload = seg.payload
        plen = len(payload)
        seg_len = plen + (flags & _SYN) // _SYN + (flags & _FIN)
        wnd = self._rcv_space()

        # 1. Sequence number: the four acceptability cases, with the left edge
        # at RCV.WUP (RCV.NXT when we last ACKed) rather than RCV.NXT, as Linux
        # does, so that a pure ACK overtaken by data is not dropped as "old".
        lo = self._rcv_wup
        if seg_len == 0:
            ok = lo <= seq <= rcv_nxt if wnd == 0 else lo <= seq < rcv_nxt + wnd
        elif wnd == 0:
            ok = seq == rcv_nxt and not flags & _SYN
            if ok and plen:  # zero window: keep the ACK and window, drop the data (and a FIN after it)
                payload = b""
                plen = 0
                flags &= ~_FIN
                self._ack_now = True
        else:
            end = seq + seg_len - 1
            ok = lo <= seq < rcv_nxt + wnd or rcv_nxt <= end < rcv_nxt + wnd
        if not ok:
            c.out_of_window += 1
            if flags & _RST:
                c.rst_in += 1
                return
            if flags & _SYN:
                if state is _SYN_RECEIVED and seq == rcv_nxt - 1:
                    self._on_syn_again(seg, flags, now)
                else:
                    self._challenge_ack(now)
                return
            if state is _TIME_WAIT and flags & _FIN:
                self._close_deadline = now + self.config.time_wait
            if seg_len:
                self._ack_now = True
            else:
                self._limited_ack(now)
            return

        # 2. RST (RFC 5961 3: only an exact match resets; otherwise challenge).
        if flags & _RST:
            c.rst_in += 1
            if seq != rcv_nxt:
                self._challenge_ack(now)
                return
            self._on_reset()
            return
        # 4. SYN in a synchronized state (RFC 5961 4).
        if flags & _SYN:
            self._challenge_ack(now)
            return
        # 5. ACK.
        if not flags & _ACK:
            return
        una = self._snd_una
        ack = una + seq_sub(seg.ack, una & _MASK)
        if state is _SYN_RECEIVED:
            if not una < ack <= self._snd_max:
                self._ctl.append(self._rst(ack, False))
                return
            self._snd_una = ack
            if self._snd_nxt < ack:
                self._snd_nxt = ack
            self._take_rtt_sample(ack, now)
            self._set_send_window(seg.window << self._snd_wscale, seq, ack)
            self._establish(now)
            state = self._state
        else:
            if ack > self._snd_max:
                c.bad_acks += 1
                self._limited_ack(now)
                return
            if ack < una - self._max_snd_wnd:
                self._challenge_ack(now)
                return
            self._probes_out = 0
            swnd = seg.window << self._snd_wscale
            if ack > una:
                self._on_new_ack(ack, now)
            elif ack == una and self._snd_max > una and (
                (seg_len == 0 and swnd == self._snd_wnd) or self._newly_sacked(seg.options.sack_blocks)
            ):
                self._on_dup_ack()
            if ack >= una:
                wl1 = self._snd_wl1
                if wl1 < seq or (wl1 == seq and self._snd_wl2 <= ack):
                    self._set_send_window(swnd, seq, ack)
            if self._fin_queued and self._snd_una > self._fin_seq:  # our FIN is acknowledged
                if state is _FIN_WAIT_1:
                    self._state = state = _FIN_WAIT_2
                    timeout = self.config.fin_wait_2_timeout
                    self._close_deadline = None if timeout is None else now + timeout
                elif state is _CLOSING:
                    self._enter_time_wait(now)
                    return
                elif state is _LAST_ACK:
                    self._enter_closed()
                    return
            if state is _TIME_WAIT:
                if flags & _FIN:  # the peer did not get our ACK of its FIN
                    self._ack_now = True
                    self._close_deadline = now + self.config.time_wait
                return
            if state is _FIN_WAIT_2 and self._close_deadline is not None:
                self._close_deadline = now + self.config.fin_wait_2_timeout  # type: ignore[operator]

        # 7./8. Segment text and FIN.
        if (plen or flags & _FIN) and state in _RECEIVING:
            self._on_data(seq, payload, flags, now)

    def fast_input(self, seq32: int, ack32: int, flags: int, window: int, payload: ReadableBuffer,
                   now: float) -> int:
        """Header prediction (Van Jacobson; BSD's and Linux's fast path): the common segment
        of an ESTABLISHED connection, processed without a :class:`TcpSegment` and without the
        general checks of :meth:`on_segment`, with exactly its effects.

        The caller has parsed a segment without options whose flags (9 bits) are ``flags``.
        Taken when: ESTABLISHED, flags ACK or ACK|PSH, ``seq32`` is RCV.NXT, no out-of-order
        data or FIN held, no FIN of ours queued, not in fast recovery, the ACK within
        [SND.UNA, SND.MAX] and, for data, the payload within the window; a segment without
        data must acknowledge something new (else the duplicate-ACK rules apply).

        Returns 0 when not taken (call :meth:`on_segment`), 1 when done and nothing needs
        sending before a timer (the caller schedules :meth:`next_deadline`), 2 when done and
        :meth:`poll` has segments to send (an ACK due now, or queued data the ACK let out).

        With libos.inet._tcpfast built, ``fast_input`` is its C version (with the same
        effects, tests/test_inet_tcpfast.py) and this method is ``_fast_input_py``: keep
        the two in step (see the end of this module).
        """
        cc = self._cc
        rcv_nxt = self._rcv_nxt
        if (self._state is not _ESTABLISHED or (flags != _ACK and flags != _ACK | _PSH)
                or seq32 != rcv_nxt & _MASK or self._ooo._starts or self._ooo_fin is not None
                or self._fin_queued or cc.in_recovery):
            return 0
        una = self._snd_una
        d = (ack32 - una) & _MASK
        if d >= 0x80000000 or una + d > self._snd_max:
            return 0   # an old or a bad ACK
        n = len(payload)
        cfg = self.config
        if n:
            rcvbuf = self._rcvbuf
            space = cfg.recv_buffer_size - len(rcvbuf)
            adv = self._rcv_adv - rcv_nxt
            if n > (space if space > adv else adv):
                return 0   # beyond the window (or a zero window): trimming rules
        elif not d:
            return 0
        # accepted: on_segment's steps 1-8 for this segment
        self._now = now
        c = self.counters
        c.segments_in += 1
        if self._ka_idle is not None:
            self._keepalive_deadline = now + self._ka_idle
            self._keepalive_sent = 0
        self._probes_out = 0
        ack = una + d
        if d:   # _on_new_ack outside fast recovery
            self._advance_una(ack, now)
            self._retries = self._backoff = self._dupacks = 0
            if cc.cwnd < cc.ssthresh:   # cc.on_ack(d) in slow start, inlined
                mss2 = 2 * cc.mss
                cc.cwnd += d if d < mss2 else mss2
            else:
                cc.on_ack(d)
            if self._snd_max > ack:   # now + self.rto, with the backoff just cleared
                rto = self._rtt.rto
                if rto > cfg.max_rto:
                    rto = cfg.max_rto
                self._rto_deadline = now + rto
            else:
                self._rto_deadline = None
        # window update (SND.WL1 <= SEG.SEQ = RCV.NXT and SND.WL2 <= SND.UNA <= SEG.ACK hold)
        self._set_send_window(window << self._snd_wscale, rcv_nxt, ack)
        if n:   # _on_data for in-order data that fits, nothing held out of order
            rcvbuf += payload
            self._rcv_nxt = rcv_nxt + n
            c.bytes_in += n
            rcv_mss = self._rcv_mss
            if n > rcv_mss:
                rcv_mss = self._rcv_mss = n if n < cfg.mss else cfg.mss
            unacked = self._unacked_rcv = self._unacked_rcv + n
            if not self._ack_now:
                delack = cfg.delayed_ack
                if unacked >= 2 * rcv_mss or not delack:
                    self._ack_now = True
                elif flags & _PSH and cfg.ack_on_push:
                    soon = cfg.push_ack_delay
                    if not soon:
                        self._ack_now = True
                    else:
                        dd = self._delack_deadline
                        if dd is None or dd > now + soon:
                            self._delack_deadline = now + soon
                elif self._delack_deadline is None:
                    self._delack_deadline = now + delack
        if (self._ack_now or self._ctl or self._retransmit_now
                or self._snd_buf_seq + len(self._sndbuf) > self._snd_nxt):
            self._dirty = True
            return 2
        return 1

    def accepts_new_syn(self, seg: TcpSegment) -> bool:
        """In TIME_WAIT, may this SYN reopen the 4-tuple (its seq is beyond RCV.NXT)?

        The caller can then drop this connection and hand the SYN to a listener
        (RFC 9293 3.10.7.4 allows it; Linux does the same).
        """
        flags = int(seg.flags)
        return (
            self._state is _TIME_WAIT and flags & (_SYN | _ACK | _RST) == _SYN
            and seq_gt(seg.seq, self._rcv_nxt & _MASK)
        )

    def _on_syn_again(self, seg: TcpSegment, flags: int, now: float) -> None:
        """In SYN_RECEIVED, the peer's SYN once more (seq = IRS)."""
        if not flags & _ACK:
            self._snd_nxt = self._iss  # it missed our SYN-ACK: send it again
            return
        una = self._snd_una
        ack = una + seq_sub(seg.ack, una & _MASK)
        if una < ack <= self._snd_max:
            # Simultaneous open (RFC 9293 figure 8): the peer's SYN-ACK acknowledges
            # our SYN; its SYN is old news.  Establish and acknowledge it.
            self._snd_una = ack
            self._set_send_window(seg.window, seg.seq, ack)  # a SYN's window is not scaled
            self._establish(now)
            self._ack_now = True
        else:
            self._ctl.append(self._rst(ack, False))

    def _on_syn_sent(self, seg: TcpSegment, flags: int, now: float) -> None:
        """RFC 9293 3.10.7.3."""
        iss = self._iss
        ack_ok = False
        ack = 0
        if flags & _ACK:
            ack = iss + seq_sub(seg.ack, iss & _MASK)
            if ack <= iss or ack > self._snd_max:
                if not flags & _RST:
                    self._ctl.append(self._rst(ack, False))
                return
            ack_ok = True
        if flags & _RST:
            self.counters.rst_in += 1
            if ack_ok:
                self._fail(errno.ECONNREFUSED, False)
            return
        if not flags & _SYN:
            return
        self._irs = seg.seq
        self._rcv_nxt = self._rcv_wup = seg.seq + 1
        self._negotiate(seg.options)
        self._rcv_adv = self._rcv_nxt + min(self.config.recv_buffer_size, 0xFFFF)
        if ack_ok:
            self._snd_una = ack
            if self._snd_nxt < ack:
                self._snd_nxt = ack
            self._take_rtt_sample(ack, now)
            self._set_send_window(seg.window, seg.seq, ack)  # windows in SYNs are never scaled
            self._establish(now)
            self._ack_now = True
            if len(seg.payload) or flags & _FIN:
                self._on_data(seg.seq + 1, seg.payload, flags, now)
        else:  # simultaneous open: answer with SYN-ACK (our SYN again, now with ACK)
            self._state = _SYN_RECEIVED
            self._snd_nxt = iss
            self._rtt_seq = None

    def _establish(self, now: float) -> None:
        self._state = _FIN_WAIT_1 if self._fin_queued else _ESTABLISHED
        mss = self._snd_mss
        self._cc = NewReno(mss, initial_window(mss, self.config.initial_cwnd), recover=self._snd_una)
        self._retries = 0
        self._backoff = 0
        self._rto_deadline = None
        if self._ka_idle is not None:
            self._keepalive_deadline = now + self._ka_idle

    def _on_reset(self) -> None:
        st = self._state
        if st is _SYN_RECEIVED:
            if not self._passive:
                self.error = errno.ECONNREFUSED
        elif st in _RESET_IS_ERROR:
            self.error = errno.ECONNRESET
        self._enter_closed()

    def _take_rtt_sample(self, ack: int, now: float) -> None:
        rtt_seq = self._rtt_seq
        if rtt_seq is not None and ack >= rtt_seq:
            self._rtt.sample(now - self._rtt_time)
            self._rtt_seq = None

    def _set_send_window(self, wnd: int, seq: int, ack: int) -> None:
        if wnd and not self._snd_wnd:  # the window opened: stop probing
            self._persist_backoff = 0
            self._persist_deadline = None
        self._snd_wnd = wnd
        self._snd_wl1 = seq
        self._snd_wl2 = ack
        if wnd > self._max_snd_wnd:
            self._max_snd_wnd = wnd

    def _advance_una(self, ack: int, now: float) -> None:
        """SND.UNA moves to ``ack``: drop the acknowledged bytes from the send buffer and
        take the RTT sample if the timed segment is covered."""
        buf_seq = self._snd_buf_seq
        buf = self._sndbuf
        data_end = buf_seq + len(buf)
        top = ack if ack < data_end else data_end
        if top > buf_seq:
            del buf[:top - buf_seq]
            self._snd_buf_seq = top
        self._snd_una = ack
        if self._snd_nxt < ack:
            self._snd_nxt = ack
        rtt_seq = self._rtt_seq
        if rtt_seq is not None and ack >= rtt_seq:
            self._rtt.sample(now - self._rtt_time)
            self._rtt_seq = None

    def _on_new_ack(self, ack: int, now: float) -> None:
        acked = ack - self._snd_una
        self._advance_una(ack, now)
        self._retries = 0
        self._backoff = 0
        cc = self._cc
        restart = True
        if cc.in_recovery:
            if ack >= cc.recover:
                cc.exit_recovery(self._snd_max - ack)
                self._dupacks = 0
            else:  # partial ACK: the next hole is at the new SND.UNA
                restart = cc.on_partial_ack(acked)
                self._retransmit_now = True
        else:
            self._dupacks = 0
            cc.on_ack(acked)
        if self._snd_max > ack:
            if restart or self._rto_deadline is None:
                self._rto_deadline = now + self.rto
        else:
            self._rto_deadline = None

    def _newly_sacked(self, blocks: tuple[tuple[int, int], ...]) -> bool:
        """RFC 6675 DupAck: SACK blocks reaching above any seen before (data or not)."""
        if not blocks or not self._sack_ok:
            return False
        una = self._snd_una
        ref = una & _MASK
        new = False
        for _, right in blocks:
            r = una + seq_sub(right, ref)
            if una < r <= self._snd_max and r > self._sack_high:
                self._sack_high = r
                new = True
        return new

    def _on_dup_ack(self) -> None:
        self._dupacks += 1
        self.counters.dup_acks += 1
        cc = self._cc
        if cc.in_recovery:
            cc.on_dup_ack()
        elif self._dupacks == self.config.dupack_threshold and self._snd_una >= cc.recover:
            cc.enter_recovery(self._snd_max - self._snd_una, self._snd_max)
            self._retransmit_now = True
            self._rtt_seq = None
            self.counters.fast_retransmits += 1

    def _rcv_space(self) -> int:
        """Bytes acceptable from RCV.NXT: the free buffer, or what we advertised if more."""
        free = self.config.recv_buffer_size - len(self._rcvbuf)
        adv = self._rcv_adv - self._rcv_nxt
        space = free if free > adv else adv
        return space if space > 0 else 0

    def _on_data(self, seq: int, payload: ReadableBuffer, flags: int, now: float) -> None:
        rcv_nxt = self._rcv_nxt
        n = len(payload)
        fin = flags & _FIN
        if seq < rcv_nxt:  # trim what we already have
            cut = rcv_nxt - seq
            if cut >= n:
                if n:
                    self._ack_now = True  # a duplicate: tell the sender what we have
                payload = b""
                n = 0
            else:
                payload = payload[cut:]
                n -= cut
            seq = rcv_nxt
        edge = rcv_nxt + self._rcv_space()
        if seq + n > edge:  # trim what does not fit the window (and a FIN after it)
            k = edge - seq if edge > seq else 0
            payload = payload[:k]
            n = k
            fin = 0
        c = self.counters
        if seq == rcv_nxt:
            fin_pos = seq + n
            if n:
                buf = self._rcvbuf
                buf += payload
                rcv_nxt += n
                ooo = self._ooo
                if ooo:
                    while (chunk := ooo.pop_ready(rcv_nxt)) is not None:
                        buf += chunk
                        rcv_nxt += len(chunk)
                    self._ack_now = True  # a hole was filled (or a new one remains)
                c.bytes_in += rcv_nxt - self._rcv_nxt
                self._rcv_nxt = rcv_nxt
                if n > self._rcv_mss:
                    self._rcv_mss = n if n < self.config.mss else self.config.mss
                self._unacked_rcv += n
                if not self._ack_now:
                    delack = self.config.delayed_ack
                    if self._unacked_rcv >= 2 * self._rcv_mss or not delack:
                        self._ack_now = True
                    elif flags & _PSH and self.config.ack_on_push:
                        soon = self.config.push_ack_delay
                        if not soon:
                            self._ack_now = True
                        elif self._delack_deadline is None or self._delack_deadline > now + soon:
                            self._delack_deadline = now + soon   # a reply may carry it
                    elif self._delack_deadline is None:
                        self._delack_deadline = now + delack
            if (fin and fin_pos == self._rcv_nxt) or (self._ooo_fin is not None and self._ooo_fin == self._rcv_nxt):
                self._on_fin(now)
        else:
            # Out of order: queue it and send a duplicate ACK now, one per segment
            # (RFC 5681 4.2), even if poll() runs once for a batch of segments.
            if n:
                self._ooo.add(seq, payload)
                c.out_of_order += 1
                c.ooo_dropped = self._ooo.dropped_segments
            if fin:
                self._ooo_fin = seq + n
            self._ctl.append(self._seg(self._ack_seq(), _ACK, b"", self._sack_options()))

    def _on_fin(self, now: float) -> None:
        self._rcv_nxt += 1
        self._fin_received = True
        self._ooo_fin = None
        self._ooo.clear()
        self._ack_now = True
        st = self._state
        if st is _ESTABLISHED:
            self._state = _CLOSE_WAIT
        elif st is _FIN_WAIT_1:  # our FIN is not acknowledged yet (else we would be in FIN_WAIT_2)
            self._state = _CLOSING
        elif st is _FIN_WAIT_2:
            self._enter_time_wait(now)

    # ------------------------------------------------------------------ output

    def poll(self, now: float) -> list[OutSegment]:
        """Run due timers and return every segment to transmit now, in order."""
        if self._state is _ESTABLISHED and not self._ctl:
            out = self._poll_one(now)
            if out is not None:
                return out
        self._now = now
        out = self._ctl
        if out:
            self._ctl = []
        else:
            out = []
        if self._state is _CLOSED:
            self._dirty = False
            return out
        d = self._rto_deadline
        if d is not None and now >= d:
            self._on_rto(now)
        d = self._close_deadline
        if d is not None and now >= d:
            self._enter_closed()
        d = self._persist_deadline
        if d is not None and now >= d:
            self._on_persist(now, out)
        d = self._keepalive_deadline
        if d is not None and now >= d:
            self._on_keepalive(now, out)
        d = self._delack_deadline
        if d is not None and now >= d:
            self._delack_deadline = None
            if not self._ack_now:
                self._ack_now = True
                self.counters.delayed_acks += 1
        if self._ctl:  # a timer failed the connection with a RST
            out.extend(self._ctl)
            self._ctl = []
        state = self._state
        if state is _CLOSED:
            self._dirty = False
            return out
        if state is _SYN_SENT or state is _SYN_RECEIVED:
            if self._snd_nxt == self._iss:
                self._emit_syn(out, now)
        elif state in _SENDING:
            if self._retransmit_now:
                self._retransmit_now = False
                self._retransmit_una(out)
            self._send_data(out, now, False)
        if self._ack_now and state is not _SYN_SENT:
            out.append(self._seg(self._ack_seq(), _ACK, b"", self._sack_options()))
        # Arm the retransmission timer, or the persist timer when data waits with nothing in flight.
        if self._snd_max > self._snd_una:
            if self._rto_deadline is None:
                self._rto_deadline = now + self.rto
            self._persist_deadline = None
        else:
            self._rto_deadline = None
            if (
                self._persist_deadline is None and state in _SENDING
                and self._snd_buf_seq + len(self._sndbuf) > self._snd_nxt
            ):
                interval = self._rtt.rto * (1 << min(self._persist_backoff, 30))
                self._persist_deadline = now + min(interval, self.config.max_rto)
        self._dirty = False
        return out

    def _poll_one(self, now: float) -> list[OutSegment] | None:
        """:meth:`poll`'s common case on a request/response connection, or None: ESTABLISHED,
        no timer due, nothing to retransmit, no FIN, nothing held out of order (no SACK
        option), and the queued new data fits one segment that the windows, and Nagle, let
        out now.  Exactly what the general path does then, with fewer steps
        (:meth:`poll_data`, as an :class:`OutSegment`)."""
        r = self.poll_data(now)
        if r is None:
            return None
        seq, ack, window, off, n = r
        return [OutSegment(self.local_port, self.remote_port, seq, ack, _FLAGS_ACK_PSH, window, NO_OPTIONS,
                           self._sndbuf[off:off + n], self.local_addr, self.remote_addr)]

    def poll_data(self, now: float) -> tuple[int, int, int, int, int] | None:
        """:meth:`poll` when all it would send is one new data segment, as raw fields.

        Contract: call it only in ESTABLISHED with no control segment queued (``poll``'s
        own guard).  Returns None, having changed nothing, unless no timer is due, nothing
        is to be retransmitted, no FIN is queued, nothing is held out of order, and the
        queued new data fits one segment that the windows and Nagle let out now.  Otherwise
        it does exactly what :meth:`poll` does then and returns the segment's fields
        ``(seq32, ack32, window, off, n)``: flags ACK|PSH, no options, the payload is
        ``n`` bytes of the send buffer (``self._sndbuf``) from offset ``off`` (valid until
        the next call on this connection).  The stack builds the frame from them without an
        :class:`OutSegment` (libos.inet.stack.Stack.poll_connection).

        Like :meth:`fast_input`, replaced by its C version when libos.inet._tcpfast is built
        (this method is then ``_poll_data_py``)."""
        if self._retransmit_now or self._fin_queued or self._ooo._starts or self._persist_deadline is not None:
            return None
        rto_d = self._rto_deadline
        if rto_d is not None and now >= rto_d:
            return None
        d = self._keepalive_deadline
        if d is not None and now >= d:
            return None
        nxt = self._snd_nxt
        off = nxt - self._snd_buf_seq
        n = len(self._sndbuf) - off
        mss = self._snd_mss
        if n <= 0 or n > mss or nxt != self._snd_max:
            return None
        una = self._snd_una
        room = self._snd_wnd
        cwnd = self._cc.cwnd
        if cwnd < room:
            room = cwnd
        cfg = self.config
        if una + room - nxt < n or (n < mss and nxt > una and cfg.nagle):
            return None
        self._now = now
        c = self.counters
        d = self._delack_deadline
        if d is not None:
            self._delack_deadline = None
            if now >= d and not self._ack_now:   # due: the segment carries the ACK
                c.delayed_acks += 1
        end = nxt + n
        c.bytes_out += n
        c.segments_out += 1
        if self._rtt_seq is None:
            self._rtt_seq = end
            self._rtt_time = now
        self._snd_nxt = self._snd_max = end
        # _seg(nxt, ACK|PSH, buf[off:], NO_OPTIONS), inlined
        rcv_nxt = self._rcv_wup = self._rcv_nxt
        window = self._advertise()
        self._ack_now = False
        self._unacked_rcv = 0
        if rto_d is None:
            if self._backoff:
                self._rto_deadline = now + self.rto
            else:   # self.rto without backoff
                rto = self._rtt.rto
                self._rto_deadline = now + (rto if rto < cfg.max_rto else cfg.max_rto)
        self._dirty = False
        return nxt & _MASK, rcv_nxt & _MASK, window, off, n

    def next_deadline(self, delack: bool = True) -> float | None:
        """When :meth:`poll` must next be called: the last ``now`` seen if it has work
        already, else the earliest timer, else None (nothing will happen by itself).

        ``delack=False`` leaves the delayed-ACK timer out (the stack keeps that short,
        usually cancelled timer apart from the others: see :attr:`delack_deadline`)."""
        if self._dirty or self._ack_now or self._ctl or self._retransmit_now:
            return self._now
        best = self._rto_deadline
        if delack:
            d = self._delack_deadline
            if d is not None and (best is None or d < best):
                best = d
        d = self._persist_deadline
        if d is not None and (best is None or d < best):
            best = d
        d = self._keepalive_deadline
        if d is not None and (best is None or d < best):
            best = d
        d = self._close_deadline
        if d is not None and (best is None or d < best):
            best = d
        return best

    @property
    def delack_deadline(self) -> float | None:
        """When the delayed ACK is due (None: no ACK is being delayed)."""
        return self._delack_deadline

    def _seg(self, seq: int, flags: int, payload: ReadableBuffer, options: TcpOptions) -> OutSegment:
        if flags & _SYN:
            window = self.config.recv_buffer_size - len(self._rcvbuf)
            if window > 0xFFFF:
                window = 0xFFFF
            if flags & _ACK:
                self._rcv_adv = self._rcv_nxt + window
        else:
            window = self._advertise()
        if flags & _ACK:
            self._rcv_wup = self._rcv_nxt
            ack = self._rcv_nxt & _MASK
            self._ack_now = False
            self._delack_deadline = None
            self._unacked_rcv = 0
        else:
            ack = 0
        self.counters.segments_out += 1
        return OutSegment(
            self.local_port, self.remote_port, seq & _MASK, ack, FLAGS[flags], window, options, payload,
            self.local_addr, self.remote_addr,
        )

    def _ack_seq(self) -> int:
        """Sequence number for a pure ACK: the highest sent, within the peer's window
        (Linux's tcp_acceptable_seq).  Not SND.NXT, which a timeout rewinds: an ACK
        below the peer's RCV.NXT would be dropped as old."""
        top = self._snd_una + self._snd_wnd
        return self._snd_max if self._snd_max <= top or self._state is _SYN_RECEIVED else top

    def _rst(self, seq: int, with_ack: bool) -> OutSegment:
        self.counters.rst_out += 1
        return OutSegment(
            self.local_port, self.remote_port, seq & _MASK, self._rcv_nxt & _MASK if with_ack else 0,
            FLAGS[_RST | _ACK if with_ack else _RST], 0, NO_OPTIONS, b"", self.local_addr, self.remote_addr,
        )

    def _advertise(self) -> int:
        """The window field for a non-SYN segment; moves the advertised right edge."""
        rcv_nxt = self._rcv_nxt
        free = self.config.recv_buffer_size - len(self._rcvbuf)
        cur = self._rcv_adv - rcv_nxt
        if cur < 0:
            cur = 0
        if free > cur:
            if free - cur < self._sws_threshold:  # receiver SWS avoidance
                free = cur
        else:
            free = cur  # never shrink the window
        ws = self._rcv_wscale
        field = free >> ws
        if field > 0xFFFF:
            field = 0xFFFF
        elif (field << ws) < cur:
            field += 1
        self._rcv_adv = rcv_nxt + (field << ws)
        return field

    def _sack_options(self) -> TcpOptions:
        if not self._sack_ok or not self._ooo:
            return NO_OPTIONS
        return TcpOptions.build(sack_blocks=[(s & _MASK, e & _MASK) for s, e in self._ooo.sack_blocks(4)])

    def _emit_syn(self, out: list[OutSegment], now: float) -> None:
        iss = self._iss
        cfg = self.config
        if self._state is _SYN_SENT:
            flags = _SYN
            opts = TcpOptions.build(
                mss=cfg.mss, sack_permitted=cfg.sack,
                window_scale=cfg.offered_window_scale if cfg.window_scaling else None,
            )
        else:
            flags = _SYN | _ACK
            opts = TcpOptions.build(
                mss=cfg.mss, sack_permitted=self._sack_ok,
                window_scale=self._rcv_wscale if self._ws_ok else None,
            )
        if self._snd_max > iss:
            self.counters.retransmits += 1
        else:
            self._rtt_seq = iss + 1
            self._rtt_time = now
        out.append(self._seg(iss, flags, b"", opts))
        self._snd_nxt = iss + 1
        if self._snd_max < iss + 1:
            self._snd_max = iss + 1

    def _send_data(self, out: list[OutSegment], now: float, force: bool) -> None:
        """Send new data (or resend after a timeout) as the windows, SWS avoidance and Nagle allow."""
        buf = self._sndbuf
        buf_seq = self._snd_buf_seq
        data_end = buf_seq + len(buf)
        nxt = self._snd_nxt
        fin_q = self._fin_queued
        if nxt > data_end or (nxt == data_end and not fin_q):
            return
        opts = self._sack_options()
        mss = self._snd_mss - opts.padded_len
        una = self._snd_una
        wnd_edge = una + self._snd_wnd
        cwnd_edge = una + self._cc.cwnd
        snd_max = self._snd_max
        nagle = self.config.nagle
        c = self.counters
        while nxt < data_end:
            avail = data_end - nxt
            n = avail if avail < mss else mss
            wroom = wnd_edge - nxt
            croom = cwnd_edge - nxt
            room = wroom if wroom < croom else croom
            if room < n:
                if room <= 0 or croom < n:
                    break  # window closed, or congestion-limited: wait for ACKs
                # Usable window smaller than the segment: sender SWS avoidance
                # (RFC 1122 4.2.3.4): wait unless it is half the peer's largest
                # window (resends after a timeout are never held back).
                if not force and nxt >= snd_max and room < (self._max_snd_wnd >> 1):
                    break
                n = room
            elif n < mss and nagle and not force and nxt >= snd_max and snd_max > una:
                break  # Nagle: one small segment in flight at a time
            end = nxt + n
            flags = _ACK
            if end == data_end:
                flags = _ACK | _PSH | _FIN if fin_q else _ACK | _PSH
            off = nxt - buf_seq
            out.append(self._seg(nxt, flags, buf[off:off + n], opts))
            if nxt < snd_max:
                c.retransmits += 1
            else:
                c.bytes_out += n
                if self._rtt_seq is None:
                    self._rtt_seq = end
                    self._rtt_time = now
            nxt = end + (flags & _FIN)
            if nxt > snd_max:
                snd_max = nxt
            force = False
        else:
            if fin_q and nxt == data_end:  # all data sent: FIN alone (a FIN needs no window)
                out.append(self._seg(nxt, _ACK | _FIN, b"", opts))
                if nxt < snd_max:
                    c.retransmits += 1
                nxt += 1
                if nxt > snd_max:
                    snd_max = nxt
        self._snd_nxt = nxt
        self._snd_max = snd_max

    def _retransmit_una(self, out: list[OutSegment]) -> None:
        """Fast retransmit, NewReno partial ACK or timeout: resend one segment at SND.UNA."""
        una = self._snd_una
        if una >= self._snd_max:
            return
        buf = self._sndbuf
        opts = self._sack_options()
        mss = self._snd_mss - opts.padded_len
        n = len(buf) if len(buf) < mss else mss
        # What was sent before, or what the window allows if more: never new
        # data beyond the peer's window.
        limit = max(self._snd_max - una, self._snd_wnd)
        if n > limit:
            n = limit
        flags = _ACK
        if n == len(buf):
            if n:
                flags |= _PSH
            if self._fin_queued:
                flags |= _FIN
        if not n and not flags & _FIN:
            return
        out.append(self._seg(una, flags, buf[:n], opts))
        self.counters.retransmits += 1
        end = una + n + (flags & _FIN)
        if self._snd_nxt < end:
            self._snd_nxt = end
        if self._snd_max < end:
            self._snd_max = end
        self._rtt_seq = None

    # ------------------------------------------------------------------ timers

    def _on_rto(self, now: float) -> None:
        self._rto_deadline = None
        if self._snd_max <= self._snd_una:
            return
        st = self._state
        cfg = self.config
        self._retries += 1
        self.counters.rto_timeouts += 1
        if st is _SYN_SENT:
            limit = cfg.syn_retries
        elif st is _SYN_RECEIVED:
            limit = cfg.synack_retries
        else:
            limit = cfg.max_retries
        if self._retries > limit:
            self._fail(errno.ETIMEDOUT, False)
            return
        self._backoff += 1
        self._rtt_seq = None  # Karn: nothing sent before now may be timed
        if st is _SYN_SENT or st is _SYN_RECEIVED:
            self._snd_nxt = self._iss
            return
        self._cc.on_timeout(self._snd_max - self._snd_una, self._retries == 1, self._snd_max)
        self._snd_nxt = self._snd_una  # go back: resend from SND.UNA under a 1-segment cwnd
        self._dupacks = 0
        # The first segment goes out whatever the peer's window says (as Linux
        # does), so a closed or small window cannot stall the retransmission.
        self._retransmit_now = True

    def _on_persist(self, now: float, out: list[OutSegment]) -> None:
        self._persist_deadline = None
        if self._snd_max > self._snd_una or self._state not in _SENDING:
            return
        if self._snd_una + self._snd_wnd <= self._snd_nxt:  # zero window: probe
            self._probes_out += 1
            if self._probes_out > self.config.max_retries:
                self._fail(errno.ETIMEDOUT, False)
                return
            out.append(self._seg(self._snd_una - 1, _ACK, b"", NO_OPTIONS))
            self.counters.zero_window_probes += 1
        else:  # a small window held back by SWS avoidance: send into it now
            self._send_data(out, now, True)
        self._persist_backoff += 1

    def _on_keepalive(self, now: float, out: list[OutSegment]) -> None:
        self._keepalive_deadline = None
        idle = self._ka_idle
        st = self._state
        if idle is None or (st is not _ESTABLISHED and st is not _CLOSE_WAIT):
            return
        if self._snd_max > self._snd_una or self._snd_buf_seq + len(self._sndbuf) > self._snd_nxt:
            self._keepalive_deadline = now + idle  # data is moving (or the RTO is in charge)
            return
        cfg = self.config
        if self._keepalive_sent >= cfg.keepalive_count:
            self._fail(errno.ETIMEDOUT, True)
            return
        out.append(self._seg(self._snd_una - 1, _ACK, b"", NO_OPTIONS))
        self._keepalive_sent += 1
        self.counters.keepalive_probes += 1
        self._keepalive_deadline = now + cfg.keepalive_interval

    # ----------------------------------------------------------------- helpers

    def _rate_ok(self, now: float) -> bool:
        if now - self._ack_window_start >= 1.0:
            self._ack_window_start = now
            self._ack_window_count = 0
        if self._ack_window_count >= self.config.challenge_ack_limit:
            self.counters.acks_rate_limited += 1
            return False
        self._ack_window_count += 1
        return True

    def _challenge_ack(self, now: float) -> None:
        if self._rate_ok(now):
            self._ack_now = True
            self.counters.challenge_acks += 1

    def _limited_ack(self, now: float) -> None:
        if self._rate_ok(now):
            self._ack_now = True

    def _fail(self, err: int, send_rst: bool) -> None:
        if send_rst and self._state.synchronized:
            self._ctl.append(self._rst(self._snd_max, True))
        self.error = err
        self._enter_closed()

    def _enter_time_wait(self, now: float) -> None:
        self._state = _TIME_WAIT
        self._close_deadline = now + self.config.time_wait
        self._rto_deadline = self._persist_deadline = self._keepalive_deadline = None
        self._retransmit_now = False
        self._sndbuf.clear()

    def _enter_closed(self) -> None:
        self._state = _CLOSED
        self._rto_deadline = self._delack_deadline = self._persist_deadline = None
        self._keepalive_deadline = self._close_deadline = None
        self._retransmit_now = False
        self._ack_now = False
        self._sndbuf.clear()
        self._ooo.clear()


# ------------------------------------------------------------------ C fast paths

#: The Python methods under their own names: when the C versions replace ``fast_input`` and
#: ``poll_data`` they take every call the C code does not handle (libos/inet/_tcpfast.c).
TcpConnection._fast_input_py = TcpConnection.fast_input  # type: ignore[attr-defined]
TcpConnection._poll_data_py = TcpConnection.poll_data  # type: ignore[attr-defined]


def _install_c_fast_paths() -> bool:
    """Replace :meth:`TcpConnection.fast_input` and :meth:`TcpConnection.poll_data` by their
    C versions from libos.inet._tcpfast (same contract, same effects on the same slots;
    subclasses and unusual values go to the Python methods).  Not done when
    ``DEMI_INET_NO_C`` is set in the environment, when the extension is not built, or when
    these classes no longer have the slots it uses."""
    if os.environ.get("DEMI_INET_NO_C"):
        return False
    try:
        from libos.inet import _tcpfast
    except ImportError:
        return False
    try:
        fast_input, poll_data = _tcpfast.setup(
            TcpConnection, RttEstimator, NewReno, TcpCounters, OutOfOrderQueue, TcpConfig, _ESTABLISHED,
            TcpConnection._fast_input_py, TcpConnection._poll_data_py,  # type: ignore[attr-defined]
        )
    except TypeError:
        return False
    TcpConnection.fast_input = fast_input  # type: ignore[method-assign]
    TcpConnection.poll_data = poll_data  # type: ignore[method-assign]
    return True


#: True when fast_input and poll_data are the C versions.
C_FAST_PATHS = _install_c_fast_paths()
