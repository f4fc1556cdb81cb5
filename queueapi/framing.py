"""Demikernel v0.0 element framing for byte streams, sans-IO.

Wire format of one element: a 12-byte header ``magic (0x10102010), byte count, segment count``
in network order, then for each segment a u32 length followed by the segment bytes. The byte
count covers the segment bytes plus 4 bytes per segment length.
"""
from __future__ import annotations

import errno
import struct
from typing import Any, Sequence

__all__ = ["MAGIC", "HEADER", "FramingError", "encode_iovecs", "FrameDecoder", "DEFAULT_MAX_ELEMENT"]

MAGIC = 0x10102010
HEADER = struct.Struct("!III")
_U32 = struct.Struct("!I")
DEFAULT_MAX_ELEMENT = 64 * 1024 * 1024
MAX_SEGMENTS = 1024


class FramingError(OSError):
    """The stream does not carry valid framed elements (errno EPROTO or EMSGSIZE)."""


def encode_iovecs(segs: Sequence[Any]) -> list[Any]:
    """The buffers to send for one framed element: headers interleaved with the segments."""
    n = len(segs)
    lens = [len(s) if isinstance(s, bytes) else memoryview(s).nbytes for s in segs]
    out: list[Any] = [HEADER.pack(MAGIC, sum(lens) + 4 * n, n) + _U32.pack(lens[0]), segs[0]]
    for i in range(1, n):
        out.append(_U32.pack(lens[i]))
        out.append(segs[i])
    return out


def encode(segs: Sequence[Any]) -> bytes:
    """One framed element as bytes."""
    return b"".join(bytes(b) if not isinstance(b, bytes) else b for b in encode_iovecs(segs))


class FrameDecoder:
    """Feed stream bytes, take complete elements (each a list of segment bytes).

    Header fields come from the peer and are checked before use: a wrong magic, a segment
    count of 0 or above ``MAX_SEGMENTS``, a byte count above ``max_element`` or segment lengths
    that do not add up raise ``FramingError``.
    """

    __slots__ = ("_buf", "_need", "max_element")

    def __init__(self, max_element: int = DEFAULT_MAX_ELEMENT) -> None:
        self._buf = bytearray()
        self.max_element = max_element

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_element(self) -> list[bytes] | None:
        """The next complete element, or None if more bytes are needed."""
        buf = self._buf
        if len(buf) < 12:
            return None
        magic, nbytes, nsegs = HEADER.unpack_from(buf, 0)
        if magic != MAGIC:
            raise FramingError(errno.EPROTO, f"bad frame magic 0x{magic:08x}")
        if not 0 < nsegs <= MAX_SEGMENTS or nbytes < 4 * nsegs:
            raise FramingError(errno.EPROTO, f"bad frame header: {nsegs} segments, {nbytes} bytes")
        if nbytes > self.max_element:
            raise FramingError(errno.EMSGSIZE,
                               f"framed element of {nbytes} bytes exceeds the limit {self.max_element}")
        end = 12 + nbytes
        if len(buf) < end:
            return None
        segs = []
        off = 12
        for _ in range(nsegs):
            (ln,) = _U32.unpack_from(buf, off)
            off += 4
            if off + ln > end:
                raise FramingError(errno.EPROTO, "frame segment lengths exceed the byte count")
            segs.append(bytes(buf[off:off + ln]))
            off += ln
        if off != end:
            raise FramingError(errno.EPROTO, "frame segment lengths do not add up to the byte count")
        del buf[:end]
        return segs
