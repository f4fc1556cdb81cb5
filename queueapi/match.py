"""``Match``: a declarative filter predicate (protocol and ports) a library OS can offload.

    m = dq.Match(proto="udp", dst_port=5353, src_ip="10.0.0.0/8", src_port=(1024, 65535))
    fq = los.filter(udp_qd, m)

As a plain predicate it is an ordinary callable on an element (``m(sga)``): the source
address of a datagram is ``sga.addr``, and ``proto``/``dst_port`` are compared with the
queue the filter is attached to (``filter`` binds it with :meth:`Match.bind_queue`).
Every field left ``None`` matches anything; ports are an int or an inclusive ``(lo, hi)``
range; ``src_ip`` is an address or a CIDR prefix.

A library OS that can evaluate it below Python does so: the ``inet`` library OS compiles
the filters of a bound UDP socket to classic BPF on its AF_PACKET socket
(libos/inet/bpf.py), so datagrams that fail every filter of that port are dropped by the
kernel and never reach Python.  That is the point of offloading, and it is the one
difference from a CPU filter: **an offloaded filter drops what it rejects** instead of
leaving it poppable on the parent (elements that pass are steered as usual).  The filter's
``stats()`` then says ``offload: "bpf"``.  ``offload=False`` keeps the CPU semantics
(steering) everywhere.  Any other predicate runs on the CPU.
"""
from __future__ import annotations

import ipaddress
import socket as _socket
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Match", "PROTOCOLS"]

#: protocol names a Match accepts, with their IP protocol numbers
PROTOCOLS = {"udp": 17, "tcp": 6}


def _port_range(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a (lo, hi) tuple, not a bool")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        lo, hi = value
    else:
        raise TypeError(f"{name} must be an int or a (lo, hi) tuple of ints, not {value!r}")
    if not 0 <= lo <= hi <= 65535:
        raise ValueError(f"{name} must lie in 0..65535 with lo <= hi, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class Match:
    """Match elements by protocol, destination (local) port and source address/port."""

    proto: str | None = None
    dst_port: int | tuple[int, int] | None = None
    src_ip: str | None = None
    src_port: int | tuple[int, int] | None = None
    offload: bool = True
    # normalized forms, filled in by __post_init__
    _dst: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)
    _src: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)
    _net: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.proto is not None:
            if not isinstance(self.proto, str) or self.proto.lower() not in PROTOCOLS:
                raise ValueError(f"proto must be one of {sorted(PROTOCOLS)} or None, not {self.proto!r}")
            object.__setattr__(self, "proto", self.proto.lower())
        object.__setattr__(self, "_dst", _port_range(self.dst_port, "dst_port"))
        object.__setattr__(self, "_src", _port_range(self.src_port, "src_port"))
        if self.src_ip is not None:
            if not isinstance(self.src_ip, str):
                raise TypeError(f"src_ip must be a str (address or CIDR prefix), not {self.src_ip!r}")
            net = ipaddress.IPv4Network(self.src_ip, strict=False)
            object.__setattr__(self, "_net", (int(net.network_address), int(net.netmask)))

    # ------------------------------------------------------------------ evaluation
    def test(self, proto: str | None, dst_port: int | None, src_ip: int | None, src_port: int | None) -> bool:
        """The predicate on already-parsed fields (``src_ip`` as an int); None = unknown = no match
        for a field this Match constrains."""
        if self.proto is not None and proto != self.proto:
            return False
        d = self._dst
        if d is not None and (dst_port is None or not d[0] <= dst_port <= d[1]):
            return False
        s = self._src
        if s is not None and (src_port is None or not s[0] <= src_port <= s[1]):
            return False
        n = self._net
        if n is not None and (src_ip is None or src_ip & n[1] != n[0]):
            return False
        return True

    def test_addr(self, proto: str | None, dst_port: int | None, addr: Any) -> bool:
        src_ip = src_port = None
        if isinstance(addr, tuple) and len(addr) >= 2:
            try:
                src_ip = int(ipaddress.IPv4Address(addr[0]))
            except (ValueError, TypeError):
                src_ip = None
            src_port = addr[1] if isinstance(addr[1], int) else None
        return self.test(proto, dst_port, src_ip, src_port)

    def __call__(self, sga: Any) -> bool:
        """Unbound (not attached to a queue): only the source fields can be checked."""
        return self.test_addr(self.proto, None if self._dst is None else self._dst[0],
                              getattr(sga, "addr", None))

    def bind_queue(self, queue: Any) -> "BoundMatch":
        """The predicate for elements of ``queue`` (its protocol and local port)."""
        return BoundMatch(self, queue)


class BoundMatch:
    """A :class:`Match` attached to one queue; ``match`` is the declarative part."""

    __slots__ = ("match", "queue")

    def __init__(self, match: Match, queue: Any) -> None:
        self.match = match
        self.queue = queue

    def queue_proto_port(self) -> tuple[str | None, int | None]:
        q = self.queue
        proto = None
        try:
            kind = q.getsockopt(_socket.SOL_SOCKET, _socket.SO_TYPE)
            proto = {_socket.SOCK_DGRAM: "udp", _socket.SOCK_STREAM: "tcp"}.get(kind)
        except Exception:
            pass
        port = None
        try:
            name = q.getsockname()
            if isinstance(name, tuple) and len(name) >= 2 and isinstance(name[1], int) and name[1]:
                port = name[1]
        except Exception:
            pass
        return proto, port

    def __call__(self, sga: Any) -> bool:
        proto, port = self.queue_proto_port()
        return self.match.test_addr(proto, port, getattr(sga, "addr", None))

    def __repr__(self) -> str:
        return f"<BoundMatch {self.match!r} on qd {getattr(self.queue, 'qd', '?')}>"
