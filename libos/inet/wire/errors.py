"""The one exception of the wire layer, and the buffer types its functions accept.

Contract: every parser in this package either returns a fully bounds-checked
representation or raises :class:`MalformedPacket`; it never raises IndexError,
struct.error or any other exception on hostile input.  Emitters raise plain
:class:`ValueError` when *the caller* passes fields that cannot be encoded
(a programming error, not a bad packet).
"""

from __future__ import annotations

__all__ = ["MalformedPacket", "ReadableBuffer", "WritableBuffer", "require_room"]

#: Anything parsers accept: a C-contiguous, byte-formatted buffer.
ReadableBuffer = bytes | bytearray | memoryview
#: Anything emitters write into.
WritableBuffer = bytearray | memoryview


class MalformedPacket(ValueError):
    """A packet failed validation.

    ``layer`` names the protocol whose parser rejected it ("ethernet", "arp",
    "ipv4", "icmp", "udp", "tcp"), ``reason`` says what was wrong, in words fit
    for a log line or a drop counter's label.
    """

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"{layer}: {reason}")
        self.layer = layer
        self.reason = reason

    def __reduce__(self):  # keep pickling (e.g. across processes) working
        return (type(self), (self.layer, self.reason))


def require_room(buf: WritableBuffer, offset: int, needed: int, what: str) -> None:
    """Raise ValueError unless ``buf[offset:offset + needed]`` exists.

    Emitters call this first: slice assignment into a bytearray would
    otherwise silently grow or shrink it.
    """
    if offset < 0 or offset + needed > len(buf):
        raise ValueError(
            f"{what} needs {needed} bytes at offset {offset}, "
            f"but the buffer holds {len(buf)}"
        )
