"""ARP for IPv4 over Ethernet (RFC 826).

Only hardware type 1 (Ethernet), protocol type 0x0800 (IPv4), lengths 6 and 4,
and operations request (1) and reply (2) are accepted; anything else raises
MalformedPacket.  Trailing bytes (Ethernet padding) are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import MalformedPacket, ReadableBuffer, WritableBuffer, require_room
from .ethernet import MacAddress
from .ipv4 import Ipv4Address

__all__ = ["ArpOperation", "ArpPacket", "ARP_LEN"]

ARP_LEN = 28
_PKT = struct.Struct("!HHBBH6sI6sI")
_ZERO_MAC = MacAddress(bytes(6))
_new_mac = bytes.__new__
_new_addr = int.__new__


class ArpOperation(IntEnum):
    REQUEST = 1
    REPLY = 2


@dataclass(slots=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP request or reply."""

    operation: ArpOperation
    sender_mac: MacAddress
    sender_ip: Ipv4Address
    target_mac: MacAddress
    target_ip: Ipv4Address

    @classmethod
    def parse(cls, buf: ReadableBuffer) -> ArpPacket:
        """Parse and validate; raises MalformedPacket on anything but Ethernet/IPv4 request/reply."""
        n = len(buf)
        if n < ARP_LEN:
            raise MalformedPacket("arp", f"packet of {n} bytes is shorter than 28")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _PKT.unpack_from(buf)
        if htype != 1:
            raise MalformedPacket("arp", f"hardware type {htype} is not Ethernet (1)")
        if ptype != 0x0800:
            raise MalformedPacket("arp", f"protocol type {ptype:#06x} is not IPv4")
        if hlen != 6 or plen != 4:
            raise MalformedPacket("arp", f"address lengths {hlen}/{plen} are not 6/4")
        if op == 1:
            operation = ArpOperation.REQUEST
        elif op == 2:
            operation = ArpOperation.REPLY
        else:
            raise MalformedPacket("arp", f"unsupported operation {op}")
        return cls(
            operation,
            _new_mac(MacAddress, sha),
            _new_addr(Ipv4Address, spa),
            _new_mac(MacAddress, tha),
            _new_addr(Ipv4Address, tpa),
        )

    @classmethod
    def request(cls, sender_mac: MacAddress, sender_ip: Ipv4Address, target_ip: Ipv4Address) -> ArpPacket:
        """A who-has request (target MAC zero, as Linux sends it)."""
        return cls(ArpOperation.REQUEST, sender_mac, sender_ip, _ZERO_MAC, target_ip)

    def reply(self, my_mac: MacAddress) -> ArpPacket:
        """The is-at reply to this request, answering for ``self.target_ip`` with ``my_mac``."""
        return ArpPacket(ArpOperation.REPLY, my_mac, self.target_ip, self.sender_mac, self.sender_ip)

    def emit_into(self, buf: WritableBuffer, offset: int = 0) -> int:
        """Write the 28-byte packet at ``offset``; return 28."""
        require_room(buf, offset, ARP_LEN, "ARP packet")
        if len(self.sender_mac) != 6 or len(self.target_mac) != 6:
            raise ValueError("MAC addresses must be 6 bytes")
        try:
            _PKT.pack_into(
                buf, offset, 1, 0x0800, 6, 4, self.operation,
                self.sender_mac, self.sender_ip, self.target_mac, self.target_ip,
            )
        except struct.error as exc:
            raise ValueError(f"ARP field out of range: {exc}") from None
        return ARP_LEN

    def to_bytes(self) -> bytes:
        """Return the 28 encoded bytes."""
        out = bytearray(ARP_LEN)
        self.emit_into(out, 0)
        return bytes(out)
