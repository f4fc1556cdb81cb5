"""ICMPv4 (RFC 792): echo request/reply, and error messages that quote a datagram.

:class:`IcmpMessage` is the generic form: type, code, the 32-bit
"rest of header" word and the payload.  Echo messages keep identifier and
sequence number in ``rest`` (see the ``ident``/``seq`` properties).  Error
messages (destination unreachable, time exceeded, ...) carry the offending
datagram's IP header plus its first 8 data bytes; :meth:`IcmpMessage.quoted`
decodes that part into a :class:`QuotedDatagram`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ._repr import short_repr
from .checksum import checksum
from .errors import MalformedPacket, ReadableBuffer, WritableBuffer, require_room
from .ipv4 import Ipv4Address

__all__ = ["IcmpType", "UnreachableCode", "IcmpMessage", "QuotedDatagram", "ICMP_HEADER_LEN"]

ICMP_HEADER_LEN = 8
_HDR = struct.Struct("!BBHI")
_QUOTED_IP = struct.Struct("!BBHHHBBHII")
_new_addr = int.__new__


class IcmpType(IntEnum):
    ECHO_REPLY = 0
    DEST_UNREACHABLE = 3
    SOURCE_QUENCH = 4
    REDIRECT = 5
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12


class UnreachableCode(IntEnum):
    NET = 0
    HOST = 1
    PROTOCOL = 2
    PORT = 3
    FRAGMENTATION_NEEDED = 4
    SOURCE_ROUTE_FAILED = 5


#: Types whose payload quotes the offending datagram.
_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})


@dataclass(slots=True, frozen=True)
class QuotedDatagram:
    """The part of an offending datagram quoted by an ICMP error.

    ``transport`` holds up to the first 8 bytes after the quoted IP header
    (enough for UDP/TCP ports and the TCP sequence number).
    """

    src: Ipv4Address
    dst: Ipv4Address
    protocol: int
    ident: int
    header: bytes
    transport: bytes

    @property
    def src_port(self) -> int | None:
        """The quoted UDP/TCP source port, or None if fewer than 2 bytes were quoted."""
        return int.from_bytes(self.transport[0:2], "big") if len(self.transport) >= 2 else None

    @property
    def dst_port(self) -> int | None:
        """The quoted UDP/TCP destination port, or None if fewer than 4 bytes were quoted."""
        return int.from_bytes(self.transport[2:4], "big") if len(self.transport) >= 4 else None


def _quote(datagram: ReadableBuffer) -> bytes:
    """Return the IP header + 8 data bytes of a raw IPv4 datagram (RFC 792)."""
    if len(datagram) < 20:
        raise ValueError(f"cannot quote a {len(datagram)}-byte datagram: shorter than an IPv4 header")
    hlen = max((datagram[0] & 0x0F) * 4, 20)
    end = hlen + 8
    total = (datagram[2] << 8) | datagram[3]
    if hlen <= total < end:  # a short datagram: do not quote link-layer padding
        end = total
    return bytes(datagram[:end])


@dataclass(slots=True, repr=False)
class IcmpMessage:
    """An ICMPv4 message.  ``checksum`` is as read; emit computes it."""

    type: int
    code: int
    rest: int = 0
    payload: ReadableBuffer = b""
    checksum: int = 0

    __repr__ = short_repr

    @classmethod
    def parse(cls, buf: ReadableBuffer, *, verify_checksum: bool = True) -> IcmpMessage:
        """Parse the IP payload ``buf``.  Checks length >= 8 and the checksum."""
        n = len(buf)
        if n < ICMP_HEADER_LEN:
            raise MalformedPacket("icmp", f"message of {n} bytes is shorter than the 8-byte header")
        mtype, code, csum, rest = _HDR.unpack_from(buf)
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if verify_checksum and checksum(view) != 0:
            raise MalformedPacket("icmp", "bad checksum")
        return cls(mtype, code, rest, view[ICMP_HEADER_LEN:], csum)

    # --- constructors for the messages the stack sends -------------------
    @classmethod
    def echo_request(cls, ident: int, seq: int, data: ReadableBuffer = b"") -> IcmpMessage:
        return cls(IcmpType.ECHO_REQUEST, 0, ((ident & 0xFFFF) << 16) | (seq & 0xFFFF), data)

    @classmethod
    def echo_reply(cls, ident: int, seq: int, data: ReadableBuffer = b"") -> IcmpMessage:
        return cls(IcmpType.ECHO_REPLY, 0, ((ident & 0xFFFF) << 16) | (seq & 0xFFFF), data)

    def reply(self) -> IcmpMessage:
        """The echo reply to this echo request: same rest-of-header and data."""
        if self.type != IcmpType.ECHO_REQUEST:
            raise ValueError(f"only echo requests get replies, this is type {self.type}")
        return IcmpMessage(IcmpType.ECHO_REPLY, 0, self.rest, self.payload)

    @classmethod
    def dest_unreachable(cls, code: int, datagram: ReadableBuffer, next_hop_mtu: int = 0) -> IcmpMessage:
        """Destination unreachable quoting ``datagram`` (the raw offending IPv4
        datagram): its IP header plus the first 8 data bytes.  ``next_hop_mtu``
        is only meaningful with code 4 (fragmentation needed, RFC 1191)."""
        return cls(IcmpType.DEST_UNREACHABLE, code, next_hop_mtu & 0xFFFF, _quote(datagram))

    @classmethod
    def port_unreachable(cls, datagram: ReadableBuffer) -> IcmpMessage:
        """Shorthand for :meth:`dest_unreachable` with code 3 (port)."""
        return cls.dest_unreachable(UnreachableCode.PORT, datagram)

    @classmethod
    def time_exceeded(cls, code: int, datagram: ReadableBuffer) -> IcmpMessage:
        """Time exceeded (code 0 TTL, 1 fragment reassembly) quoting ``datagram``."""
        return cls(IcmpType.TIME_EXCEEDED, code, 0, _quote(datagram))

    # --- accessors -------------------------------------------------------
    @property
    def ident(self) -> int:
        """Echo identifier (high half of ``rest``)."""
        return self.rest >> 16

    @property
    def seq(self) -> int:
        """Echo sequence number (low half of ``rest``)."""
        return self.rest & 0xFFFF

    @property
    def next_hop_mtu(self) -> int:
        """Next-hop MTU of a fragmentation-needed message (low half of ``rest``)."""
        return self.rest & 0xFFFF

    @property
    def is_error(self) -> bool:
        """True for the types that quote an offending datagram."""
        return self.type in _ERROR_TYPES

    def quoted(self) -> QuotedDatagram:
        """Decode the quoted datagram of an error message.

        Raises MalformedPacket if this is not an error type or the quote is
        too short or not IPv4.  The quoted header's checksum and total length
        are not checked (the quote is truncated by design).
        """
        if self.type not in _ERROR_TYPES:
            raise MalformedPacket("icmp", f"type {self.type} does not quote a datagram")
        data = self.payload
        n = len(data)
        if n < 20:
            raise MalformedPacket("icmp", f"quoted datagram of {n} bytes is shorter than an IPv4 header")
        vihl, _tos, _total, ident, _ffo, _ttl, proto, _csum, src, dst = _QUOTED_IP.unpack_from(data)
        if vihl >> 4 != 4:
            raise MalformedPacket("icmp", f"quoted datagram has IP version {vihl >> 4}")
        hlen = (vihl & 0x0F) << 2
        if hlen < 20 or hlen > n:
            raise MalformedPacket("icmp", f"quoted IP header length {hlen} is invalid for a {n}-byte quote")
        return QuotedDatagram(
            _new_addr(Ipv4Address, src), _new_addr(Ipv4Address, dst), proto, ident,
            bytes(data[:hlen]), bytes(data[hlen : hlen + 8]),
        )

    # --- emit ------------------------------------------------------------
    @property
    def total_len(self) -> int:
        """8 plus the payload length."""
        return ICMP_HEADER_LEN + len(self.payload)

    def emit_into(self, buf: WritableBuffer, offset: int = 0) -> int:
        """Write the message with its checksum at ``offset``; return the bytes written."""
        total = self.total_len
        require_room(buf, offset, total, "ICMP message")
        try:
            _HDR.pack_into(buf, offset, self.type, self.code, 0, self.rest)
        except struct.error as exc:
            raise ValueError(f"ICMP field out of range: {exc}") from None
        buf[offset + ICMP_HEADER_LEN : offset + total] = self.payload
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        csum = checksum(view[offset : offset + total])
        view[offset + 2] = csum >> 8
        view[offset + 3] = csum & 0xFF
        return total

    def to_bytes(self) -> bytes:
        """Return the encoded message."""
        out = bytearray(self.total_len)
        self.emit_into(out, 0)
        return bytes(out)
