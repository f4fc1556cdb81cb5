"""Round-trip time estimation and the retransmission timeout (RFC 6298)."""

from __future__ import annotations

__all__ = ["RttEstimator"]


class RttEstimator:
    """SRTT / RTTVAR smoothing with alpha = 1/8, beta = 1/4, K = 4.

    ``rto`` is the base timeout, clamped to ``[min_rto, max_rto]``; the
    connection applies exponential backoff on top of it.  Callers feed only
    samples that Karn's rule allows (never from a retransmitted segment).
    ``granularity`` is the G of RFC 6298 (the clock is a float, so 1 ms).
    """

    __slots__ = ("srtt", "rttvar", "rto", "min_rto", "max_rto", "granularity", "samples")

    def __init__(self, initial_rto: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0,
                 granularity: float = 0.001) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.rto = min(max(initial_rto, min_rto), max_rto)
        self.samples = 0

    def sample(self, rtt: float) -> None:
        """Take one measurement (seconds) and recompute the RTO (RFC 6298 2.2-2.4)."""
        if rtt < 0:
            rtt = 0.0
        srtt = self.srtt
        if srtt is None:
            srtt = self.srtt = rtt
            var = self.rttvar = rtt / 2
        else:
            diff = srtt - rtt
            var = self.rttvar = 0.75 * self.rttvar + 0.25 * (diff if diff >= 0 else -diff)
            srtt = self.srtt = 0.875 * srtt + 0.125 * rtt
        var *= 4
        g = self.granularity
        rto = srtt + (var if var > g else g)
        lo = self.min_rto
        if rto < lo:   # min(max(rto, min_rto), max_rto), written out (it runs per ACK)
            rto = lo
        hi = self.max_rto
        self.rto = rto if rto < hi else hi
        self.samples += 1
