"""IPv4 headers (RFC 791) and IPv4 addresses.

:class:`Ipv4Packet` is both the parsed representation and the thing to emit.
Parsing checks, in order: length >= 20, version 4, 20 <= IHL*4 <= length,
IHL*4 <= total length <= buffer length, and (unless ``verify_checksum=False``)
the header checksum.  Bytes past the total length (Ethernet padding) are
ignored; ``payload`` is a zero-copy view of exactly the datagram's data.
Options are kept raw.  Fragment reassembly lives in :mod:`.ipv4_frag`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from ._repr import short_repr
from .checksum import checksum
from .errors import MalformedPacket, ReadableBuffer, WritableBuffer, require_room

__all__ = ["Ipv4Address", "IpProtocol", "Ipv4Packet", "IPV4_HEADER_LEN", "IPV4_MAX_LEN"]

IPV4_HEADER_LEN = 20
IPV4_MAX_LEN = 0xFFFF

_HDR = struct.Struct("!BBHHHBBHII")
_DF = 0x4000
_MF = 0x2000
_RF = 0x8000


class IpProtocol(IntEnum):
    """IP protocol numbers the stack handles."""

    ICMP = 1
    TCP = 6
    UDP = 17


class Ipv4Address(int):
    """An IPv4 address as an int (host order value) that prints dotted-quad.

    Accepts an int in 0..2**32-1, a dotted-quad string, 4 raw bytes, or an
    ``ipaddress.IPv4Address``.  Arithmetic and hashing are the int's, so it
    can be used directly in checksums and as a dict key; ``Ipv4Address(x) == x``
    for the int ``x``.
    """

    __slots__ = ()

    def __new__(cls, value: int | str | bytes | bytearray | memoryview | ipaddress.IPv4Address) -> Ipv4Address:
        if isinstance(value, str):
            return int.__new__(cls, int(ipaddress.IPv4Address(value)))
        if isinstance(value, ipaddress.IPv4Address):
            return int.__new__(cls, int(value))
        if isinstance(value, (bytes, bytearray, memoryview)):
            if len(value) != 4:
                raise ValueError(f"an IPv4 address is 4 bytes, got {len(value)}")
            return int.__new__(cls, int.from_bytes(value, "big"))
        if isinstance(value, int) and 0 <= value <= 0xFFFFFFFF:
            return int.__new__(cls, value)
        raise ValueError(f"not an IPv4 address: {value!r}")

    def __str__(self) -> str:
        v = int(self)
        return f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}"

    def __repr__(self) -> str:
        return f"Ipv4Address('{self}')"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int.__format__(int(self), spec)

    @property
    def packed(self) -> bytes:
        """The 4 bytes in network order."""
        return int(self).to_bytes(4, "big")

    @property
    def is_broadcast(self) -> bool:
        """True for 255.255.255.255 (the limited broadcast)."""
        return self == 0xFFFFFFFF

    @property
    def is_multicast(self) -> bool:
        """True for 224.0.0.0/4."""
        return (self >> 28) == 0xE


_new_addr = int.__new__


@dataclass(slots=True, repr=False)
class Ipv4Packet:
    """An IPv4 datagram (or fragment).

    ``fragment_offset`` is in bytes (a multiple of 8).  ``options`` is the raw
    option bytes (a multiple of 4, at most 40).  ``checksum`` is the value
    read by :meth:`parse`; emitters ignore it and compute the right one.
    """

    src: Ipv4Address
    dst: Ipv4Address
    protocol: int
    payload: ReadableBuffer = b""
    ttl: int = 64
    ident: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    fragment_offset: int = 0
    dscp: int = 0
    ecn: int = 0
    options: bytes = b""
    checksum: int = 0
    reserved_flag: bool = False

    __repr__ = short_repr

    @classmethod
    def parse(cls, buf: ReadableBuffer, *, verify_checksum: bool = True) -> Ipv4Packet:
        """Parse and validate a datagram; see the module docstring for the checks."""
        n = len(buf)
        if n < IPV4_HEADER_LEN:
            raise MalformedPacket("ipv4", f"packet of {n} bytes is shorter than the 20-byte header")
        vihl, tos, total, ident, ffo, ttl, proto, csum, src, dst = _HDR.unpack_from(buf)
        if vihl >> 4 != 4:
            raise MalformedPacket("ipv4", f"version is {vihl >> 4}, not 4")
        hlen = (vihl & 0x0F) << 2
        if hlen < IPV4_HEADER_LEN:
            raise MalformedPacket("ipv4", f"header length {hlen} is below 20")
        if hlen > n:
            raise MalformedPacket("ipv4", f"header length {hlen} exceeds the {n}-byte buffer")
        if total < hlen:
            raise MalformedPacket("ipv4", f"total length {total} is below the header length {hlen}")
        if total > n:
            raise MalformedPacket("ipv4", f"total length {total} exceeds the {n}-byte buffer")
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if verify_checksum and checksum(view[:hlen]) != 0:
            raise MalformedPacket("ipv4", "bad header checksum")
        return cls(
            _new_addr(Ipv4Address, src),
            _new_addr(Ipv4Address, dst),
            proto,
            view[hlen:total],
            ttl,
            ident,
            bool(ffo & _DF),
            bool(ffo & _MF),
            (ffo & 0x1FFF) << 3,
            tos >> 2,
            tos & 3,
            bytes(view[IPV4_HEADER_LEN:hlen]) if hlen > IPV4_HEADER_LEN else b"",
            csum,
            bool(ffo & _RF),
        )

    @property
    def header_len(self) -> int:
        """20 plus the options padded to a multiple of 4."""
        return IPV4_HEADER_LEN + ((len(self.options) + 3) & ~3)

    @property
    def total_len(self) -> int:
        """Header plus payload length, as it goes into the Total Length field."""
        return self.header_len + len(self.payload)

    @property
    def is_fragment(self) -> bool:
        """True unless this is a whole datagram (MF clear and offset 0)."""
        return self.more_fragments or self.fragment_offset != 0

    def emit_header(self, buf: WritableBuffer, offset: int = 0, payload_len: int | None = None) -> int:
        """Write the header with a correct checksum at ``offset``; return its length.

        ``payload_len`` defaults to ``len(self.payload)``; pass it when the
        payload is written separately (e.g. by the TCP emitter) after the header.
        """
        hlen = self.header_len
        if hlen > 60:
            raise ValueError(f"IPv4 options of {len(self.options)} bytes exceed 40")
        if payload_len is None:
            payload_len = len(self.payload)
        total = hlen + payload_len
        if total > IPV4_MAX_LEN:
            raise ValueError(f"IPv4 total length {total} exceeds 65535")
        if self.fragment_offset & 7 or not 0 <= self.fragment_offset <= 0xFFF8:
            raise ValueError(f"fragment offset {self.fragment_offset} is not a multiple of 8 in 0..65528")
        if not (0 <= self.dscp < 64 and 0 <= self.ecn < 4):
            raise ValueError("DSCP must be 0..63 and ECN 0..3")
        require_room(buf, offset, hlen, "IPv4 header")
        ffo = (self.fragment_offset >> 3) | (_DF if self.dont_fragment else 0) | (_MF if self.more_fragments else 0)
        if self.reserved_flag:
            ffo |= _RF
        try:
            _HDR.pack_into(
                buf, offset, 0x40 | (hlen >> 2), (self.dscp << 2) | self.ecn, total, self.ident, ffo,
                self.ttl, self.protocol, 0, self.src, self.dst,
            )
        except struct.error as exc:
            raise ValueError(f"IPv4 field out of range: {exc}") from None
        if hlen > IPV4_HEADER_LEN:
            opts = self.options
            end = offset + IPV4_HEADER_LEN + len(opts)
            buf[offset + IPV4_HEADER_LEN : end] = opts
            buf[end : offset + hlen] = bytes(offset + hlen - end)
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        csum = checksum(view[offset : offset + hlen])
        view[offset + 10] = csum >> 8
        view[offset + 11] = csum & 0xFF
        return hlen

    def emit_into(self, buf: WritableBuffer, offset: int = 0) -> int:
        """Write header and payload at ``offset``; return the bytes written."""
        total = self.total_len
        require_room(buf, offset, total, "IPv4 packet")
        hlen = self.emit_header(buf, offset)
        buf[offset + hlen : offset + total] = self.payload
        return total

    def to_bytes(self) -> bytes:
        """Return the encoded header and payload."""
        out = bytearray(self.total_len)
        self.emit_into(out, 0)
        return bytes(out)
