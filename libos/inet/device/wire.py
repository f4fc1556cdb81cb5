"""An in-process link between two :class:`WireDevice` endpoints, with seeded impairments.

For tests of the stack without a kernel::

    link = WireLink(seed=7, loss=0.01, dup=0.01, reorder=0.05, delay=0.002, jitter=0.0005)
    a, b = link.a, link.b            # two Devices
    a.transmit([frame])              # stamped with link.now
    link.advance(link.now + 0.003)   # time only moves when the caller says so (sans-IO)
    b.receive()                      # -> [(memoryview, False)]

Per frame and direction, in this order, each from that direction's own
``random.Random`` (so the result depends only on the seed and the sequence of
calls, not on the other direction's traffic):

- **loss**: dropped with probability ``loss``;
- **duplication**: with probability ``dup`` delivered twice;
- per copy, **delay**: ``delay + jitter * U(0, 1)``; copies keep their send
  order (FIFO) unless **reordered**: with probability ``reorder`` a copy is
  held back an extra ``reorder_delay`` (default ``2 * delay + 1 ms``) and so
  arrives after frames sent up to that much later;
- **corruption**: with probability ``corrupt`` one byte of a copy is flipped.

``link.stats`` counts each of these per direction ("a->b", "b->a").
Different settings per direction: ``WireLink(a_to_b=Impairment(...), b_to_a=Impairment(...))``.
``fileno()`` is an eventfd that is readable while frames are due, so an event
loop can wait on a wire device like on a real one (it only changes state in
``transmit``, ``advance`` and ``receive``).
"""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .base import Device, Frame, RxFrame
from .tap import random_mac

__all__ = ["Impairment", "WireLink", "WireDevice", "wire_pair"]


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of a :class:`WireLink` does to frames (probabilities in [0, 1], seconds)."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_delay: float | None = None

    def __post_init__(self) -> None:
        for name in ("loss", "dup", "reorder", "corrupt"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        for name in ("delay", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.reorder_delay is not None and self.reorder_delay < 0:
            raise ValueError("reorder_delay must be >= 0")

    @property
    def hold_back(self) -> float:
        return 2 * self.delay + 0.001 if self.reorder_delay is None else self.reorder_delay


class _Direction:
    __slots__ = ("imp", "rng", "queue", "seq", "last_fifo", "stats")

    def __init__(self, imp: Impairment, seed: int) -> None:
        self.imp = imp
        self.rng = random.Random(seed)
        self.queue: list[tuple[float, int, bytes]] = []
        self.seq = 0
        self.last_fifo = float("-inf")
        self.stats = dict.fromkeys(
            ("sent", "lost", "duplicated", "reordered", "corrupted", "delivered", "overflow"), 0)


class WireLink:
    """A full-duplex simulated link; its two ends are ``link.a`` and ``link.b``.

    ``now`` is the link's clock, moved only by :meth:`advance`.  ``queue_limit``
    frames may be in flight per direction (more are tail-dropped: "overflow").
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        loss: float = 0.0,
        dup: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        reorder_delay: float | None = None,
        a_to_b: Impairment | None = None,
        b_to_a: Impairment | None = None,
        now: float = 0.0,
        mtu: int = 1500,
        queue_limit: int = 100_000,
        mac_a: bytes | None = None,
        mac_b: bytes | None = None,
    ) -> None:
        both = Impairment(loss, dup, reorder, corrupt, delay, jitter, reorder_delay)
        self.now = float(now)
        self.mtu = mtu
        self.queue_limit = queue_limit
        self._dirs = (_Direction(a_to_b or both, seed * 2 + 1), _Direction(b_to_a or both, seed * 2 + 2))
        self.a = WireDevice(self, 0, "wire-a", mac_a)
        self.b = WireDevice(self, 1, "wire-b", mac_b)

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return {"a->b": self._dirs[0].stats, "b->a": self._dirs[1].stats}

    def advance(self, now: float) -> None:
        """Move the clock to ``now`` (never backwards); frames due by then become receivable."""
        if now < self.now:
            raise ValueError(f"time goes forward only: {now} < {self.now}")
        self.now = float(now)
        self.a._sync()
        self.b._sync()

    def next_arrival(self) -> float | None:
        """When the next frame in flight (either direction) arrives, or None if none is."""
        times = [d.queue[0][0] for d in self._dirs if d.queue]
        return min(times) if times else None

    def in_flight(self) -> int:
        return len(self._dirs[0].queue) + len(self._dirs[1].queue)

    # --- used by the endpoints ---------------------------------------------
    def _send(self, direction: int, frames: Sequence[Frame]) -> int:
        d = self._dirs[direction]
        imp, rng, st, q = d.imp, d.rng, d.stats, d.queue
        limit = self.mtu + 18
        now = self.now
        for f in frames:
            if len(f) > limit:
                raise ValueError(f"frame of {len(f)} bytes exceeds the {limit}-byte maximum (MTU {self.mtu} + 18)")
        accepted = 0
        for f in frames:
            if len(q) >= self.queue_limit:
                st["overflow"] += 1
                break
            accepted += 1
            st["sent"] += 1
            if rng.random() < imp.loss:
                st["lost"] += 1
                continue
            copies = 1
            if rng.random() < imp.dup:
                st["duplicated"] += 1
                copies = 2
            data = bytes(f)
            for _ in range(copies):
                t = now + imp.delay + imp.jitter * rng.random()
                if rng.random() < imp.reorder:
                    st["reordered"] += 1
                    t += imp.hold_back
                else:
                    t = max(t, d.last_fifo)  # FIFO unless deliberately reordered
                    d.last_fifo = t
                payload = data
                if rng.random() < imp.corrupt and payload:
                    st["corrupted"] += 1
                    buf = bytearray(payload)
                    buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
                    payload = bytes(buf)
                d.seq += 1
                heapq.heappush(q, (t, d.seq, payload))
        (self.b if direction == 0 else self.a)._sync()
        return accepted

    def _due(self, direction: int) -> bool:
        q = self._dirs[direction].queue
        return bool(q) and q[0][0] <= self.now

    def _take(self, direction: int) -> list[RxFrame]:
        d = self._dirs[direction]
        q, now = d.queue, self.now
        out: list[RxFrame] = []
        while q and q[0][0] <= now:
            out.append((memoryview(heapq.heappop(q)[2]), False))
        d.stats["delivered"] += len(out)
        return out


class WireDevice(Device):
    """One end of a :class:`WireLink` (make them with ``WireLink(...)`` or :func:`wire_pair`)."""

    def __init__(self, link: WireLink, side: int, name: str, mac: bytes | None) -> None:
        self.link = link
        self._side = side
        self.name = name
        self.mac = bytes(mac) if mac is not None else random_mac()
        self.mtu = link.mtu
        self._efd: int | None = None
        self._signalled = False
        self._closed = False

    def transmit(self, frames: Sequence[Frame]) -> int:
        """Put ``frames`` on the link at ``link.now``; returns how many it took (all, unless its queue is full)."""
        if self._closed:
            raise ValueError("device is closed")
        return self.link._send(self._side, frames)

    def receive(self) -> list[RxFrame]:
        """Frames that have arrived by ``link.now``, in arrival order."""
        if self._closed:
            raise ValueError("device is closed")
        out = self.link._take(1 - self._side)
        self._sync()
        return out

    def fileno(self) -> int:
        """An eventfd, readable while frames are due (created on first use)."""
        if self._closed:
            raise ValueError("device is closed")
        if self._efd is None:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._signalled = False
            self._sync()
        return self._efd

    def _sync(self) -> None:
        if self._efd is None:
            return
        due = self.link._due(1 - self._side)
        if due and not self._signalled:
            os.eventfd_write(self._efd, 1)
            self._signalled = True
        elif not due and self._signalled:
            try:
                os.eventfd_read(self._efd)
            except BlockingIOError:
                pass
            self._signalled = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._efd is not None:
                os.close(self._efd)
                self._efd = None

    def __repr__(self) -> str:
        return f"<WireDevice {self.name} now={self.link.now}>"


def wire_pair(**kwargs) -> tuple[WireDevice, WireDevice]:
    """``WireLink(**kwargs)``'s two ends; reach the link (clock, stats) as ``a.link``."""
    link = WireLink(**kwargs)
    return link.a, link.b
