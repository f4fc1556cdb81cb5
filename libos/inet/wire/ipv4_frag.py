"""IPv4 fragment reassembly (RFC 791, RFC 815), sans-IO.

:class:`Reassembler` is fed ``(packet, now)`` and returns the whole datagram
when its last missing piece arrives.  It never reads a clock: ``now`` is any
non-decreasing number in the same unit as ``timeout`` (e.g. seconds from
``time.monotonic()`` or virtual milliseconds in tests).

Policy, chosen for a host facing untrusted peers:

* Datagrams are keyed by (src, dst, protocol, ident).  Each has a deadline
  ``timeout`` after its first fragment; call :meth:`Reassembler.expire` at
  :meth:`Reassembler.next_deadline`.
* Fragment data is copied out of the caller's buffer (RX ring memory is
  reused), so nothing here aliases packet memory.
* Overlaps that carry the same bytes (retransmitted or re-fragmented
  duplicates) are accepted; an overlap with *different* bytes drops the whole
  datagram, and further fragments of it are dropped until its deadline.
  (Stricter: RFC 5722 drops IPv6 datagrams on any overlap, and Linux >= 4.19
  drops IPv4 ones on any overlap that is not an exact duplicate.)
* A fragment is rejected (``stats.malformed``) when it has MF set and a data
  length that is zero or not a multiple of 8.  One that would end past
  65535 bytes, or contradicts the known end (a second, different last
  fragment, or data beyond the last fragment's end), drops the datagram.
* Limits: at most ``max_datagrams`` in progress and ``max_bytes`` buffered
  (payload bytes plus ``fragment_overhead`` per stored piece, so floods of
  tiny fragments are charged for their bookkeeping).  To make room, the
  oldest datagrams are evicted; a datagram that cannot fit on its own is
  dropped.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from .ipv4 import IPV4_MAX_LEN, Ipv4Packet

__all__ = ["Reassembler", "ReassemblyStats"]

_Key = tuple[int, int, int, int]


@dataclass(slots=True)
class ReassemblyStats:
    """Counters, for the stack's statistics."""

    fragments: int = 0          #: fragments that added data
    duplicates: int = 0         #: fragments whose data was all held already
    reassembled: int = 0        #: datagrams completed
    expired: int = 0            #: datagrams dropped at their deadline
    overlap_drops: int = 0      #: datagrams dropped for conflicting overlaps
    limit_drops: int = 0        #: datagrams evicted or refused for the limits
    malformed: int = 0          #: fragments or datagrams rejected as invalid
    dead_drops: int = 0         #: fragments of an already dropped datagram


class _Datagram:
    __slots__ = ("deadline", "first", "total", "starts", "chunks", "received", "cost")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.first: Ipv4Packet | None = None   # header template from the offset-0 fragment
        self.total: int | None = None          # data length, known once the last fragment came
        self.starts: list[int] = []            # sorted, disjoint pieces
        self.chunks: list[bytes] = []
        self.received = 0
        self.cost = 0

    def end(self) -> int:
        return self.starts[-1] + len(self.chunks[-1]) if self.starts else 0

    def new_pieces(self, start: int, data: bytes) -> list[tuple[int, bytes]] | None:
        """The parts of ``data`` (at ``start``) not held yet; None on a conflicting overlap."""
        starts, chunks = self.starts, self.chunks
        end = start + len(data)
        i = max(bisect_right(starts, start) - 1, 0)
        pos = start
        pieces: list[tuple[int, bytes]] = []
        while i < len(starts) and pos < end:
            cs = starts[i]
            chunk = chunks[i]
            ce = cs + len(chunk)
            if ce <= pos:
                i += 1
                continue
            if cs >= end:
                break
            if cs > pos:
                pieces.append((pos, data[pos - start : cs - start]))
                pos = cs
            oe = min(ce, end)
            if chunk[pos - cs : oe - cs] != data[pos - start : oe - start]:
                return None
            pos = oe
            i += 1
        if pos < end:
            pieces.append((pos, data[pos - start :]))
        return pieces

    def add(self, pieces: list[tuple[int, bytes]], cost: int) -> None:
        for pos, piece in pieces:
            idx = bisect_left(self.starts, pos)
            self.starts.insert(idx, pos)
            self.chunks.insert(idx, piece)
            self.received += len(piece)
        self.cost += cost


class Reassembler:
    """Reassemble IPv4 fragments under memory and time limits (see module docstring)."""

    def __init__(
        self,
        max_datagrams: int = 64,
        max_bytes: int = 4 << 20,
        timeout: float = 30.0,
        *,
        fragment_overhead: int = 64,
    ) -> None:
        if max_datagrams < 1 or max_bytes < 1 or timeout <= 0 or fragment_overhead < 0:
            raise ValueError("max_datagrams, max_bytes and timeout must be positive")
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.fragment_overhead = fragment_overhead
        self.stats = ReassemblyStats()
        self._pending: dict[_Key, _Datagram] = {}   # insertion order == deadline order
        self._dead: dict[_Key, float] = {}          # dropped datagrams -> deadline
        self._bytes = 0

    # --- queries ---------------------------------------------------------
    @property
    def pending(self) -> int:
        """Datagrams in progress."""
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        """Bytes charged against ``max_bytes`` (payload plus per-piece overhead)."""
        return self._bytes

    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has work, or None if nothing is pending."""
        for dg in self._pending.values():
            return dg.deadline
        return None

    # --- input -----------------------------------------------------------
    def feed(self, packet: Ipv4Packet, now: float) -> Ipv4Packet | None:
        """Take one received packet; return a complete datagram or None.

        A packet that is not a fragment is returned unchanged (not copied).
        A completed datagram is a new :class:`Ipv4Packet` with the first
        fragment's header fields and options, MF clear, offset 0, and the
        reassembled data as ``bytes`` payload.
        """
        if not packet.more_fragments and packet.fragment_offset == 0:
            return packet
        stats = self.stats
        key = (packet.src, packet.dst, packet.protocol, packet.ident)
        dead = self._dead.get(key)
        if dead is not None:
            if dead > now:
                stats.dead_drops += 1
                return None
            del self._dead[key]
        start = packet.fragment_offset
        length = len(packet.payload)
        end = start + length
        if packet.more_fragments and (length == 0 or length & 7):
            stats.malformed += 1
            return None
        if packet.header_len + end > IPV4_MAX_LEN:
            stats.malformed += 1
            self._drop(key, now)
            return None

        dg = self._pending.get(key)
        if dg is not None and dg.deadline <= now:
            self._discard(key, dg)
            stats.expired += 1
            dg = None
        if dg is None:
            while len(self._pending) >= self.max_datagrams:
                self._evict_oldest()
            dg = self._pending[key] = _Datagram(now + self.timeout)

        if packet.more_fragments:
            if dg.total is not None and end > dg.total:
                stats.malformed += 1
                self._drop(key, now)
                return None
        else:
            if (dg.total is not None and dg.total != end) or dg.end() > end:
                stats.malformed += 1
                self._drop(key, now)
                return None
            dg.total = end

        pieces = dg.new_pieces(start, bytes(packet.payload))
        if pieces is None:
            stats.overlap_drops += 1
            self._drop(key, now)
            return None
        if pieces:
            cost = sum(len(p) for _, p in pieces) + self.fragment_overhead * len(pieces)
            if dg.cost + cost > self.max_bytes:  # can never fit: spare the others
                stats.limit_drops += 1
                self._drop(key, now)
                return None
            while self._bytes + cost > self.max_bytes:
                oldest = next(iter(self._pending))
                if oldest == key:  # this datagram is the oldest: it cannot fit
                    stats.limit_drops += 1
                    self._drop(key, now)
                    return None
                self._evict_oldest()
            dg.add(pieces, cost)
            self._bytes += cost
            stats.fragments += 1
        else:
            stats.duplicates += 1
        if start == 0 and dg.first is None:
            dg.first = dataclasses.replace(packet, payload=b"", more_fragments=False, checksum=0)

        if dg.total is not None and dg.received == dg.total:
            return self._complete(key, dg, now)
        return None

    # --- time ------------------------------------------------------------
    def expire(self, now: float) -> list[Ipv4Packet]:
        """Drop datagrams whose deadline is ``<= now``.

        Returns, for each dropped datagram whose first fragment had arrived,
        that fragment (header and its data), so the caller can send ICMP Time
        Exceeded, code 1, as RFC 1122 3.3.2 asks.
        """
        out: list[Ipv4Packet] = []
        while self._pending:
            key, dg = next(iter(self._pending.items()))
            if dg.deadline > now:
                break
            self._discard(key, dg)
            self.stats.expired += 1
            if dg.first is not None and dg.starts and dg.starts[0] == 0:
                out.append(dataclasses.replace(dg.first, more_fragments=True, payload=dg.chunks[0]))
        while self._dead:
            key, deadline = next(iter(self._dead.items()))
            if deadline > now:
                break
            del self._dead[key]
        return out

    # --- internals -------------------------------------------------------
    def _complete(self, key: _Key, dg: _Datagram, now: float) -> Ipv4Packet | None:
        self._discard(key, dg)
        first = dg.first
        assert first is not None  # byte 0 is held, so the offset-0 fragment came
        data = b"".join(dg.chunks)
        if first.header_len + len(data) > IPV4_MAX_LEN:
            self.stats.malformed += 1
            self._tombstone(key, dg.deadline)
            return None
        self.stats.reassembled += 1
        return dataclasses.replace(first, payload=data)

    def _discard(self, key: _Key, dg: _Datagram) -> None:
        del self._pending[key]
        self._bytes -= dg.cost

    def _drop(self, key: _Key, now: float) -> None:
        """Forget a datagram and refuse its further fragments until its deadline."""
        dg = self._pending.get(key)
        if dg is not None:
            self._discard(key, dg)
            self._tombstone(key, dg.deadline)
        else:
            self._tombstone(key, now + self.timeout)

    def _evict_oldest(self) -> None:
        key, dg = next(iter(self._pending.items()))
        self.stats.limit_drops += 1
        self._discard(key, dg)
        self._tombstone(key, dg.deadline)

    def _tombstone(self, key: _Key, deadline: float) -> None:
        self._dead.pop(key, None)
        self._dead[key] = deadline
        while len(self._dead) > self.max_datagrams:
            del self._dead[next(iter(self._dead))]
