"""The physical-layer interface under the sans-IO ``inet`` stack.

One shape for every device::

    n = dev.transmit([frame, frame, ...])      # frames: bytes-like, Ethernet, no FCS
    for data, csum_not_ready in dev.receive(): # never blocks; [] when nothing is there
        host.on_frame(data, now, csum_ok=not csum_not_ready)
    selector.register(dev.fileno(), EVENT_READ)  # wait when receive() came back empty
    dev.close()

``receive()`` returns a list of ``(memoryview, bool)`` tuples (:data:`RxFrame`).
The bool is ``csum_not_ready``: True when the kernel says the L4 checksum of
the frame was never filled in (``TP_STATUS_CSUMNOTREADY``, a local sender
with checksum offload); then the stack must not verify that checksum.  Devices
that cannot know (TAP, the in-process wire) always say False.

**Lifetime**: a received memoryview (and any slice of it, e.g. a parsed
payload) is valid only until the next ``receive()``, ``wait()`` or ``close()``
on the same device: the AF_PACKET ring hands the memory back to the kernel
then.  Copy (``bytes(view)``) what must live longer.

``transmit()`` sends the frames in order and returns how many went out; a
short count means the device could not take more right now (a full queue, a
link that is down), and
the rest were not sent (the stack treats them as lost).  Frames may be reused
by the caller as soon as ``transmit()`` returns.
"""

from __future__ import annotations

import abc
import select
from collections.abc import Sequence

__all__ = ["Device", "RxFrame", "Frame"]

#: What ``receive()`` yields per frame: ``(data, csum_not_ready)``.
RxFrame = tuple[memoryview, bool]
#: What ``transmit()`` accepts per frame.
Frame = bytes | bytearray | memoryview


class Device(abc.ABC):
    """A link-layer device: Ethernet frames in and out, in batches.

    Attributes every device sets: ``name`` (interface name or a label),
    ``mac`` (the MAC address the stack should use as its own, 6 bytes) and
    ``mtu`` (largest IP datagram; frames carry 14 more bytes).
    """

    name: str
    mac: bytes
    mtu: int

    @abc.abstractmethod
    def transmit(self, frames: Sequence[Frame]) -> int:
        """Send ``frames`` in order; return how many were sent (see the module docstring)."""

    @abc.abstractmethod
    def receive(self) -> list[RxFrame]:
        """Return the frames that have arrived, oldest first, without blocking."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """A file descriptor that polls readable when ``receive()`` may return frames."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device (idempotent).  Received memoryviews become invalid."""

    def wait(self, timeout: float | None) -> bool:
        """Block until ``fileno()`` is readable or ``timeout`` seconds pass (None: forever).

        A convenience for simple loops; an event loop registers ``fileno()`` instead.
        Returns True if readable.
        """
        p = select.poll()
        p.register(self.fileno(), select.POLLIN)
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return bool(p.poll(ms))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
