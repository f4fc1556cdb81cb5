"""Tunables of a TCP connection, with the defaults and why they were chosen."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TcpConfig", "DEFAULT_CONFIG"]


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection settings.  All times are seconds (floats).

    Sizes:
      ``mss``: the MSS we advertise and the largest payload we send (1460 =
      a 1500-byte Ethernet MTU minus 40 bytes of IPv4 and TCP headers).
      ``send_buffer_size`` / ``recv_buffer_size``: bounds of the send queue
      (unacknowledged plus unsent bytes; ``send()`` accepts only what fits)
      and of the receive queue (in-order bytes not yet read; the advertised
      window is its free space).

    Options (RFC 7323, RFC 2018): ``window_scaling`` offers the window-scale
    option; ``window_scale`` is the shift we offer (None: the smallest shift
    that lets the receive buffer be advertised in full).  ``sack`` offers
    SACK-permitted and, once both sides agreed, puts SACK blocks in our ACKs
    while out-of-order data is queued.  Each option is only used when both
    SYNs carried it.  Timestamps are not implemented (never offered).

    Retransmission (RFC 6298): ``initial_rto`` 1 s; ``min_rto`` 0.2 s, the
    Linux value (RFC 6298 says 1 s SHOULD; 200 ms is what Linux peers expect,
    and with 1 s a lossy transfer stalls a whole second per RTO);
    ``max_rto`` 60 s; the RTO doubles on every timeout.  ``syn_retries`` /
    ``synack_retries`` / ``max_retries`` are the number of retransmissions
    of a SYN / SYN-ACK / data or FIN before the connection fails with
    ETIMEDOUT (Linux: 6, 5, 15).  ``max_retries`` also bounds unanswered
    zero-window probes.

    Congestion control (RFC 5681 + RFC 6582 NewReno): ``initial_cwnd`` in
    segments (None: RFC 5681's 2-4 segments depending on the MSS);
    ``dupack_threshold`` 3.

    Acknowledgements (RFC 1122 4.2.3.2, RFC 5681 4.2): ``delayed_ack`` is the
    delayed-ACK timeout (40 ms, Linux's minimum; None or 0: ACK every
    segment at once).  An ACK goes out at once for every second full-sized
    segment, for out-of-order data, for data that fills a hole, for a FIN,
    and (``ack_on_push``) for a segment with PSH.  Linux does not ACK PSH
    segments at once, but a peer that runs Nagle and writes small pieces
    would otherwise wait 40 ms per write; ACKing them costs one extra ACK
    per application write.  ``push_ack_delay`` (None: off) turns that "at
    once" into "within this many seconds": the ACK of a PSH segment waits
    that long for the application's reply, which then carries it (ACK
    coalescing for request/response traffic; the library OS sets 1 ms).

    ``nagle``: Nagle's algorithm (RFC 896) for our sends; off by default, as
    if every connection had TCP_NODELAY (request/response traffic is the
    main use and sender silly-window avoidance is always on).

    Closing: ``msl`` 30 s, so TIME_WAIT lasts 2*MSL = 60 s (Linux's
    TCP_TIMEWAIT_LEN); tests use a short one.  ``fin_wait_2_timeout``: a
    connection in FIN_WAIT_2 that hears nothing from its peer for this long
    is closed (Linux tcp_fin_timeout, 60 s; None: wait forever).

    Keepalive (RFC 1122 4.2.3.6): off unless ``keepalive_idle`` is set; then
    after that much idle time a probe (seq = SND.UNA-1, no data) goes out
    every ``keepalive_interval`` and after ``keepalive_count`` unanswered
    ones the connection is reset with ETIMEDOUT (Linux: 7200, 75, 9).

    ``challenge_ack_limit``: at most this many challenge ACKs (RFC 5961 7)
    and replies to out-of-window pure ACKs per second, per connection.
    ``max_ooo_blocks``: separate out-of-order ranges kept for reassembly;
    beyond it the highest range is dropped (the peer resends it).
    """

    mss: int = 1460
    send_buffer_size: int = 256 * 1024
    recv_buffer_size: int = 256 * 1024
    window_scaling: bool = True
    window_scale: int | None = None
    sack: bool = True
    nagle: bool = False
    initial_cwnd: int | None = None
    dupack_threshold: int = 3
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    syn_retries: int = 6
    synack_retries: int = 5
    max_retries: int = 15
    delayed_ack: float | None = 0.040
    ack_on_push: bool = True
    push_ack_delay: float | None = None
    msl: float = 30.0
    fin_wait_2_timeout: float | None = 60.0
    keepalive_idle: float | None = None
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
    challenge_ack_limit: int = 10
    max_ooo_blocks: int = 64

    def __post_init__(self) -> None:
        if not 64 <= self.mss <= 65495:
            raise ValueError(f"mss must be in 64..65495, got {self.mss}")
        if self.recv_buffer_size < self.mss or self.send_buffer_size < 1:
            raise ValueError("recv_buffer_size must hold at least one MSS and send_buffer_size at least one byte")
        if self.window_scale is not None and not 0 <= self.window_scale <= 14:
            raise ValueError(f"window_scale must be in 0..14 (RFC 7323), got {self.window_scale}")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")
        if self.max_ooo_blocks < 1 or self.dupack_threshold < 1:
            raise ValueError("max_ooo_blocks and dupack_threshold must be at least 1")

    @property
    def time_wait(self) -> float:
        """How long TIME_WAIT lasts: 2 * MSL."""
        return 2 * self.msl

    @property
    def offered_window_scale(self) -> int:
        """The window-scale shift we put in our SYN (when ``window_scaling``)."""
        if self.window_scale is not None:
            return self.window_scale
        shift = 0
        while (self.recv_buffer_size >> shift) > 0xFFFF and shift < 14:
            shift += 1
        return shift


DEFAULT_CONFIG = TcpConfig()
