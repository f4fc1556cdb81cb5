"""Congestion control: RFC 5681 slow start / congestion avoidance with
RFC 6582 NewReno fast recovery.

Everything is in bytes.  The connection decides *when* an event happens
(new ACK, duplicate ACK, partial ACK, timeout) and calls the matching method;
this class only does the window arithmetic.
"""

from __future__ import annotations

__all__ = ["NewReno", "initial_window"]

_INFINITE = 1 << 62


def initial_window(mss: int, segments: int | None = None) -> int:
    """RFC 5681 3.1 IW: 2, 3 or 4 segments by MSS size, or ``segments`` * MSS if given."""
    if segments is not None:
        return max(1, segments) * mss
    if mss > 2190:
        return 2 * mss
    if mss > 1095:
        return 3 * mss
    return 4 * mss


class NewReno:
    """cwnd and ssthresh of one connection, plus the fast-recovery state.

    Slow start grows cwnd by min(acked, 2*SMSS) per ACK (RFC 3465 appropriate
    byte counting with L = 2, which makes up for delayed ACKs); congestion
    avoidance adds one SMSS per cwnd of acknowledged bytes.
    """

    __slots__ = ("mss", "cwnd", "ssthresh", "in_recovery", "recover", "_ca_bytes", "_partial_seen")

    def __init__(self, mss: int, initial_cwnd: int, recover: int = 0) -> None:
        self.mss = mss
        self.cwnd = initial_cwnd
        self.ssthresh = _INFINITE
        self.in_recovery = False
        #: RFC 6582 "recover": the highest sequence number sent when the
        #: last recovery (fast or by timeout) began.
        self.recover = recover
        self._ca_bytes = 0
        self._partial_seen = False

    def on_ack(self, acked: int) -> None:
        """New data acknowledged outside fast recovery."""
        mss = self.mss
        if self.cwnd < self.ssthresh:
            self.cwnd += acked if acked < 2 * mss else 2 * mss
        else:
            self._ca_bytes += acked
            if self._ca_bytes >= self.cwnd:
                self._ca_bytes -= self.cwnd
                self.cwnd += mss

    def enter_recovery(self, flight: int, recover: int) -> None:
        """Third duplicate ACK: halve, then inflate by the three segments that left."""
        mss = self.mss
        self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = self.ssthresh + 3 * mss
        self.in_recovery = True
        self.recover = recover
        self._partial_seen = False
        self._ca_bytes = 0

    def on_dup_ack(self) -> None:
        """A further duplicate ACK during recovery: one more segment left the network."""
        if self.in_recovery:
            self.cwnd += self.mss

    def on_partial_ack(self, acked: int) -> bool:
        """A partial ACK (RFC 6582 3.2 step 5): deflate; return True for the first one."""
        cwnd = self.cwnd - acked
        if acked >= self.mss:
            cwnd += self.mss
        self.cwnd = max(cwnd, self.mss)
        first = not self._partial_seen
        self._partial_seen = True
        return first

    def exit_recovery(self, flight: int) -> None:
        """A full ACK (covers ``recover``): deflate to ssthresh (RFC 6582 step 6, option 2)."""
        self.cwnd = min(self.ssthresh, max(flight, self.mss) + self.mss)
        self.in_recovery = False

    def on_timeout(self, flight: int, first: bool, recover: int) -> None:
        """RTO expiry: ssthresh = max(FlightSize/2, 2*SMSS) (kept on repeated timeouts), cwnd = 1 SMSS."""
        if first:
            self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.in_recovery = False
        self.recover = recover
        self._ca_bytes = 0
