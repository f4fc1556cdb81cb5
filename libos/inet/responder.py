"""A minimal sans-IO IPv4 host: ARP, ICMP echo, and "port unreachable" for UDP.

:class:`Host` knows one MAC and one IPv4 address.  Feed it every received frame;
it returns the frames to transmit::

    host = Host(dev.mac, "10.77.1.1")
    for data, csum_not_ready in dev.receive():
        dev.transmit(host.on_frame(data, now, csum_ok=not csum_not_ready))

What it does:

- **ARP** (RFC 826): answers requests for our address (broadcast or unicast,
  the latter being Linux's NUD probes), and keeps a cache with the RFC 826
  merge rule: an entry is refreshed by any ARP packet from that address and
  created by packets addressed to us.  Entries expire ``arp_ttl`` seconds after
  they were last refreshed (:meth:`Host.arp_lookup` with ``now``); the cache
  holds at most ``arp_cache_size`` entries (oldest out first).
  :meth:`Host.arp_request` and :meth:`Host.gratuitous_arp` build requests.
- **ICMP** (RFC 792): echo request to our address gets an echo reply with
  the same identifier, sequence number and data.
- **UDP** (RFC 768): a datagram for a port in ``udp_handlers`` goes to its
  handler ``(payload, src_ip, src_port) -> list of reply payloads``; any other
  port is closed and gets ICMP destination unreachable / port (code 3) quoting the
  datagram.  Other IP protocols get protocol unreachable (code 2); TCP is
  ignored (that is the TCP stack's job).

ICMP errors follow RFC 1122 section 3.2.2.8: none for ICMP errors, for
datagrams sent to a broadcast or multicast address (IP or link layer), for
non-initial fragments, or for sources that are not a unicast host; and they are
rate-limited by a token bucket (``icmp_rate`` per second, ``icmp_burst``),
as Linux does.  Fragments are not reassembled here (dropped and counted).

Everything is pure: time comes in as ``now`` (seconds, any monotonic origin),
nothing is read from clocks or sockets.  A frame that fails any check is
dropped and counted in ``host.counters`` (a Counter keyed by reason); nothing
raises on hostile input.  ``csum_ok=False`` (the device reported
``TP_STATUS_CSUMNOTREADY``) skips verification of the ICMP/UDP checksums,
which the sender left for its NIC to fill; the IPv4 header checksum is always
verified.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from .wire import (
    ETH_HEADER_LEN,
    IPV4_HEADER_LEN,
    ArpOperation,
    ArpPacket,
    EthernetFrame,
    EtherType,
    IcmpMessage,
    IcmpType,
    IpProtocol,
    Ipv4Address,
    Ipv4Packet,
    MacAddress,
    MalformedPacket,
    UdpDatagram,
)
from .wire.ethernet import BROADCAST_MAC

__all__ = ["Host", "UdpHandler"]

#: ``handler(payload, src_ip, src_port) -> reply payloads`` (each sent back to the source).
UdpHandler = Callable[[memoryview, Ipv4Address, int], Iterable[bytes]]


def _is_unicast_host(addr: int) -> bool:
    """True for addresses that name one host: not 0/8, 127/8, multicast, class E or broadcast."""
    first = addr >> 24
    return first != 0 and first != 127 and first < 224


class Host:
    """One MAC, one IPv4 address (optionally with a prefix length for the subnet broadcast)."""

    def __init__(
        self,
        mac: bytes | str,
        ipv4: int | str,
        *,
        prefix_len: int = 24,
        arp_ttl: float = 60.0,
        arp_cache_size: int = 256,
        icmp_rate: float = 1000.0,
        icmp_burst: int = 50,
        ttl: int = 64,
        udp_handlers: dict[int, UdpHandler] | None = None,
    ) -> None:
        self.mac = MacAddress(mac)
        if not self.mac.is_unicast:
            raise ValueError(f"{self.mac} is a group address, not a host's MAC")
        self.ip = Ipv4Address(ipv4)
        if not 0 <= prefix_len <= 32:
            raise ValueError("prefix_len must be 0..32")
        self.broadcast = Ipv4Address(int(self.ip) | ((1 << (32 - prefix_len)) - 1)) if prefix_len < 31 else None
        self.arp_ttl = arp_ttl
        self.arp_cache_size = max(1, arp_cache_size)
        self.icmp_rate = icmp_rate
        self.icmp_burst = icmp_burst
        self.ttl = ttl
        self.udp_handlers: dict[int, UdpHandler] = dict(udp_handlers or {})
        self.counters: Counter[str] = Counter()
        self._arp: dict[int, tuple[MacAddress, float]] = {}   # insertion order = refresh order
        self._tokens = float(icmp_burst)
        self._tokens_at: float | None = None
        self._ident = 0

    # --- ARP cache ---------------------------------------------------------
    def arp_lookup(self, ip: int | str, now: float) -> MacAddress | None:
        """The cached MAC for ``ip`` if its entry has not expired by ``now``."""
        key = int(Ipv4Address(ip))
        entry = self._arp.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._arp[key]
            self.counters["arp_expired"] += 1
            return None
        return entry[0]

    def arp_expire(self, now: float) -> int:
        """Drop every entry expired by ``now``; returns how many went."""
        gone = [k for k, (_, exp) in self._arp.items() if exp <= now]
        for k in gone:
            del self._arp[k]
        self.counters["arp_expired"] += len(gone)
        return len(gone)

    def arp_entries(self, now: float) -> dict[Ipv4Address, MacAddress]:
        """A snapshot of the live entries."""
        return {Ipv4Address(k): mac for k, (mac, exp) in self._arp.items() if exp > now}

    def _arp_store(self, ip: int, mac: MacAddress, now: float) -> None:
        cache = self._arp
        cache.pop(ip, None)
        while len(cache) >= self.arp_cache_size:
            del cache[next(iter(cache))]
            self.counters["arp_evicted"] += 1
        cache[ip] = (mac, now + self.arp_ttl)

    def arp_request(self, ip: int | str) -> bytes:
        """A broadcast who-has frame for ``ip``."""
        arp = ArpPacket.request(self.mac, self.ip, Ipv4Address(ip))
        return self._frame(BROADCAST_MAC, EtherType.ARP, arp.to_bytes())

    def gratuitous_arp(self) -> bytes:
        """A broadcast ARP request for our own address (announces our MAC)."""
        return self.arp_request(self.ip)

    # --- frames in ---------------------------------------------------------
    def on_frame(self, frame: bytes | bytearray | memoryview, now: float, csum_ok: bool = True) -> list[bytes]:
        """Handle one received Ethernet frame; return the frames to transmit (often none)."""
        try:
            eth = EthernetFrame.parse(frame)
            dst = eth.dst
            if dst != self.mac:
                if dst != BROADCAST_MAC:
                    self.counters["not_our_mac"] += 1
                    return []
                link_broadcast = True
            else:
                link_broadcast = False
            if eth.vlan is not None:
                self.counters["vlan_tagged"] += 1
                return []
            etype = eth.ethertype
            if etype == EtherType.ARP:
                return self._on_arp(eth, now)
            if etype == EtherType.IPV4:
                return self._on_ipv4(eth, now, csum_ok, link_broadcast)
            self.counters["other_ethertype"] += 1
            return []
        except MalformedPacket as exc:
            self.counters[f"malformed_{exc.layer}"] += 1
            return []

    def _on_arp(self, eth: EthernetFrame, now: float) -> list[bytes]:
        arp = ArpPacket.parse(eth.payload)
        self.counters["arp_in"] += 1
        sip, smac = int(arp.sender_ip), arp.sender_mac
        if sip == self.ip and sip:
            self.counters["arp_address_conflict"] += 1
            return []
        usable = sip != 0 and smac.is_unicast and _is_unicast_host(sip)
        merged = False
        if usable and sip in self._arp:
            self._arp_store(sip, smac, now)
            merged = True
        if arp.target_ip != self.ip:
            return []
        if usable and not merged:
            self._arp_store(sip, smac, now)
        if arp.operation != ArpOperation.REQUEST:
            return []
        if not smac.is_unicast:
            self.counters["arp_bad_sender"] += 1
            return []
        self.counters["arp_replies"] += 1
        return [self._frame(smac, EtherType.ARP, arp.reply(self.mac).to_bytes())]

    def _on_ipv4(self, eth: EthernetFrame, now: float, csum_ok: bool, link_broadcast: bool) -> list[bytes]:
        ip = Ipv4Packet.parse(eth.payload)
        dst = ip.dst
        if dst == self.ip:
            ip_broadcast = False
        elif dst == 0xFFFFFFFF or dst == self.broadcast:
            ip_broadcast = True
        else:
            self.counters["not_our_ip"] += 1
            return []
        if ip.is_fragment:
            whole = self._reassemble(ip, now)
            if whole is None:
                return []
            ip = whole
        proto = ip.protocol
        if proto == IpProtocol.TCP:
            return self._on_tcp(eth, ip, now, csum_ok, link_broadcast or ip_broadcast)
        if proto == IpProtocol.UDP:
            return self._on_udp(eth, ip, now, csum_ok, link_broadcast, ip_broadcast)
        if proto == IpProtocol.ICMP:
            return self._on_icmp(eth, ip, now, csum_ok, ip_broadcast)
        self.counters["unknown_protocol"] += 1
        return self._unreachable(eth, ip, 2, now, link_broadcast or ip_broadcast)

    # --- hooks a full stack (libos.inet.stack.Stack) overrides ---------------
    def _reassemble(self, ip: Ipv4Packet, now: float) -> Ipv4Packet | None:
        """A fragment arrived: the whole datagram, or None (this host drops fragments)."""
        self.counters["fragments_dropped"] += 1
        return None

    def _on_icmp(self, eth: EthernetFrame, ip: Ipv4Packet, now: float, csum_ok: bool,
                 ip_broadcast: bool) -> list[bytes]:
        msg = IcmpMessage.parse(ip.payload, verify_checksum=csum_ok)
        if msg.type == IcmpType.ECHO_REQUEST and msg.code == 0:
            if ip_broadcast or not _is_unicast_host(ip.src):
                self.counters["icmp_echo_ignored"] += 1
                return []
            self.counters["icmp_echo_replies"] += 1
            return [self._ipv4_frame(eth.src, ip.src, IpProtocol.ICMP, msg.reply().to_bytes())]
        return self._on_icmp_other(msg, ip, now)

    def _on_icmp_other(self, msg: IcmpMessage, ip: Ipv4Packet, now: float) -> list[bytes]:
        """An ICMP message other than an echo request (errors, replies): counted, ignored."""
        self.counters["icmp_other"] += 1
        return []

    def _on_udp(self, eth: EthernetFrame, ip: Ipv4Packet, now: float, csum_ok: bool,
                link_broadcast: bool, ip_broadcast: bool) -> list[bytes]:
        dgram = UdpDatagram.parse(ip.payload, ip.src, ip.dst, verify_checksum=csum_ok)
        handler = self.udp_handlers.get(dgram.dst_port)
        if handler is not None:
            self.counters["udp_delivered"] += 1
            out = []
            for data in handler(dgram.payload, ip.src, dgram.src_port):
                reply = UdpDatagram(dgram.dst_port, dgram.src_port, data).to_bytes(self.ip, ip.src)
                out.append(self._ipv4_frame(eth.src, ip.src, IpProtocol.UDP, reply))
            return out
        self.counters["udp_closed_port"] += 1
        return self._unreachable(eth, ip, 3, now, link_broadcast or ip_broadcast)

    def _on_tcp(self, eth: EthernetFrame, ip: Ipv4Packet, now: float, csum_ok: bool,
                to_broadcast: bool) -> list[bytes]:
        self.counters["tcp_ignored"] += 1
        return []

    # --- ICMP errors -------------------------------------------------------
    def _unreachable(self, eth: EthernetFrame, ip: Ipv4Packet, code: int, now: float,
                     to_broadcast: bool) -> list[bytes]:
        if to_broadcast or not _is_unicast_host(ip.src) or not eth.src.is_unicast:
            self.counters["icmp_error_suppressed"] += 1
            return []
        if not self._icmp_token(now):
            self.counters["icmp_rate_limited"] += 1
            return []
        # the offending datagram as it arrived: header (with options) + payload, no link padding
        raw = eth.payload[: ip.total_len]
        self.counters["icmp_unreachable_sent"] += 1
        msg = IcmpMessage.dest_unreachable(code, raw)
        return [self._ipv4_frame(eth.src, ip.src, IpProtocol.ICMP, msg.to_bytes())]

    def _icmp_token(self, now: float) -> bool:
        last = self._tokens_at
        if last is not None and now > last:
            self._tokens = min(float(self.icmp_burst), self._tokens + (now - last) * self.icmp_rate)
        if last is None or now > last:
            self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    # --- frames out --------------------------------------------------------
    def _frame(self, dst_mac: bytes, ethertype: int, payload: bytes) -> bytes:
        out = bytearray(ETH_HEADER_LEN + len(payload))
        EthernetFrame(dst_mac, self.mac, ethertype).emit_header(out, 0)
        out[ETH_HEADER_LEN:] = payload
        return bytes(out)

    def _ipv4_frame(self, dst_mac: bytes, dst_ip: int, protocol: int, payload: bytes) -> bytes:
        self._ident = (self._ident + 1) & 0xFFFF
        ip = Ipv4Packet(self.ip, Ipv4Address(dst_ip), protocol, payload, ttl=self.ttl, ident=self._ident)
        out = bytearray(ETH_HEADER_LEN + IPV4_HEADER_LEN + len(payload))
        EthernetFrame(dst_mac, self.mac, EtherType.IPV4).emit_header(out, 0)
        ip.emit_into(out, ETH_HEADER_LEN)
        return bytes(out)

