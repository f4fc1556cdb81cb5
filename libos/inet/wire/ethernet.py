"""Ethernet II frames (with an optional 802.1Q tag) and MAC addresses.

Parsing returns an :class:`EthernetFrame` whose ``payload`` is a zero-copy
memoryview into the caller's buffer; it is only valid while that buffer is
(e.g. until an RX ring block is handed back to the kernel).  The frame check
sequence is never present (AF_PACKET and TAP strip it) and never emitted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ._repr import short_repr
from .errors import MalformedPacket, ReadableBuffer, WritableBuffer, require_room

__all__ = [
    "MacAddress",
    "EtherType",
    "EthernetFrame",
    "BROADCAST_MAC",
    "ETH_HEADER_LEN",
    "VLAN_HEADER_LEN",
    "ETH_MIN_FRAME_LEN",
]

ETH_HEADER_LEN = 14
VLAN_HEADER_LEN = 18
#: Minimum frame length without FCS (60); shorter frames are zero-padded on emit if asked.
ETH_MIN_FRAME_LEN = 60

_HDR = struct.Struct("!6s6sH")
_HEX = "0123456789abcdefABCDEF"
_TAG = struct.Struct("!HH")


class EtherType(IntEnum):
    """EtherType values the stack cares about (others are reported as plain ints)."""

    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100
    IPV6 = 0x86DD


class MacAddress(bytes):
    """A 48-bit MAC address: 6 bytes that print as ``aa:bb:cc:dd:ee:ff``.

    Construct from 6 bytes or from a string with ``:`` or ``-`` separators
    (``MacAddress("02:00:00:00:00:01")``); anything else raises ValueError.
    Being ``bytes``, it compares, hashes and slices like its raw form.
    """

    __slots__ = ()

    def __new__(cls, value: str | bytes | bytearray | memoryview) -> MacAddress:
        if isinstance(value, str):
            parts = value.replace("-", ":").split(":")
            if len(parts) != 6 or not all(1 <= len(p) <= 2 and p.strip(_HEX) == "" for p in parts):
                raise ValueError(f"not a MAC address: {value!r}")
            try:
                raw = bytes(int(p, 16) for p in parts)
            except ValueError:
                raise ValueError(f"not a MAC address: {value!r}") from None
            return super().__new__(cls, raw)
        raw = bytes(value)
        if len(raw) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    def __str__(self) -> str:
        return self.hex(":")

    def __repr__(self) -> str:
        return f"MacAddress('{self.hex(':')}')"

    @property
    def is_broadcast(self) -> bool:
        """True for ff:ff:ff:ff:ff:ff."""
        return self == BROADCAST_MAC

    @property
    def is_multicast(self) -> bool:
        """True when the group bit (LSB of the first octet) is set; includes broadcast."""
        return bool(self[0] & 1)

    @property
    def is_unicast(self) -> bool:
        """True for individual (non-group) addresses."""
        return not self[0] & 1


BROADCAST_MAC = MacAddress(b"\xff" * 6)

_new_mac = bytes.__new__


@dataclass(slots=True, repr=False)
class EthernetFrame:
    """An Ethernet II frame.

    ``vlan`` is the 802.1Q tag control information (PCP, DEI, VID) when the
    frame carried one TPID-0x8100 tag, else None; ``ethertype`` is always the
    inner (payload) type.  EtherType values below 0x0600 are 802.3 lengths and
    are reported unchanged for the caller to ignore.
    """

    dst: MacAddress
    src: MacAddress
    ethertype: int
    payload: ReadableBuffer = b""
    vlan: int | None = None

    __repr__ = short_repr

    @classmethod
    def parse(cls, buf: ReadableBuffer) -> EthernetFrame:
        """Parse a frame (no FCS).  Raises MalformedPacket if it is truncated."""
        n = len(buf)
        if n < ETH_HEADER_LEN:
            raise MalformedPacket("ethernet", f"frame of {n} bytes is shorter than the 14-byte header")
        dst, src, ethertype = _HDR.unpack_from(buf)
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        if ethertype == 0x8100:
            if n < VLAN_HEADER_LEN:
                raise MalformedPacket("ethernet", f"802.1Q frame of {n} bytes is shorter than the 18-byte header")
            tci, ethertype = _TAG.unpack_from(buf, ETH_HEADER_LEN)
            return cls(_new_mac(MacAddress, dst), _new_mac(MacAddress, src), ethertype, view[VLAN_HEADER_LEN:], tci)
        return cls(_new_mac(MacAddress, dst), _new_mac(MacAddress, src), ethertype, view[ETH_HEADER_LEN:])

    @property
    def header_len(self) -> int:
        """14, or 18 with a VLAN tag."""
        return ETH_HEADER_LEN if self.vlan is None else VLAN_HEADER_LEN

    @property
    def vlan_id(self) -> int | None:
        """The 12-bit VLAN identifier, or None when untagged."""
        return None if self.vlan is None else self.vlan & 0x0FFF

    def emit_header(self, buf: WritableBuffer, offset: int = 0) -> int:
        """Write the header (not the payload) at ``offset``; return its length."""
        hlen = self.header_len
        require_room(buf, offset, hlen, "Ethernet header")
        if len(self.dst) != 6 or len(self.src) != 6:
            raise ValueError("MAC addresses must be 6 bytes")
        try:
            if self.vlan is None:
                _HDR.pack_into(buf, offset, self.dst, self.src, self.ethertype)
            else:
                _HDR.pack_into(buf, offset, self.dst, self.src, 0x8100)
                _TAG.pack_into(buf, offset + ETH_HEADER_LEN, self.vlan, self.ethertype)
        except struct.error as exc:
            raise ValueError(f"Ethernet field out of range: {exc}") from None
        return hlen

    def emit_into(self, buf: WritableBuffer, offset: int = 0) -> int:
        """Write header and payload at ``offset``; return the bytes written."""
        hlen = self.header_len
        total = hlen + len(self.payload)
        require_room(buf, offset, total, "Ethernet frame")
        self.emit_header(buf, offset)
        buf[offset + hlen : offset + total] = self.payload
        return total

    def to_bytes(self, *, pad: bool = False) -> bytes:
        """Return header + payload; with ``pad``, zero-pad to 60 bytes (the
        minimum frame size; virtual devices do not need it, real NICs pad themselves)."""
        out = bytearray(self.header_len + len(self.payload))
        self.emit_into(out, 0)
        if pad and len(out) < ETH_MIN_FRAME_LEN:
            out.extend(bytes(ETH_MIN_FRAME_LEN - len(out)))
        return bytes(out)
