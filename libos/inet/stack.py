"""One sans-IO IPv4 host: Ethernet, ARP, IPv4 (+ reassembly), ICMP, UDP sockets, TCP.

:class:`Stack` is the glue between the wire formats (:mod:`libos.inet.wire`), the TCP state
machine (:mod:`libos.inet.tcp`) and a link-layer device.  It never reads a clock and never
does I/O: frames come in through :meth:`Stack.receive`, frames to send come out of
:meth:`Stack.poll`, and :meth:`Stack.next_deadline` says when ``poll`` must run again if no
frame arrives first::

    stack = Stack(dev.mac, "10.77.1.1", prefix_len=24, gateway="10.77.1.254")
    while True:
        now = time.monotonic()
        for data, csum_not_ready in dev.receive():
            stack.receive(data, now, csum_ok=not csum_not_ready)
        dev.transmit(stack.poll(now))
        for obj in stack.take_events(): ...   # sockets whose state changed: serve the app
        dev.wait(deadline - now)              # deadline = stack.next_deadline()

It is a :class:`libos.inet.responder.Host` (which answers ARP and ICMP echo and keeps the ARP
cache with the RFC 826 merge rule, expiry and a size bound) extended with:

- **routing**: on-link destinations (same prefix) directly, others through ``gateway``
  (none: dropped and counted as ``no_route``);
- **ARP resolution for output**: a frame for a next hop without a live cache entry waits in
  a per-next-hop queue of at most ``arp_queue_limit`` frames (oldest dropped first, counted
  ``arp_queue_overflow``), a who-has goes out at once and every ``arp_retry`` seconds, and
  after ``arp_retries`` unanswered requests the queue is dropped (``arp_unresolved_drops``);
  TCP retransmits later anyway.  At most ``arp_pending_hosts`` next hops wait at once;
- **IPv4 reassembly** with limits (:class:`libos.inet.wire.Reassembler`), and fragmentation
  of large UDP datagrams on output (TCP segments always fit the MTU: MSS = MTU - 40);
- **ICMP**: echo replies (Host), port unreachable for UDP to closed ports (rate limited,
  never for broadcasts), and an ICMP port unreachable received for a *connected* UDP
  endpoint sets its ``error`` to ECONNREFUSED, as Linux does;
- **UDP endpoints** (:class:`UdpEndpoint`): a port table, ephemeral ports, a bounded receive
  queue (``udp_rx_limit`` bytes per endpoint; datagrams beyond it are dropped and counted);
- **TCP**: listeners by local port, connections by 4-tuple (our address is always
  ``self.ip``: the key is ``(remote_ip, remote_port, local_port)``), ephemeral ports for
  active opens (``EADDRNOTAVAIL`` when the range is exhausted for that destination), a RST
  for segments nobody takes (RFC 9293 3.10.7.1), TIME_WAIT connections giving way to a new
  SYN (``accepts_new_syn``).  A connection leaves the table when it reaches CLOSED.

Events: every endpoint, listener or connection whose state may have changed (data, ACKs,
accept-ready, errors, timers) is recorded; :meth:`take_events` hands them to the owner (the
library OS) once.  Counters: ``stack.counters`` (a Counter of drop and event reasons, see
:meth:`stats`).  Nothing raises on hostile input: every frame that fails a check is dropped
and counted under ``malformed_<layer>`` or a named reason.

Received frames may be views into device memory that dies at the next ``receive()`` of the
device: the stack copies what it keeps (TCP copies into its buffers, UDP payloads become
``bytes``, fragments are copied by the reassembler).
"""

from __future__ import annotations

import errno
import heapq
import operator
import os
import random
import struct
from collections import Counter, deque
from dataclasses import asdict, replace
from typing import Any, Callable, Iterable

from .responder import Host, _is_unicast_host
from .tcp import TcpConfig, TcpConnection, TcpListener, TcpState, reset_for
from .tcp.segment import OutSegment
from .wire import (
    BROADCAST_MAC,
    EthernetFrame,
    IcmpMessage,
    IcmpType,
    Ipv4Address,
    Ipv4Packet,
    MalformedPacket,
    Reassembler,
    TcpSegment,
    UdpDatagram,
)
from .wire.checksum import checksum
from .wire.tcp import _FLAGS as _TCP_FLAGS
from .wire.tcp_options import NO_OPTIONS, TcpOptions

__all__ = ["Stack", "UdpEndpoint", "EPHEMERAL_PORTS"]

#: Linux's default ip_local_port_range is 32768-60999; IANA's dynamic range is this one.
EPHEMERAL_PORTS = (49152, 65535)

_IPH = struct.Struct("!BBHHHBBHII")
_IP_DF = 0x4000
_IP_MF = 0x2000
_PROTO_ICMP, _PROTO_TCP, _PROTO_UDP = 1, 6, 17
_TIME_WAIT = TcpState.TIME_WAIT
_CLOSED = TcpState.CLOSED
_ESTABLISHED = TcpState.ESTABLISHED
_SYN_ONLY = 0x02
#: the fast path's view of an untagged Ethernet + IPv4 (no options) + TCP header: destination
#: MAC, (source MAC skipped), EtherType, the ten IPv4 fields, the eight TCP fields
_RX_HDRS = struct.Struct("!6s6xHBBHHHBBHIIHHIIHHHH")
#: what the fast path writes from byte 6 on: source MAC + EtherType, IPv4, TCP (checksum 0)
_TX_HDRS = struct.Struct("!8sBBHHHBBHIIHHIIHHHH")
_CSUM = struct.Struct("!H")
_MOD = 0xFFFF
try:   # the C checksum (libos/inet/_csum_build.py): ~5x faster for a full segment
    from ._csum import ffi as _csum_ffi
    from ._csum import lib as _csum_lib
    _from_buffer = _csum_ffi.from_buffer
    _inet_sum = _csum_lib.inet_sum
    # the whole outgoing frame (three headers, two checksums) in one call; an older build
    # of the module without it leaves the Python builder in charge
    _tcp_frame = getattr(_csum_lib, "tcp_frame", None)
    _tcp_rx = getattr(_csum_lib, "tcp_rx", None)
    _tcp_data_frame = getattr(_csum_lib, "tcp_data_frame", None)
except ImportError:   # not built: int.from_bytes, which is as fast for short segments
    _inet_sum = None
    _tcp_frame = None
    _tcp_rx = None
    _tcp_data_frame = None
#: what the fast path reads after the C checks (tcp_rx): the source address, (destination
#: skipped) and the eight TCP header fields
_RX_C = struct.Struct("!I4xHHIIHHHH")
#: ``_rx_fast(stack, frame, total, now)``: what :meth:`Stack.receive` does after tcp_rx for a
#: segment header prediction takes (the unpack above, :meth:`Stack._tcp_checked` with
#: fast_input, :meth:`Stack._schedule`) in C (libos/inet/_tcpfast.c: rx_established); False
#: (nothing done) for anything else.  None without the C fast paths (set at the end of this
#: module; DEMI_INET_NO_C=1 turns them off).
_rx_fast: Callable[[Any, Any, int, float], bool] | None = None
#: ``_tx_fast(stack, conn, now)``: :meth:`Stack.poll_connection`'s one-data-segment case
#: (poll_data, the frame :meth:`Stack._send_data` builds, the RTO/keepalive timer entry, the
#: out list) in C (libos/inet/_tcpfast.c: tx_established): the frames, or None (nothing done)
#: for anything else.  None without the C fast paths (DEMI_INET_NO_C=1, DEMI_INET_NO_C_TX=1).
_tx_fast: Callable[[Any, Any, float], list[Any] | None] | None = None


#: A connection's next timer but the delayed ACK (which has its own heap):
#: ``conn.next_deadline(False)``, called from C
_timer_deadline: Callable[[TcpConnection], float | None] = operator.methodcaller("next_deadline", False)


#: When a connection's delayed ACK is due (None: a reply carried it); a C getter, as it
#: runs for every delayed-ACK heap entry that fires
_delack_deadline: Callable[[TcpConnection], float | None] = operator.attrgetter("_delack_deadline")


#: segments at least this long are summed in C (when built)
_C_SUM_MIN = 256


def _oserror(code: int, detail: str) -> OSError:
    return OSError(code, f"{os.strerror(code)}: {detail}")


class UdpEndpoint:
    """A bound UDP port of the stack: a bounded queue of received datagrams.

    ``rx`` holds ``(payload_bytes, (src_ip_str, src_port))`` oldest first; ``peer`` is the
    ``(ip_int, port)`` the endpoint is connected to (then only datagrams from it are
    queued), or None.  ``error`` is an errno reported once to the application (an ICMP
    port unreachable from the connected peer: ECONNREFUSED).
    """

    __slots__ = ("port", "rx", "rx_bytes", "rx_limit", "peer", "error", "drops", "closed",
                 "datagrams_in", "datagrams_out", "filters", "filtered")

    def __init__(self, port: int, rx_limit: int) -> None:
        self.port = port
        self.rx: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.rx_bytes = 0
        self.rx_limit = rx_limit
        self.peer: tuple[int, int] | None = None
        self.error = 0
        self.drops = 0
        self.closed = False
        self.datagrams_in = 0
        self.datagrams_out = 0
        #: offloaded filters (queueapi.Match): a datagram failing all of them is dropped here
        #: too (the BPF program drops it first, when the frame carries the ports)
        self.filters: list[Any] = []
        self.filtered = 0

    def take(self) -> tuple[bytes, tuple[str, int]] | None:
        """The oldest queued datagram, or None."""
        if not self.rx:
            return None
        item = self.rx.popleft()
        self.rx_bytes -= len(item[0])
        return item


class _Pending:
    """Frames waiting for the MAC of one next hop."""

    __slots__ = ("frames", "tries", "next_try")

    def __init__(self) -> None:
        self.frames: deque[bytearray] = deque()
        self.tries = 0
        self.next_try = 0.0


class Stack(Host):
    """An IPv4 host with UDP and TCP over one Ethernet interface (see the module docstring).

    ``mac``/``ipv4``: our addresses.  ``prefix_len``: the on-link subnet.  ``gateway``: the
    next hop for everything else (None: only on-link destinations are reachable).  ``mtu``:
    the largest IP datagram we send; the default TCP MSS is ``mtu - 40``.  ``tcp_config``:
    the TcpConfig of every connection (its ``mss`` is capped to ``mtu - 40``).  ``rng``: ISNs
    and the first ephemeral port (tests pass a seeded ``random.Random``).
    """

    def __init__(
        self,
        mac: bytes | str,
        ipv4: int | str,
        *,
        prefix_len: int = 24,
        gateway: int | str | None = None,
        mtu: int = 1500,
        tcp_config: TcpConfig | None = None,
        rng: random.Random | None = None,
        arp_ttl: float = 60.0,
        arp_cache_size: int = 256,
        arp_retry: float = 1.0,
        arp_retries: int = 3,
        arp_queue_limit: int = 256,
        arp_pending_hosts: int = 64,
        ephemeral_ports: tuple[int, int] = EPHEMERAL_PORTS,
        udp_rx_limit: int = 1 << 20,
        reassembly_timeout: float = 30.0,
        reassembly_max_datagrams: int = 64,
        reassembly_max_bytes: int = 4 << 20,
        icmp_rate: float = 1000.0,
        icmp_burst: int = 50,
        ttl: int = 64,
    ) -> None:
        super().__init__(mac, ipv4, prefix_len=prefix_len, arp_ttl=arp_ttl, arp_cache_size=arp_cache_size,
                         icmp_rate=icmp_rate, icmp_burst=icmp_burst, ttl=ttl)
        if not 68 <= mtu <= 65535:
            raise ValueError(f"mtu must be in 68..65535, got {mtu}")
        lo, hi = ephemeral_ports
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"ephemeral_ports must be 1 <= lo <= hi <= 65535, got {ephemeral_ports}")
        self.mtu = mtu
        self.prefix_len = prefix_len
        self.netmask = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF
        self.gateway = Ipv4Address(gateway) if gateway not in (None, "") else None
        cfg = tcp_config if tcp_config is not None else TcpConfig(mss=min(1460, mtu - 40))
        if cfg.mss > mtu - 40:
            cfg = replace(cfg, mss=mtu - 40)
        self.tcp_config = cfg
        self.rng = rng if rng is not None else random.SystemRandom()
        self.arp_retry = arp_retry
        self.arp_retries = arp_retries
        self.arp_queue_limit = arp_queue_limit
        self.arp_pending_hosts = arp_pending_hosts
        self.ephemeral_ports = (lo, hi)
        self.udp_rx_limit = udp_rx_limit
        self.reassembler = Reassembler(reassembly_max_datagrams, reassembly_max_bytes, reassembly_timeout)
        self._ip_int = int(self.ip)
        self._eth_src = bytes(self.mac) + b"\x08\x00"       # bytes 6..14 of every IPv4 frame
        self._mac_raw = bytes(self.mac)
        ip_int = self._ip_int
        self._ip_words = (ip_int >> 16) + (ip_int & 0xFFFF)   # our address in checksums
        self._out: list[Any] = []
        self._pending: dict[int, _Pending] = {}
        self._conns: dict[tuple[int, int, int], TcpConnection] = {}
        # poll() visits only these connections, never the whole table: ``_active`` (an
        # insertion-ordered set) holds the ones with work now (a segment arrived, or an
        # application call: TcpConnection puts itself in), ``_timers`` is a heap of
        # (deadline, n, conn) for their timers, ``_sched`` the deadline of each connection's
        # live heap entry (other entries of it are stale and skipped).
        self._active: dict[TcpConnection, None] = {}
        self._timers: list[tuple[float, int, TcpConnection]] = []
        self._sched: dict[TcpConnection, float] = {}
        # delayed ACKs apart: armed for nearly every request and cancelled by the reply a
        # moment later, they would leave the heap above full of stale entries (a request/
        # response load made it thousands deep); here they live ~1 ms, the heap stays small
        self._ack_timers: list[tuple[float, int, TcpConnection]] = []
        self._ack_sched: dict[TcpConnection, float] = {}
        self._timer_n = 0
        self._listeners: dict[int, TcpListener] = {}
        self._tcp_bound: Counter[int] = Counter()      # ports held by bound sockets
        self._udp: dict[int, UdpEndpoint] = {}
        self._events: set[Any] = set()
        self._eph_tcp = lo + self.rng.randrange(hi - lo + 1)
        self._eph_udp = lo + self.rng.randrange(hi - lo + 1)
        self._now = 0.0
        self.tcp_closed_totals: Counter[str] = Counter()   # counters of connections that left
        self._net = self._ip_int & self.netmask
        # the C frame builder's scratch frame: options and payload are copied in at 54, the
        # C function writes the headers around them, the frame leaves as one bytes slice
        self._tx_c = _tcp_frame is not None
        if self._tx_c:
            self._txcap = 14 + mtu
            self._txbuf = _csum_ffi.new("char[]", self._txcap)
            self._txb = _csum_ffi.buffer(self._txbuf)
            self._txmv = memoryview(self._txb)

    # ================================================================== input
    def receive(self, frame: bytes | bytearray | memoryview, now: float, csum_ok: bool = True) -> None:
        """Process one received Ethernet frame (replies come out of :meth:`poll`).

        ``csum_ok=False``: the device says the L4 checksum was never filled in
        (TP_STATUS_CSUMNOTREADY); it is then not verified.  Never raises on bad input.

        The common case, an intact unfragmented TCP segment in an untagged IPv4 datagram
        without options for our MAC and address, takes a fast path: the C function
        ``tcp_rx`` (libos/inet/_csum_build.py) checks the headers and both checksums in one
        call, one ``struct`` unpack reads the fields, no intermediate objects (without the
        C module: one ``struct`` unpack of the three headers and the same checks in
        Python, one checksum pass each over the IPv4 header and the segment).  Everything
        else (and anything that fails a check there) goes through the layered parsers, which
        count what they drop.
        """
        self._now = now
        if _tcp_rx is not None:
            total = _tcp_rx(_from_buffer(frame), len(frame), self._mac_raw, self._ip_int, csum_ok)
            if total > 0:   # checked in C: for us, TCP, unfragmented, both checksums right
                if _rx_fast is not None and _rx_fast(self, frame, total, now):
                    return   # header prediction took it, all in C (the Python path below is the reference)
                src, sport, dport, seq, ack, off_flags, window, tcs, urgent = _RX_C.unpack_from(frame, 26)
                view = frame if type(frame) is memoryview else memoryview(frame)
                if self._tcp_checked(view, total, src, sport, dport, seq, ack, off_flags, window,
                                     tcs, urgent, now):
                    return
        elif len(frame) >= 54:
            (dmac, etype, vihl, _tos, total, _ident, ffo, _ttl, proto, _ipcs, src, dst,
             sport, dport, seq, ack, off_flags, window, tcs, urgent) = _RX_HDRS.unpack_from(frame)
            if (proto == 6 and vihl == 0x45 and etype == 0x0800 and dst == self._ip_int
                    and dmac == self._mac_raw and not ffo & 0x3FFF and 40 <= total <= len(frame) - 14):
                hlen = (off_flags >> 12) << 2
                tlen = total - 20
                if 20 <= hlen <= tlen:
                    view = frame if type(frame) is memoryview else memoryview(frame)
                    ok = not int.from_bytes(view[14:34], "big") % _MOD
                    if ok and csum_ok:
                        if tlen >= _C_SUM_MIN and _inet_sum is not None:
                            v = _inet_sum(_from_buffer(view[34:14 + total]), tlen)
                        else:
                            v = int.from_bytes(view[34:14 + total], "big")
                            if tlen & 1:
                                v <<= 8
                        ok = not (v + (src >> 16) + (src & 0xFFFF) + self._ip_words + 6 + tlen) % _MOD
                    if ok and self._tcp_checked(view, total, src, sport, dport, seq, ack,
                                                off_flags, window, tcs, urgent, now):
                        return
        try:
            out = self.on_frame(frame, now, csum_ok)
        except (MalformedPacket, ValueError) as exc:  # a bad field that slipped past a parser
            self.counters["malformed_" + getattr(exc, "layer", "other")] += 1
            return
        if out:
            self._out.extend(out)

    def _tcp_checked(self, view: memoryview, total: int, src: int, sport: int, dport: int,
                     seq: int, ack: int, off_flags: int, window: int, tcs: int, urgent: int,
                     now: float) -> bool:
        """The fast path's TCP step for a frame whose headers and checksums were checked:
        header prediction (TcpConnection.fast_input), else a TcpSegment for the state
        machine.  False: the layered parsers must take the frame (they count it)."""
        hlen = (off_flags >> 12) << 2
        if hlen == 20:
            conn = self._conns.get((src, sport, dport))
            if conn is not None:
                r = conn.fast_input(seq, ack, off_flags & 0x1FF, window, view[54:14 + total], now)
                if r:
                    self._events.add(conn)
                    if r == 2:
                        self._active[conn] = None
                    else:
                        self._schedule(conn)
                    return True
        return self._tcp_slow(view, total, src, sport, dport, seq, ack, off_flags, window, tcs, urgent, now)

    def _tcp_slow(self, view: memoryview, total: int, src: int, sport: int, dport: int,
                  seq: int, ack: int, off_flags: int, window: int, tcs: int, urgent: int,
                  now: float) -> bool:
        """:meth:`_tcp_checked` past header prediction: a TcpSegment for the state machine.
        False: the layered parsers must take the frame (they count what they drop)."""
        hlen = (off_flags >> 12) << 2
        try:
            opts = TcpOptions.parse(view[54:34 + hlen]) if hlen > 20 else NO_OPTIONS
            self._tcp_in(TcpSegment(sport, dport, seq, ack, _TCP_FLAGS[off_flags & 0x1FF],
                                    window, urgent, opts, view[34 + hlen:14 + total], tcs,
                                    (off_flags >> 9) & 7), src, now)
            return True
        except MalformedPacket:
            return False
        except ValueError as exc:
            self.counters["malformed_" + getattr(exc, "layer", "other")] += 1
            return True

    def receive_many(self, frames: Iterable[tuple[Any, bool]], now: float) -> int:
        """:meth:`receive` for each ``(frame, csum_not_ready)`` of a device batch; returns the count."""
        n = 0
        for data, not_ready in frames:
            self.receive(data, now, not not_ready)
            n += 1
        return n

    def _on_arp(self, eth: EthernetFrame, now: float) -> list[bytes]:
        out = Host._on_arp(self, eth, now)
        if self._pending:
            sip = int.from_bytes(eth.payload[14:18], "big") if len(eth.payload) >= 18 else 0
            p = self._pending.get(sip)
            if p is not None:
                entry = self._arp.get(sip)
                if entry is not None and entry[1] > now:
                    del self._pending[sip]
                    mac = bytes(entry[0])
                    for frame in p.frames:
                        frame[0:6] = mac
                        out.append(frame)
                    self.counters["arp_resolved"] += 1
        return out

    def _reassemble(self, ip: Ipv4Packet, now: float) -> Ipv4Packet | None:
        whole = self.reassembler.feed(ip, now)
        if whole is None:
            self.counters["fragments_held"] += 1
        else:
            self.counters["datagrams_reassembled"] += 1
        return whole

    def _on_icmp_other(self, msg: IcmpMessage, ip: Ipv4Packet, now: float) -> list[bytes]:
        self.counters["icmp_other"] += 1
        if msg.type == IcmpType.DEST_UNREACHABLE and msg.is_error:
            try:
                q = msg.quoted()
            except MalformedPacket:
                self.counters["malformed_icmp_quote"] += 1
                return []
            if q.src == self._ip_int and q.protocol == _PROTO_UDP and q.src_port is not None:
                ep = self._udp.get(q.src_port)
                if ep is not None and ep.peer == (int(q.dst), q.dst_port) and msg.code == 3:
                    ep.error = errno.ECONNREFUSED
                    self._events.add(ep)
                    self.counters["udp_port_unreachable_in"] += 1
        return []

    def _on_udp(self, eth: EthernetFrame, ip: Ipv4Packet, now: float, csum_ok: bool,
                link_broadcast: bool, ip_broadcast: bool) -> list[bytes]:
        dgram = UdpDatagram.parse(ip.payload, ip.src, ip.dst, verify_checksum=csum_ok)
        ep = self._udp.get(dgram.dst_port)
        if ep is None:
            self.counters["udp_closed_port"] += 1
            return self._unreachable(eth, ip, 3, now, link_broadcast or ip_broadcast)
        src = int(ip.src)
        if ep.peer is not None and ep.peer != (src, dgram.src_port):
            self.counters["udp_not_from_peer"] += 1
            return []
        if ep.filters:
            sport = dgram.src_port
            for m in ep.filters:
                if m.test("udp", ep.port, src, sport):
                    break
            else:
                ep.filtered += 1
                self.counters["udp_filtered"] += 1
                return []
        data = bytes(dgram.payload)
        if ep.rx_bytes + len(data) > ep.rx_limit and ep.rx:
            ep.drops += 1
            self.counters["udp_rx_queue_full"] += 1
            return []
        ep.rx.append((data, (str(ip.src), dgram.src_port)))
        ep.rx_bytes += len(data)
        ep.datagrams_in += 1
        self.counters["udp_delivered"] += 1
        self._events.add(ep)
        return []

    def _on_tcp(self, eth: EthernetFrame, ip: Ipv4Packet, now: float, csum_ok: bool,
                to_broadcast: bool) -> list[bytes]:
        if to_broadcast:
            self.counters["tcp_broadcast_dropped"] += 1
            return []
        src = int(ip.src)
        seg = TcpSegment.parse(ip.payload, src, int(ip.dst), verify_checksum=csum_ok)
        self._tcp_in(seg, src, now)
        return []

    def _tcp_in(self, seg: TcpSegment, src: int, now: float) -> None:
        """Demultiplex a parsed segment from ``src`` to its connection, listener, or a RST."""
        key = (src, seg.src_port, seg.dst_port)
        conn = self._conns.get(key)
        if conn is not None:
            if conn._state is _TIME_WAIT and seg.dst_port in self._listeners and conn.accepts_new_syn(seg):
                del self._conns[key]
                self._retire(conn)
                self.counters["tcp_time_wait_reused"] += 1
            else:
                conn.on_segment(seg, now)
                self._events.add(conn)
                self._active[conn] = None
                return
        lst = self._listeners.get(seg.dst_port)
        if lst is not None:
            lst.on_segment(seg, now, remote_addr=src, local_addr=self._ip_int)
            self._events.add(lst)
            return
        rst = reset_for(seg, src_addr=self._ip_int, dst_addr=src)
        if rst is not None:
            self.counters["tcp_rst_closed_port"] += 1
            self._send_tcp(rst, now)
        else:
            self.counters["tcp_rst_ignored"] += 1

    # ================================================================== output
    def next_hop(self, dst: int) -> int | None:
        """The IPv4 address whose MAC a datagram to ``dst`` goes to, or None (no route)."""
        if dst & self.netmask == self._ip_int & self.netmask:
            return dst
        return self.gateway

    def _emit(self, dst: int, frame: bytearray, now: float) -> None:
        """Fill in the destination MAC of ``frame`` (an IPv4 frame to ``dst``) and queue it."""
        if dst == 0xFFFFFFFF or (self.broadcast is not None and dst == self.broadcast):
            frame[0:6] = BROADCAST_MAC
            self._out.append(frame)
            return
        hop = self.next_hop(dst)
        if hop is None:
            self.counters["no_route"] += 1
            return
        entry = self._arp.get(hop)
        if entry is not None and entry[1] > now:
            frame[0:6] = entry[0]
            self._out.append(frame)
            return
        p = self._pending.get(hop)
        if p is None:
            if len(self._pending) >= self.arp_pending_hosts:
                self.counters["arp_pending_hosts_full"] += 1
                return
            p = self._pending[hop] = _Pending()
            p.next_try = now  # ask at the next poll
        if len(p.frames) >= self.arp_queue_limit:
            p.frames.popleft()
            self.counters["arp_queue_overflow"] += 1
        p.frames.append(frame)

    def _ip_frame(self, dst: int, proto: int, l4_len: int, ident: int | None = None,
                  flags_frag: int = _IP_DF) -> bytearray:
        """A frame with Ethernet (destination MAC left zero) and IPv4 headers for ``l4_len``
        bytes of payload, which the caller writes at offset 34."""
        frame = bytearray(34 + l4_len)
        frame[6:14] = self._eth_src
        if ident is None:
            ident = self._ident = (self._ident + 1) & 0xFFFF
        _IPH.pack_into(frame, 14, 0x45, 0, 20 + l4_len, ident, flags_frag, self.ttl, proto, 0,
                       self._ip_int, 0)
        frame[30:34] = dst.to_bytes(4, "big")
        csum = checksum(memoryview(frame)[14:34])
        frame[24] = csum >> 8
        frame[25] = csum & 0xFF
        return frame

    def _send_tcp(self, seg: OutSegment, now: float) -> None:
        """Build the frame of ``seg`` and queue it (or hold it for ARP: :meth:`_emit`).

        The common case, a unicast segment to a next hop with a live ARP entry, is built by
        the C function ``tcp_frame`` (libos/inet/_csum_build.py) in a scratch buffer: the
        options and payload are copied in, C writes the Ethernet, IPv4 and TCP headers with
        both checksums, and the frame leaves as ``bytes``.  Everything else, or without the
        C module, is :meth:`_send_tcp_py` (the same bytes, tests/test_inet_cbuild.py)."""
        if not self._tx_c:
            return self._send_tcp_py(seg, now)
        dst = seg.dst_addr
        hop = dst if dst & self.netmask == self._net else self.gateway
        entry = self._arp.get(hop)
        if entry is None or entry[1] <= now or dst == 0xFFFFFFFF or dst == self.broadcast:
            return self._send_tcp_py(seg, now)
        opts = seg.options
        payload = seg.payload
        plen = len(payload)
        mv = self._txmv
        if opts.items:
            olen = opts.padded_len
            if olen > 40:
                raise ValueError(f"options of {olen} bytes exceed 40")
            if 54 + olen + plen > self._txcap:
                return self._send_tcp_py(seg, now)
            opts.emit_into(mv, 54)
        else:
            olen = 0
        if plen:
            if 54 + olen + plen > self._txcap:
                return self._send_tcp_py(seg, now)
            mv[54 + olen:54 + olen + plen] = payload
        ident = self._ident = (self._ident + 1) & 0xFFFF
        n = _tcp_frame(self._txbuf, self._txcap, entry[0], self._mac_raw, self._ip_int, dst, ident,
                       self.ttl, seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window,
                       olen, plen)
        if n < 0:
            raise ValueError(f"TCP frame of {olen}+{plen} bytes does not fit")
        self._out.append(self._txb[0:n])

    def _send_data(self, conn: TcpConnection, fields: tuple[int, int, int, int, int], now: float) -> None:
        """Queue the frame of the data segment :meth:`TcpConnection.poll_data` returned
        (``fields``: seq32, ack32, window, offset and length in ``conn._sndbuf``).

        With the C module and a live ARP entry for the next hop, the C function
        ``tcp_data_frame`` copies the payload straight from the send buffer and writes
        the headers (byte for byte what :meth:`_send_tcp` writes for the same segment,
        tests/test_inet_cbuild.py); otherwise the segment goes to :meth:`_send_tcp`."""
        seq, ack, window, off, n = fields
        dst = conn.remote_addr
        if _tcp_data_frame is not None and self._tx_c:
            entry = self._arp.get(dst if dst & self.netmask == self._net else self.gateway)
            if entry is not None and entry[1] > now and dst != 0xFFFFFFFF and dst != self.broadcast:
                ident = self._ident = (self._ident + 1) & 0xFFFF
                buf = conn._sndbuf
                size = _tcp_data_frame(self._txbuf, self._txcap, entry[0], self._mac_raw, self._ip_int, dst,
                                       ident, self.ttl, conn.local_port, conn.remote_port, seq, ack, 0x18,
                                       window, _from_buffer(buf), len(buf), off, n)
                if size < 0:
                    raise ValueError(f"TCP frame of {n} payload bytes does not fit")
                self._out.append(self._txb[0:size])
                return
        self._send_tcp(OutSegment(conn.local_port, conn.remote_port, seq, ack, _TCP_FLAGS[0x18], window,
                                  NO_OPTIONS, conn._sndbuf[off:off + n], conn.local_addr, dst), now)

    def _send_tcp_py(self, seg: OutSegment, now: float) -> None:
        """:meth:`_send_tcp` in Python: the three headers with one ``struct`` pack (the IPv4
        checksum computed from the fields), options, payload, then one checksum pass over
        the segment, and :meth:`_emit` for the destination MAC."""
        dst = seg.dst_addr
        opts = seg.options
        olen = opts.padded_len if opts.items else 0
        if olen > 40:
            raise ValueError(f"options of {olen} bytes exceed 40")
        payload = seg.payload
        hlen = 20 + olen
        tlen = hlen + len(payload)
        total = 20 + tlen
        frame = bytearray(34 + tlen)
        ident = self._ident = (self._ident + 1) & 0xFFFF
        ttl = self.ttl
        d_words = (dst >> 16) + (dst & 0xFFFF)
        v = 0x8500 + ((ttl << 8) | 6) + self._ip_words + total + ident + d_words  # 0x4500 + 0x4000 (DF)
        v = (v & 0xFFFF) + (v >> 16)
        v = (v & 0xFFFF) + (v >> 16)
        _TX_HDRS.pack_into(frame, 6, self._eth_src, 0x45, 0, total, ident, _IP_DF, ttl, 6, ~v & 0xFFFF,
                           self._ip_int, dst, seg.src_port, seg.dst_port, seg.seq, seg.ack,
                           (hlen << 10) | int(seg.flags), seg.window, 0, 0)
        if olen:
            opts.emit_into(frame, 54)
        if len(payload):
            frame[34 + hlen:] = payload
        if tlen >= _C_SUM_MIN and _inet_sum is not None:
            v = _inet_sum(_from_buffer(memoryview(frame)[34:]), tlen)
        else:
            v = int.from_bytes(memoryview(frame)[34:], "big")
            if tlen & 1:
                v <<= 8
        v += self._ip_words + d_words + 6 + tlen
        if v > _MOD:
            v %= _MOD
            csum = 0 if v == 0 else ~v & 0xFFFF
        else:
            csum = ~v & 0xFFFF
        _CSUM.pack_into(frame, 50, csum)
        self._emit(dst, frame, now)

    def send_ip(self, dst: int, proto: int, payload: bytes | bytearray | memoryview, now: float) -> int:
        """Send an IP payload to ``dst``, fragmented to the MTU if needed; returns the frames."""
        n = len(payload)
        room = self.mtu - 20
        if n <= room:
            frame = self._ip_frame(dst, proto, n)
            frame[34:] = payload
            self._emit(dst, frame, now)
            return 1
        step = room & ~7
        ident = self._ident = (self._ident + 1) & 0xFFFF
        count = 0
        view = memoryview(payload)
        for off in range(0, n, step):
            piece = view[off:off + step]
            more = off + step < n
            frame = self._ip_frame(dst, proto, len(piece), ident, (_IP_MF if more else 0) | (off >> 3))
            frame[34:] = piece
            self._emit(dst, frame, now)
            count += 1
        self.counters["fragments_sent"] += count
        return count

    # ================================================================== time
    def poll(self, now: float, timers: bool = True) -> list[Any]:
        """Run due timers and return every frame to transmit now (bytes-like, in order).

        ``timers=False`` only serves the connections with work now (an application call,
        a segment) and leaves the TCP timers for a later poll: the library OS does that
        right after an application call, so that a delayed ACK whose reply the application
        is about to write (its request waits in the completion queue) is not sent alone."""
        self._now = now
        events = self._events
        send = self._send_tcp
        for lst in self._listeners.values():
            if timers and (lst._half_open or lst._ready or lst._out):   # else no deadline
                d = lst.next_deadline()
                if d is not None and d <= now:
                    for seg in lst.poll(now):
                        send(seg, now)
            if lst._ready:
                events.add(lst)
        active = self._active
        heap = self._timers
        if timers and heap and heap[0][0] <= now:
            self._fire_due(heap, self._sched, _timer_deadline, now)
        heap = self._ack_timers
        if timers and heap and heap[0][0] <= now:  # (an ACK a reply carried: cancelled)
            self._fire_due(heap, self._ack_sched, _delack_deadline, now)
        if active:
            conns = self._conns
            for _ in range(8):   # app calls made by nobody here: one round, rarely two
                batch = list(active)
                active.clear()
                for conn in batch:
                    key = (conn.remote_addr, conn.remote_port, conn.local_port)
                    if conns.get(key) is not conn:
                        continue     # already left the table (retired, or reused from TIME_WAIT)
                    st = conn._state
                    err = conn.error
                    for seg in conn.poll(now):
                        send(seg, now)
                    if conn._state is not st or conn.error != err:
                        events.add(conn)   # what the application sees changed (timers, close)
                    if conn._state is _CLOSED:
                        del conns[key]
                        self._retire(conn)
                    else:
                        self._schedule(conn)
                if not active:
                    break
        if self._pending:
            self._arp_timers(now)
        if timers and self.reassembler._pending:
            rd = self.reassembler.next_deadline()
            if rd is not None and rd <= now:
                self.reassembler.expire(now)
        out = self._out
        self._out = []
        return out

    def poll_connection(self, conn: TcpConnection, now: float) -> list[Any]:
        """:meth:`poll` (``timers=False``) for ``conn`` alone: what an application call on
        one connection (a push) needs, without visiting the other connections with work
        (they wait for the next :meth:`poll`).  Returns the frames to transmit now.

        The common case, an ESTABLISHED connection whose poll would send just one data
        segment (:meth:`TcpConnection.poll_data`), is framed by :meth:`_send_data` without
        an :class:`OutSegment` (the same frames as the general path:
        tests/test_inet_cbuild.py).  With the C fast paths, that case is ``_tx_fast``
        (the same frames and effects: tests/test_inet_txfast.py)."""
        if _tx_fast is not None:
            out = _tx_fast(self, conn, now)
            if out is not None:
                return out
        self._now = now
        self._active.pop(conn, None)
        key = (conn.remote_addr, conn.remote_port, conn.local_port)
        if self._conns.get(key) is conn:
            st = conn._state
            if st is _ESTABLISHED and not conn._ctl:
                # TcpConnection.poll's one-segment case (poll_data), framed without an
                # OutSegment by the C builder: the same frame _send_tcp would build
                r = conn.poll_data(now)
                if r is not None:
                    self._send_data(conn, r, now)
                    # _schedule(conn) after poll_data: no delayed ACK, nothing due now, in
                    # ESTABLISHED no close timer, no persist timer: the RTO or the keepalive
                    d = conn._rto_deadline
                    t = conn._keepalive_deadline
                    if t is not None and (d is None or t < d):
                        d = t
                    if d is not None:
                        old = self._sched.get(conn)
                        if old is None or old > d:
                            self._sched[conn] = d
                            self._timer_n += 1
                            heapq.heappush(self._timers, (d, self._timer_n, conn))
                    out = self._out
                    self._out = []
                    return out
                # nothing to send, or more than one segment: the general path
            err = conn.error
            for seg in conn.poll(now):
                self._send_tcp(seg, now)
            if conn._state is not st or conn.error != err:
                self._events.add(conn)
            if conn._state is _CLOSED:
                del self._conns[key]
                self._retire(conn)
            else:
                self._schedule(conn)
        out = self._out
        self._out = []
        return out

    def _fire_due(self, heap: list, sched: dict, deadline_of: Callable[[TcpConnection], float | None],
                  now: float) -> None:
        """Pop the entries of timer ``heap`` due by ``now``: a connection whose timer
        (``deadline_of``) is due becomes active, one whose timer moved later is scheduled
        again; a stale entry, or a cancelled timer, is dropped."""
        active = self._active
        pop = heapq.heappop
        while heap and heap[0][0] <= now:
            d, _, conn = pop(heap)
            if sched.get(conn) == d:
                del sched[conn]
                nd = deadline_of(conn)
                if nd is None:
                    continue   # the timer was cancelled
                if nd > now:
                    self._schedule(conn)   # it moved later: not due yet
                else:
                    active[conn] = None

    def _schedule(self, conn: TcpConnection) -> None:
        """Put the next timer of ``conn`` in the heap unless an entry at or before it is there."""
        d = conn._delack_deadline
        if d is not None:
            old = self._ack_sched.get(conn)
            if old is None or old > d:
                self._ack_sched[conn] = d
                self._timer_n += 1
                heapq.heappush(self._ack_timers, (d, self._timer_n, conn))
        d = conn.next_deadline(False)
        if d is None:
            return
        sched = self._sched
        old = sched.get(conn)
        if old is not None and old <= d:
            return   # the earlier entry fires first; poll() reschedules from there
        sched[conn] = d
        self._timer_n += 1
        heapq.heappush(self._timers, (d, self._timer_n, conn))

    def _adopt(self, conn: TcpConnection) -> None:
        """``conn`` joined the connection table: it reports its work to this stack."""
        conn._active = self._active
        self._active[conn] = None

    def _arp_timers(self, now: float) -> None:
        for hop, p in list(self._pending.items()):
            if p.next_try > now:
                continue
            if p.tries >= self.arp_retries:
                del self._pending[hop]
                self.counters["arp_unresolved_drops"] += len(p.frames)
                self.counters["arp_unresolved"] += 1
                continue
            p.tries += 1
            p.next_try = now + self.arp_retry
            self.counters["arp_requests"] += 1
            self._out.append(self.arp_request(hop))

    def next_deadline(self) -> float | None:
        """When :meth:`poll` must run next if no frame arrives: now if it has output or work."""
        if self._out:
            return self._now
        best = None
        for lst in self._listeners.values():
            d = lst.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        if self._active:
            return self._now
        for timers, sched in ((self._timers, self._sched), (self._ack_timers, self._ack_sched)):
            while timers and sched.get(timers[0][2]) != timers[0][0]:
                heapq.heappop(timers)   # stale entries
            if timers:
                d = timers[0][0]
                if best is None or d < best:
                    best = d
        for p in self._pending.values():
            if best is None or p.next_try < best:
                best = p.next_try
        d = self.reassembler.next_deadline()
        if d is not None and (best is None or d < best):
            best = d
        return best

    def take_events(self) -> set[Any]:
        """The endpoints, listeners and connections touched since the last call (each once)."""
        ev = self._events
        if ev:
            self._events = set()
        return ev

    # ================================================================== UDP
    def udp_bind(self, port: int = 0) -> UdpEndpoint:
        """A new endpoint on ``port`` (0: an ephemeral one).  EADDRINUSE / EADDRNOTAVAIL."""
        if port:
            if port in self._udp:
                raise _oserror(errno.EADDRINUSE, f"UDP port {port} is in use")
        else:
            port = self._ephemeral(lambda p: p not in self._udp, "udp")
        ep = self._udp[port] = UdpEndpoint(port, self.udp_rx_limit)
        return ep

    def udp_close(self, ep: UdpEndpoint) -> None:
        """Release the endpoint's port; queued datagrams are dropped."""
        if self._udp.get(ep.port) is ep:
            del self._udp[ep.port]
        ep.closed = True
        ep.rx.clear()
        ep.rx_bytes = 0

    def udp_send(self, ep: UdpEndpoint, data: bytes | bytearray | memoryview, dst: int, dst_port: int,
                 now: float) -> None:
        """Send one datagram from ``ep`` (fragmented if needed).  EMSGSIZE above 65507 bytes."""
        if len(data) > 65507:
            raise _oserror(errno.EMSGSIZE, f"a UDP datagram holds at most 65507 bytes, not {len(data)}")
        if self.next_hop(dst) is None and dst != 0xFFFFFFFF:
            raise _oserror(errno.ENETUNREACH, f"no route to {Ipv4Address(dst)} (no gateway configured)")
        l4 = UdpDatagram(ep.port, dst_port, data).to_bytes(self._ip_int, dst)
        ep.datagrams_out += 1
        self.send_ip(dst, _PROTO_UDP, l4, now)

    # ================================================================== TCP
    def tcp_reserve(self, port: int) -> int:
        """Hold ``port`` for a bound socket (0: pick an ephemeral one); returns it.

        EADDRINUSE if another bound socket or a listener holds it."""
        if port:
            if self._tcp_bound[port] or port in self._listeners:
                raise _oserror(errno.EADDRINUSE, f"TCP port {port} is in use")
        else:
            port = self._ephemeral(lambda p: not self._tcp_bound[p] and p not in self._listeners, "tcp")
        self._tcp_bound[port] += 1
        return port

    def tcp_release(self, port: int) -> None:
        """Give back a port from :meth:`tcp_reserve`."""
        if self._tcp_bound[port] > 1:
            self._tcp_bound[port] -= 1
        else:
            self._tcp_bound.pop(port, None)

    def tcp_listen(self, port: int, backlog: int = 128, config: TcpConfig | None = None) -> TcpListener:
        """Start listening on ``port`` (reserved by the caller).  EADDRINUSE if already listening."""
        if port in self._listeners:
            raise _oserror(errno.EADDRINUSE, f"TCP port {port} already has a listener")
        lst = TcpListener(port, local_addr=self._ip_int, config=config or self.tcp_config, rng=self.rng,
                          backlog=max(1, backlog))
        self._listeners[port] = lst
        return lst

    def tcp_unlisten(self, lst: TcpListener) -> None:
        """Stop listening: connections not yet accepted are reset (their RSTs go out at poll)."""
        if self._listeners.get(lst.local_port) is lst:
            del self._listeners[lst.local_port]
        lst.close()
        for seg in lst.poll(self._now):
            self._send_tcp(seg, self._now)

    def tcp_accept(self, lst: TcpListener) -> TcpConnection | None:
        """The oldest established connection of ``lst`` (now routed by the 4-tuple), or None."""
        conn = lst.accept()
        if conn is None:
            return None
        key = (conn.remote_addr, conn.remote_port, conn.local_port)
        old = self._conns.get(key)
        if old is not None:  # a TIME_WAIT predecessor that was not reused via the listener
            self._retire(old)
        self._conns[key] = conn
        self._adopt(conn)
        return conn

    def tcp_connect(self, remote: int, remote_port: int, now: float, local_port: int = 0,
                    config: TcpConfig | None = None) -> TcpConnection:
        """Active open to ``remote:remote_port`` (SYN at the next poll).

        ``local_port`` 0 picks an ephemeral port unused towards that destination;
        EADDRNOTAVAIL when none is left, EADDRINUSE when the 4-tuple exists,
        ENETUNREACH when there is no route."""
        if not 0 < remote_port <= 65535:
            raise _oserror(errno.EINVAL, f"port must be 1-65535, got {remote_port}")
        if self.next_hop(remote) is None or remote == self._ip_int or not _is_unicast_host(remote):
            raise _oserror(errno.ENETUNREACH, f"{Ipv4Address(remote)} is not reachable through this stack "
                           f"({Ipv4Address(self._ip_int)}/{self.prefix_len}, gateway {self.gateway})")
        if local_port:
            if (remote, remote_port, local_port) in self._conns:
                raise _oserror(errno.EADDRINUSE, f"a connection {local_port} -> "
                               f"{Ipv4Address(remote)}:{remote_port} exists")
        else:
            local_port = self._ephemeral(
                lambda p: (remote, remote_port, p) not in self._conns and not self._tcp_bound[p]
                and p not in self._listeners, "tcp")
        conn = TcpConnection(local_port, remote_port, local_addr=self._ip_int, remote_addr=remote,
                             config=config or self.tcp_config, rng=self.rng)
        conn.connect(now)
        self._conns[(remote, remote_port, local_port)] = conn
        self._adopt(conn)
        self._now = now
        return conn

    def _retire(self, conn: TcpConnection) -> None:
        conn._active = None
        self._active.pop(conn, None)
        self._sched.pop(conn, None)
        self._ack_sched.pop(conn, None)
        c = conn.counters
        t = self.tcp_closed_totals
        t["connections"] += 1
        t["retransmits"] += c.retransmits
        t["segments_in"] += c.segments_in
        t["segments_out"] += c.segments_out

    def _ephemeral(self, free, proto: str) -> int:
        lo, hi = self.ephemeral_ports
        span = hi - lo + 1
        cur = self._eph_tcp if proto == "tcp" else self._eph_udp
        for i in range(span):
            p = lo + (cur - lo + i) % span
            if free(p):
                nxt = lo + (p - lo + 1) % span
                if proto == "tcp":
                    self._eph_tcp = nxt
                else:
                    self._eph_udp = nxt
                return p
        self.counters[f"{proto}_ports_exhausted"] += 1
        raise _oserror(errno.EADDRNOTAVAIL, f"all {span} ephemeral {proto.upper()} ports "
                       f"({lo}-{hi}) are in use")

    # ================================================================== introspection
    @property
    def connections(self) -> dict[tuple[int, int, int], TcpConnection]:
        """The live connections by ``(remote_ip, remote_port, local_port)`` (read only)."""
        return self._conns

    def stats(self) -> dict[str, Any]:
        """Counters of the stack: drops by reason, ARP, fragments, TCP totals."""
        s: dict[str, Any] = dict(self.counters)
        s["arp_entries"] = len(self._arp)
        s["arp_pending"] = sum(len(p.frames) for p in self._pending.values())
        s["tcp_connections"] = len(self._conns)
        s["tcp_listeners"] = len(self._listeners)
        s["udp_endpoints"] = len(self._udp)
        s["reassembly"] = asdict(self.reassembler.stats)
        live = Counter()
        for conn in self._conns.values():
            live["retransmits"] += conn.counters.retransmits
        s["tcp_retransmits"] = live["retransmits"] + self.tcp_closed_totals["retransmits"]
        s["tcp_closed_connections"] = self.tcp_closed_totals["connections"]
        return s


def _install_c_paths() -> None:
    """Use the C receive path (``_rx_fast``) and send path (``_tx_fast``) of libos/inet/_tcpfast.c
    when TcpConnection's C fast paths are in use (libos.inet.tcp.connection.C_FAST_PATHS: not
    under DEMI_INET_NO_C) and the cffi checks and frame builders they call are built.
    They handle exactly :class:`Stack` instances (a subclass takes the Python path) and
    connections whose ``fast_input``/``poll_data`` are the C ones (and, for sending, while
    ``Stack._send_data`` is the one defined here).  ``DEMI_INET_NO_C_RX=1`` /
    ``DEMI_INET_NO_C_TX=1`` turn off one path alone (to measure it)."""
    global _rx_fast, _tx_fast
    from .tcp import connection as _connection
    if not _connection.C_FAST_PATHS:
        return
    if _tcp_rx is None or _tcp_data_frame is None:
        return   # (the cffi build they call is not there)
    try:
        from . import _tcpfast
        _tcpfast.setup_stack(Stack)
        _tcpfast.set_csum_api(*(int(_csum_ffi.cast("uintptr_t", _csum_ffi.addressof(_csum_lib, name)))
                                for name in ("tcp_data_frame", "tcp_rx")))
    except (ImportError, AttributeError, TypeError):
        return
    if not os.environ.get("DEMI_INET_NO_C_RX"):
        _rx_fast = _tcpfast.rx_established
    if _tcp_frame is not None and not os.environ.get("DEMI_INET_NO_C_TX"):
        _tx_fast = _tcpfast.tx_established


_install_c_paths()

#: The Python method under its own name: when the C version replaces ``_fire_due`` it takes
#: the calls the C code does not handle.
Stack._fire_due_py = Stack._fire_due  # type: ignore[attr-defined]


def _install_c_fire_due() -> bool:
    """Replace :meth:`Stack._fire_due` by its C version (libos/inet/_tcpfast.c: stack_fire_due,
    with ``_schedule`` and ``TcpConnection.next_deadline`` of the common case in C too; the
    same effects: tests/test_inet_sockfast.py), with the C paths above (not under
    DEMI_INET_NO_C) and the library OS's (not under DEMI_INET_NO_C_SOCK)."""
    from .tcp import connection as _connection
    if not _connection.C_FAST_PATHS or os.environ.get("DEMI_INET_NO_C_SOCK"):
        return False
    try:
        from . import _tcpfast
        fire_due = _tcpfast.setup_fire_due(_timer_deadline, _delack_deadline, Stack._fire_due_py)  # type: ignore[attr-defined]
    except (ImportError, AttributeError, TypeError):
        return False
    Stack._fire_due = fire_due  # type: ignore[method-assign]
    return True


#: True when Stack._fire_due is the C version.
C_FIRE_DUE = _install_c_fire_due()
