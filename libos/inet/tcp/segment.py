"""Outgoing segments, and the reset a host sends for a segment no connection wants.

:class:`OutSegment` is what :meth:`TcpConnection.poll` returns: the header
fields the state machine chose plus the addresses of the connection, with
helpers that hand it to the wire layer (:class:`libos.inet.wire.TcpSegment`)
for encoding.  Payloads are bytes-like (a bytearray copied out of the send
queue); encoding copies them once more into the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from libos.inet.wire import TcpFlags, TcpOptions, TcpSegment
from libos.inet.wire.errors import ReadableBuffer, WritableBuffer
from libos.inet.wire.seq import SEQ_MASK
from libos.inet.wire.tcp_options import NO_OPTIONS

__all__ = ["OutSegment", "reset_for", "FLAGS"]

#: TcpFlags for every 9-bit value: indexing is ~30x cheaper than TcpFlags(i).
FLAGS: tuple[TcpFlags, ...] = tuple(TcpFlags(i) for i in range(0x200))

_FLAG_NAMES = ((0x002, "S"), (0x001, "F"), (0x004, "R"), (0x008, "P"), (0x010, "."), (0x020, "U"))


@dataclass(slots=True, eq=True)
class OutSegment:
    """A segment to transmit: ports, sequence fields, flags, window, options, payload.

    ``src_addr`` / ``dst_addr`` are the connection's IPv4 addresses as ints
    (0 when the connection was made without them); :meth:`to_bytes` and
    :meth:`emit_into` use them for the checksum unless given others.
    """

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: TcpFlags
    window: int
    options: TcpOptions = NO_OPTIONS
    payload: ReadableBuffer = b""
    src_addr: int = 0
    dst_addr: int = 0

    @property
    def seq_len(self) -> int:
        """Sequence space used: payload bytes plus one each for SYN and FIN."""
        f = int(self.flags)
        return len(self.payload) + (f & 2) // 2 + (f & 1)

    def to_wire(self) -> TcpSegment:
        """The wire-layer segment (checksum filled in when it is emitted)."""
        return TcpSegment(
            self.src_port, self.dst_port, self.seq, self.ack, self.flags, self.window, 0, self.options, self.payload
        )

    def to_bytes(self, src: int | None = None, dst: int | None = None) -> bytes:
        """Encode header, options and payload with the checksum for ``src`` -> ``dst``."""
        return self.to_wire().to_bytes(self.src_addr if src is None else src, self.dst_addr if dst is None else dst)

    def emit_into(self, buf: WritableBuffer, offset: int, src: int | None = None, dst: int | None = None) -> int:
        """Write the encoded segment into ``buf`` at ``offset``; return its length."""
        return self.to_wire().emit_into(
            buf, offset, self.src_addr if src is None else src, self.dst_addr if dst is None else dst
        )

    def __repr__(self) -> str:
        f = int(self.flags)
        names = "".join(n for bit, n in _FLAG_NAMES if f & bit) or "-"
        parts = [f"{self.src_port}>{self.dst_port}", names, f"seq={self.seq}"]
        if f & 0x010:
            parts.append(f"ack={self.ack}")
        parts.append(f"win={self.window}")
        if self.options:
            parts.append(repr(self.options))
        if self.payload:
            parts.append(f"len={len(self.payload)}")
        return f"OutSegment({' '.join(parts)})"


def reset_for(seg: TcpSegment, *, src_addr: int = 0, dst_addr: int = 0) -> OutSegment | None:
    """The RST to send for ``seg`` when no connection or listener takes it (RFC 9293 3.10.7.1).

    ``src_addr`` / ``dst_addr`` are the addresses of the reply (ours, then
    the sender's).  Returns None for a segment that itself carries RST.
    With ACK set the reset is ``<SEQ=SEG.ACK><CTL=RST>``; otherwise
    ``<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>``.
    """
    flags = int(seg.flags)
    if flags & 0x004:
        return None
    if flags & 0x010:
        return OutSegment(seg.dst_port, seg.src_port, seg.ack, 0, FLAGS[0x004], 0, NO_OPTIONS, b"", src_addr, dst_addr)
    seg_len = len(seg.payload) + (flags & 2) // 2 + (flags & 1)
    return OutSegment(
        seg.dst_port, seg.src_port, 0, (seg.seq + seg_len) & SEQ_MASK, FLAGS[0x014], 0, NO_OPTIONS, b"",
        src_addr, dst_addr,
    )
