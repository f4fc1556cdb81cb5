"""A listening socket: LISTEN-state processing and a bounded SYN backlog."""

from __future__ import annotations

import random
from collections import OrderedDict

from libos.inet.wire import TcpSegment

from .config import DEFAULT_CONFIG, TcpConfig
from .connection import TcpConnection
from .segment import OutSegment, reset_for
from .state import TcpState

__all__ = ["TcpListener"]

_SYN, _RST, _ACK = 0x02, 0x04, 0x10


class TcpListener:
    """Passive opens on one local port (RFC 9293 3.10.7.2).

    The stack hands it every segment for the local port that matches no
    accepted connection, with the sender's address.  The listener owns the
    connections until they are accepted: half-open ones (SYN_RECEIVED, at
    most ``syn_backlog``; when full, the oldest is dropped silently, no SYN
    cookies) and established ones waiting for :meth:`accept` (at most
    ``backlog``; when full, new SYNs are dropped so that the peer retries,
    as Linux does).  Segments for both kinds are routed to them here, and
    :meth:`poll` collects their output (SYN-ACKs, ACKs) with the listener's
    own (RSTs for stray ACKs).  Once :meth:`accept` returns a connection, the
    caller routes its segments and polls it directly.

    In LISTEN, a RST is ignored, an ACK is answered with ``<SEQ=SEG.ACK><CTL=RST>``
    and a SYN creates a connection in SYN_RECEIVED.
    """

    def __init__(
        self,
        local_port: int,
        *,
        local_addr: int = 0,
        config: TcpConfig | None = None,
        rng: random.Random | None = None,
        backlog: int = 128,
        syn_backlog: int | None = None,
    ) -> None:
        if backlog < 1:
            raise ValueError(f"backlog must be at least 1, got {backlog}")
        self.local_port = local_port
        self.local_addr = int(local_addr)
        self.config = config if config is not None else DEFAULT_CONFIG
        self.backlog = backlog
        self.syn_backlog = syn_backlog if syn_backlog is not None else max(backlog, 128)
        self._rng = rng
        self._state = TcpState.LISTEN
        self._half_open: OrderedDict[tuple[int, int], TcpConnection] = OrderedDict()
        self._ready: OrderedDict[tuple[int, int], TcpConnection] = OrderedDict()
        self._out: list[OutSegment] = []
        self._now = 0.0
        #: SYN_RECEIVED connections dropped because the SYN backlog was full.
        self.syn_backlog_drops = 0
        #: SYNs dropped because ``backlog`` connections were waiting for accept().
        self.accept_queue_drops = 0

    @property
    def state(self) -> TcpState:
        """LISTEN, or CLOSED after :meth:`close`."""
        return self._state

    @property
    def half_open(self) -> int:
        """Connections in SYN_RECEIVED."""
        return len(self._half_open)

    @property
    def pending(self) -> int:
        """Established connections waiting for :meth:`accept`."""
        return len(self._ready)

    def on_segment(self, seg: TcpSegment, now: float, remote_addr: int = 0, local_addr: int | None = None) -> None:
        """Process a segment for this port from ``remote_addr``:``seg.src_port``."""
        self._now = now
        key = (int(remote_addr), seg.src_port)
        conn = self._half_open.get(key)
        if conn is None:
            conn = self._ready.get(key)
        if conn is not None:
            conn.on_segment(seg, now)
            self._update(key, conn)
            return
        laddr = self.local_addr if local_addr is None else int(local_addr)
        if self._state is not TcpState.LISTEN:
            rst = reset_for(seg, src_addr=laddr, dst_addr=int(remote_addr))
            if rst is not None:
                self._out.append(rst)
            return
        flags = int(seg.flags)
        if flags & _RST:
            return
        if flags & _ACK:
            rst = reset_for(seg, src_addr=laddr, dst_addr=int(remote_addr))
            if rst is not None:
                self._out.append(rst)
            return
        if not flags & _SYN:
            return
        if len(self._ready) >= self.backlog:
            self.accept_queue_drops += 1
            return
        if len(self._half_open) >= self.syn_backlog:
            self._half_open.popitem(last=False)
            self.syn_backlog_drops += 1
        conn = TcpConnection(
            self.local_port, seg.src_port, local_addr=laddr, remote_addr=int(remote_addr),
            config=self.config, rng=self._rng,
        )
        conn.accept_syn(seg, now)
        self._half_open[key] = conn

    def _update(self, key: tuple[int, int], conn: TcpConnection) -> None:
        """Move a half-open connection on when its handshake ended (drop it if it failed)."""
        if conn.state is TcpState.SYN_RECEIVED or self._half_open.pop(key, None) is None:
            return
        if conn.state is not TcpState.CLOSED:
            self._ready[key] = conn  # ESTABLISHED, or further along if data+FIN came with the ACK

    def accept(self) -> TcpConnection | None:
        """The oldest established connection, or None.  The caller now owns it."""
        if not self._ready:
            return None
        _, conn = self._ready.popitem(last=False)
        return conn

    def poll(self, now: float) -> list[OutSegment]:
        """Segments to send now: the listener's RSTs and its connections' output."""
        self._now = now
        out = self._out
        self._out = []
        for key, conn in list(self._half_open.items()):
            out.extend(conn.poll(now))
            if conn.state is TcpState.CLOSED:
                del self._half_open[key]  # SYN-ACK retransmissions exhausted, or reset
            else:
                self._update(key, conn)
        for conn in self._ready.values():
            out.extend(conn.poll(now))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` must be called next (see TcpConnection.next_deadline)."""
        if self._out:
            return self._now
        best = None
        for table in (self._half_open, self._ready):
            for conn in table.values():
                d = conn.next_deadline()
                if d is not None and (best is None or d < best):
                    best = d
        return best

    def close(self) -> None:
        """Stop listening: reset every connection not yet accepted (RSTs come from poll)."""
        if self._state is TcpState.CLOSED:
            return
        self._state = TcpState.CLOSED
        for table in (self._half_open, self._ready):
            for conn in table.values():
                conn.abort()
                self._out.extend(conn.poll(self._now))
            table.clear()
