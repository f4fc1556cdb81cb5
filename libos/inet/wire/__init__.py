"""Sans-IO wire formats for the ``inet`` library OS: Ethernet, ARP, IPv4, ICMP, UDP, TCP.

Everything here is pure: parsers take bytes-like buffers (zero-copy
memoryview payloads), emitters write into caller buffers at an offset or
return bytes, and the only stateful piece (:class:`Reassembler`) is driven by
an explicit ``now``.  Hostile input only ever raises :class:`MalformedPacket`.

Receive path, for a frame ``buf`` whose L4 checksum the kernel may have left
unfilled (``csum_ok = not tp_status & TP_STATUS_CSUMNOTREADY``)::

    eth = EthernetFrame.parse(buf)
    ip = Ipv4Packet.parse(eth.payload)             # IP header checksum is always filled
    seg = TcpSegment.parse(ip.payload, ip.src, ip.dst, verify_checksum=csum_ok)

Transmit path, one payload copy::

    frame = bytearray(14 + ip.header_len + seg.total_len)
    off = eth.emit_header(frame, 0)
    off += ip.emit_header(frame, off, payload_len=seg.total_len)
    seg.emit_into(frame, off, ip.src, ip.dst)
"""

from .arp import ARP_LEN, ArpOperation, ArpPacket
from .checksum import checksum, fold, ones_sum, pseudo_header_sum
from .errors import MalformedPacket
from .ethernet import (
    BROADCAST_MAC,
    ETH_HEADER_LEN,
    EthernetFrame,
    EtherType,
    MacAddress,
)
from .icmp import IcmpMessage, IcmpType, QuotedDatagram, UnreachableCode
from .ipv4 import IPV4_HEADER_LEN, IpProtocol, Ipv4Address, Ipv4Packet
from .ipv4_frag import Reassembler, ReassemblyStats
from .seq import (
    seq_add,
    seq_ge,
    seq_gt,
    seq_in_window,
    seq_le,
    seq_lt,
    seq_max,
    seq_min,
    seq_sub,
)
from .tcp import TCP_HEADER_LEN, TcpFlags, TcpSegment
from .tcp_options import TcpOptionKind, TcpOptions
from .udp import UDP_HEADER_LEN, UdpDatagram

__all__ = [
    "MalformedPacket",
    # checksum
    "checksum", "ones_sum", "pseudo_header_sum", "fold",
    # ethernet / arp
    "MacAddress", "BROADCAST_MAC", "EtherType", "EthernetFrame", "ETH_HEADER_LEN",
    "ArpOperation", "ArpPacket", "ARP_LEN",
    # ipv4
    "Ipv4Address", "IpProtocol", "Ipv4Packet", "IPV4_HEADER_LEN", "Reassembler", "ReassemblyStats",
    # icmp / udp / tcp
    "IcmpMessage", "IcmpType", "UnreachableCode", "QuotedDatagram",
    "UdpDatagram", "UDP_HEADER_LEN",
    "TcpFlags", "TcpOptionKind", "TcpOptions", "TcpSegment", "TCP_HEADER_LEN",
    # sequence numbers
    "seq_add", "seq_sub", "seq_lt", "seq_le", "seq_gt", "seq_ge", "seq_max", "seq_min", "seq_in_window",
]
