"""The eleven states of a TCP connection (RFC 9293 section 3.3.2)."""

from __future__ import annotations

from enum import Enum

__all__ = ["TcpState"]


class TcpState(Enum):
    """Connection states.  ``LISTEN`` is the state of a :class:`TcpListener`;
    a :class:`TcpConnection` starts in ``CLOSED`` and leaves it through
    ``connect()`` (SYN_SENT) or a listener's SYN (SYN_RECEIVED)."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RECEIVED = "SYN_RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSE_WAIT = "CLOSE_WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST_ACK"
    TIME_WAIT = "TIME_WAIT"

    @property
    def synchronized(self) -> bool:
        """Both ISNs are known (every state after the handshake began on both sides)."""
        return self not in (TcpState.CLOSED, TcpState.LISTEN, TcpState.SYN_SENT)

    def __repr__(self) -> str:
        return f"TcpState.{self.name}"
