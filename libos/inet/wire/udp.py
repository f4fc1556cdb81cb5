"""UDP (RFC 768) over IPv4.

Parsing takes the IP payload plus the IPv4 source and destination (for the
pseudo-header).  Checks: buffer >= 8, 8 <= Length field <= buffer (bytes past
Length are ignored, as Linux trims them), and the checksum unless it is 0
("no checksum") or ``verify_checksum=False`` (frames whose checksum the kernel
left unfilled, TP_STATUS_CSUMNOTREADY).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ._repr import short_repr
from .checksum import checksum, pseudo_header_sum
from .errors import MalformedPacket, ReadableBuffer, WritableBuffer, require_room

__all__ = ["UdpDatagram", "UDP_HEADER_LEN"]

UDP_HEADER_LEN = 8
_HDR = struct.Struct("!HHHH")
_PROTO_UDP = 17


@dataclass(slots=True, repr=False)
class UdpDatagram:
    """A UDP datagram.  ``checksum`` is as read (0 = none); emit computes it."""

    src_port: int
    dst_port: int
    payload: ReadableBuffer = b""
    checksum: int = 0

    __repr__ = short_repr

    @classmethod
    def parse(cls, buf: ReadableBuffer, src: int, dst: int, *, verify_checksum: bool = True) -> UdpDatagram:
        """Parse the IP payload ``buf`` of a datagram from ``src`` to ``dst``."""
        n = len(buf)
        if n < UDP_HEADER_LEN:
            raise MalformedPacket("udp", f"datagram of {n} bytes is shorter than the 8-byte header")
        sport, dport, length, csum = _HDR.unpack_from(buf)
        if length < UDP_HEADER_LEN:
            raise MalformedPacket("udp", f"length field {length} is below 8")
        if length > n:
            raise MalformedPacket("udp", f"length field {length} exceeds the {n}-byte IP payload")
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if length != n:
            view = view[:length]
        if verify_checksum and csum and checksum(view, initial=pseudo_header_sum(src, dst, _PROTO_UDP, length)):
            raise MalformedPacket("udp", "bad checksum")
        return cls(sport, dport, view[UDP_HEADER_LEN:], csum)

    @property
    def total_len(self) -> int:
        """8 plus the payload length."""
        return UDP_HEADER_LEN + len(self.payload)

    def emit_into(
        self, buf: WritableBuffer, offset: int, src: int, dst: int, *, fill_checksum: bool = True
    ) -> int:
        """Write header and payload at ``offset``; return the bytes written.

        The checksum is computed over the pseudo-header for ``src``/``dst``
        (a computed 0 is sent as 0xFFFF); ``fill_checksum=False`` sends 0.
        """
        total = self.total_len
        if total > 0xFFFF:
            raise ValueError(f"UDP length {total} exceeds 65535")
        require_room(buf, offset, total, "UDP datagram")
        try:
            _HDR.pack_into(buf, offset, self.src_port, self.dst_port, total, 0)
        except struct.error as exc:
            raise ValueError(f"UDP field out of range: {exc}") from None
        buf[offset + UDP_HEADER_LEN : offset + total] = self.payload
        if fill_checksum:
            view = buf if isinstance(buf, memoryview) else memoryview(buf)
            csum = checksum(view[offset : offset + total], initial=pseudo_header_sum(src, dst, _PROTO_UDP, total))
            if csum == 0:
                csum = 0xFFFF
            view[offset + 6] = csum >> 8
            view[offset + 7] = csum & 0xFF
        return total

    def to_bytes(self, src: int, dst: int, *, fill_checksum: bool = True) -> bytes:
        """Return the encoded datagram (see :meth:`emit_into`)."""
        out = bytearray(self.total_len)
        self.emit_into(out, 0, src, dst, fill_checksum=fill_checksum)
        return bytes(out)
