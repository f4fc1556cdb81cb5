"""TCP segment headers (RFC 9293) over IPv4; options live in :mod:`.tcp_options`.

:class:`TcpSegment` is the parsed and the emittable form.  Parsing takes the
IP payload plus the IPv4 source and destination (for the pseudo-header) and
checks: length >= 20, 5 <= data offset, data offset * 4 <= length, the
checksum (unless ``verify_checksum=False``: the device layer passes that for
frames flagged TP_STATUS_CSUMNOTREADY, whose checksum holds only the
pseudo-header sum), and every option (see :class:`TcpOptions`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

from ._repr import short_repr
from .checksum import checksum, pseudo_header_sum
from .errors import MalformedPacket, ReadableBuffer, WritableBuffer, require_room
from .tcp_options import NO_OPTIONS, TCP_MAX_OPTIONS_LEN, TcpOptionKind, TcpOptions

__all__ = [
    "TcpFlags",
    "TcpOptionKind",
    "TcpOptions",
    "TcpSegment",
    "TCP_HEADER_LEN",
    "TCP_MAX_OPTIONS_LEN",
]

TCP_HEADER_LEN = 20
_HDR = struct.Struct("!HHIIHHHH")
_PROTO_TCP = 6


class TcpFlags(IntFlag):
    """The nine TCP flag bits (AE, formerly NS, is bit 8 of the offset word)."""

    FIN = 0x001
    SYN = 0x002
    RST = 0x004
    PSH = 0x008
    ACK = 0x010
    URG = 0x020
    ECE = 0x040
    CWR = 0x080
    AE = 0x100


# Constructing an IntFlag costs ~0.6 us; a lookup table costs ~20 ns.
_FLAGS: tuple[TcpFlags, ...] = tuple(TcpFlags(i) for i in range(0x200))


@dataclass(slots=True, repr=False)
class TcpSegment:
    """A TCP segment: header fields, options and payload.

    ``reserved`` holds the 3 reserved bits (between data offset and AE), kept
    for exact re-emission.  ``checksum`` is as read; emit computes it.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int
    urgent: int = 0
    options: TcpOptions = NO_OPTIONS
    payload: ReadableBuffer = b""
    checksum: int = 0
    reserved: int = 0

    __repr__ = short_repr

    @classmethod
    def parse(cls, buf: ReadableBuffer, src: int, dst: int, *, verify_checksum: bool = True) -> TcpSegment:
        """Parse the IP payload ``buf`` of a segment from ``src`` to ``dst``."""
        n = len(buf)
        if n < TCP_HEADER_LEN:
            raise MalformedPacket("tcp", f"segment of {n} bytes is shorter than the 20-byte header")
        sport, dport, seq, ack, off_flags, window, csum, urgent = _HDR.unpack_from(buf)
        hlen = (off_flags >> 12) << 2
        if hlen < TCP_HEADER_LEN:
            raise MalformedPacket("tcp", f"data offset {hlen >> 2} is below 5")
        if hlen > n:
            raise MalformedPacket("tcp", f"header length {hlen} exceeds the {n}-byte segment")
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if verify_checksum and checksum(view, initial=pseudo_header_sum(src, dst, _PROTO_TCP, n)):
            raise MalformedPacket("tcp", "bad checksum")
        options = TcpOptions.parse(view[TCP_HEADER_LEN:hlen]) if hlen > TCP_HEADER_LEN else NO_OPTIONS
        return cls(
            sport, dport, seq, ack, _FLAGS[off_flags & 0x1FF], window, urgent, options,
            view[hlen:], csum, (off_flags >> 9) & 7,
        )

    @property
    def header_len(self) -> int:
        """20 plus the padded options."""
        return TCP_HEADER_LEN + self.options.padded_len

    @property
    def total_len(self) -> int:
        """Header plus payload length."""
        return TCP_HEADER_LEN + self.options.padded_len + len(self.payload)

    @property
    def seq_len(self) -> int:
        """Sequence space consumed: payload length, plus 1 each for SYN and FIN."""
        flags = self.flags
        return len(self.payload) + (1 if flags & 0x02 else 0) + (1 if flags & 0x01 else 0)

    def emit_into(self, buf: WritableBuffer, offset: int, src: int, dst: int) -> int:
        """Write header, options, payload and checksum at ``offset``; return the bytes written."""
        opt_len = self.options.padded_len
        if opt_len > TCP_MAX_OPTIONS_LEN:
            raise ValueError(f"options of {opt_len} bytes exceed 40")
        hlen = TCP_HEADER_LEN + opt_len
        total = hlen + len(self.payload)
        require_room(buf, offset, total, "TCP segment")
        if not 0 <= self.reserved <= 7:
            raise ValueError(f"reserved bits {self.reserved} do not fit 3 bits")
        if not 0 <= self.flags <= 0x1FF:
            raise ValueError(f"flags {self.flags!r} do not fit 9 bits")
        try:
            _HDR.pack_into(
                buf, offset, self.src_port, self.dst_port, self.seq, self.ack,
                (hlen << 10) | (self.reserved << 9) | int(self.flags),
                self.window, 0, self.urgent,
            )
        except struct.error as exc:
            raise ValueError(f"TCP field out of range: {exc}") from None
        if opt_len:
            self.options.emit_into(buf, offset + TCP_HEADER_LEN)
        buf[offset + hlen : offset + total] = self.payload
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        csum = checksum(view[offset : offset + total], initial=pseudo_header_sum(src, dst, _PROTO_TCP, total))
        view[offset + 16] = csum >> 8
        view[offset + 17] = csum & 0xFF
        return total

    def to_bytes(self, src: int, dst: int) -> bytes:
        """Return the encoded segment (see :meth:`emit_into`)."""
        out = bytearray(self.total_len)
        self.emit_into(out, 0, src, dst)
        return bytes(out)
