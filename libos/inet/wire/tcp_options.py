"""TCP options (RFC 9293 3.2, RFC 7323, RFC 2018): parse, build, emit.

:class:`TcpOptions` keeps the options of one segment in their exact order and
layout (``items``), so a parsed segment re-emits byte for byte, and exposes
the decoded values as attributes (``mss``, ``window_scale``,
``sack_permitted``, ``sack_blocks``, ``timestamps``).  When a known option
appears twice, the last one wins for the attribute (all are kept in
``items``).  Malformed option lists raise MalformedPacket (layer "tcp").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Any

from .errors import MalformedPacket, ReadableBuffer, WritableBuffer, require_room

__all__ = ["TcpOptionKind", "TcpOption", "TcpOptions", "NO_OPTIONS", "TCP_MAX_OPTIONS_LEN"]

TCP_MAX_OPTIONS_LEN = 40
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")


class TcpOptionKind(IntEnum):
    EOL = 0
    NOP = 1
    MSS = 2
    WINDOW_SCALE = 3
    SACK_PERMITTED = 4
    SACK = 5
    TIMESTAMPS = 8


_EOL, _NOP, _MSS, _WS, _SACKP, _SACK, _TS = 0, 1, 2, 3, 4, 5, 8
_NOP_ITEM = (_NOP, None)

#: An option item: ``(kind, value)``.  Values by kind: NOP -> None;
#: MSS -> int; WINDOW_SCALE -> int (shift, as sent; RFC 7323 caps use at 14);
#: SACK_PERMITTED -> None; SACK -> tuple of (left, right) edge pairs (1..4);
#: TIMESTAMPS -> (tsval, tsecr); any other kind -> its data bytes (may be empty).
#: EOL is never an item: it ends the list and emit pads with zeros.
TcpOption = tuple[int, Any]


class TcpOptions:
    """The options of one segment, as an ordered tuple of items plus decoded values.

    Build the ones to send with :meth:`build` (Linux's layout); construct from
    explicit ``items`` for exact control.  Two instances are equal when their
    items are.  Instances are immutable by convention.
    """

    __slots__ = ("items", "mss", "window_scale", "sack_permitted", "sack_blocks", "timestamps", "_encoded_len")

    items: tuple[TcpOption, ...]
    mss: int | None
    window_scale: int | None
    sack_permitted: bool
    sack_blocks: tuple[tuple[int, int], ...]
    timestamps: tuple[int, int] | None

    def __init__(self, items: Iterable[TcpOption] = ()) -> None:
        """Validate ``items`` (ValueError if one cannot be encoded) and decode them."""
        try:
            checked, size = self._validate(items)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid TCP option items: {exc}") from None
        self._set(tuple(checked), size)

    @staticmethod
    def _validate(items: Iterable[TcpOption]) -> tuple[list[TcpOption], int]:
        checked: list[TcpOption] = []
        size = 0
        for item in items:
            kind, value = item
            if kind == _EOL:
                raise ValueError("EOL is not an item: the option list ends where the items end")
            if kind == _NOP:
                item = _NOP_ITEM
                size += 1
            elif kind == _MSS:
                if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                    raise ValueError(f"MSS must be an int in 0..65535, got {value!r}")
                size += 4
            elif kind == _WS:
                if not isinstance(value, int) or not 0 <= value <= 0xFF:
                    raise ValueError(f"window scale must be an int in 0..255, got {value!r}")
                size += 3
            elif kind == _SACKP:
                item = (_SACKP, None)
                size += 2
            elif kind == _SACK:
                blocks = tuple((int(left), int(right)) for left, right in value)
                if not 1 <= len(blocks) <= 4 or not all(
                    0 <= left <= 0xFFFFFFFF and 0 <= right <= 0xFFFFFFFF for left, right in blocks
                ):
                    raise ValueError(f"SACK needs 1..4 blocks of 32-bit edges, got {value!r}")
                item = (_SACK, blocks)
                size += 2 + 8 * len(blocks)
            elif kind == _TS:
                tsval, tsecr = value
                if not (
                    isinstance(tsval, int) and isinstance(tsecr, int)
                    and 0 <= tsval <= 0xFFFFFFFF and 0 <= tsecr <= 0xFFFFFFFF
                ):
                    raise ValueError(f"timestamps must be 32-bit, got {value!r}")
                item = (_TS, (tsval, tsecr))
                size += 10
            elif isinstance(kind, int) and 0 <= kind <= 255:
                if not isinstance(value, (bytes, bytearray, memoryview)):
                    raise ValueError(f"option {kind} needs bytes data, got {value!r}")
                data = bytes(value)
                if len(data) > 38:
                    raise ValueError(f"option {kind} data of {len(data)} bytes exceeds 38")
                item = (kind, data)
                size += 2 + len(data)
            else:
                raise ValueError(f"option kind must be 0..255, got {kind!r}")
            checked.append((int(item[0]), item[1]))
        return checked, size

    def _set(self, items: tuple[TcpOption, ...], size: int) -> None:
        self.items = items
        self._encoded_len = size
        self.mss = None
        self.window_scale = None
        self.sack_permitted = False
        self.sack_blocks = ()
        self.timestamps = None
        for kind, value in items:
            if kind == _TS:
                self.timestamps = value
            elif kind == _SACK:
                self.sack_blocks = value
            elif kind == _MSS:
                self.mss = value
            elif kind == _WS:
                self.window_scale = value
            elif kind == _SACKP:
                self.sack_permitted = True

    @classmethod
    def _trusted(cls, items: tuple[TcpOption, ...], size: int) -> TcpOptions:
        self = cls.__new__(cls)
        self._set(items, size)
        return self

    @classmethod
    def build(
        cls,
        *,
        mss: int | None = None,
        window_scale: int | None = None,
        sack_permitted: bool = False,
        timestamps: tuple[int, int] | None = None,
        sack_blocks: Iterable[tuple[int, int]] = (),
    ) -> TcpOptions:
        """Options laid out as Linux sends them, each option 4-byte aligned via NOPs.

        SYN with all four: ``mss, sackOK, TS, nop, wscale`` (20 bytes);
        data/ACK segments: ``nop, nop, TS`` then ``nop, nop, sack``.
        Raises ValueError if the result would exceed 40 bytes.
        """
        items: list[TcpOption] = []
        if mss is not None:
            items.append((_MSS, mss))
        if sack_permitted and timestamps is not None:
            items += [(_SACKP, None), (_TS, timestamps)]
        else:
            if timestamps is not None:
                items += [_NOP_ITEM, _NOP_ITEM, (_TS, timestamps)]
            if sack_permitted:
                items += [_NOP_ITEM, _NOP_ITEM, (_SACKP, None)]
        if window_scale is not None:
            items += [_NOP_ITEM, (_WS, window_scale)]
        blocks = tuple(sack_blocks)
        if blocks:
            items += [_NOP_ITEM, _NOP_ITEM, (_SACK, blocks)]
        opts = cls(items)
        if opts.padded_len > TCP_MAX_OPTIONS_LEN:
            raise ValueError(f"options need {opts.padded_len} bytes, TCP allows 40")
        return opts

    @classmethod
    def parse(cls, data: ReadableBuffer) -> TcpOptions:
        """Parse the option bytes of a header (between byte 20 and the data offset).

        Raises MalformedPacket for: a length byte missing, below 2 or running
        past the end; a known kind with the wrong length (MSS 4, window scale
        3, SACK-permitted 2, timestamps 10, SACK 2 + 8n with n >= 1).  Parsing
        stops at EOL; the bytes after it are padding and are not kept.
        """
        n = len(data)
        if n == 12 and _U32.unpack_from(data)[0] == 0x0101080A:
            # Fast path: "nop, nop, TS" is on every segment of a connection
            # that negotiated timestamps.
            ts = _U32X2.unpack_from(data, 4)
            self = cls.__new__(cls)
            self.items = (_NOP_ITEM, _NOP_ITEM, (_TS, ts))
            self._encoded_len = 12
            self.mss = self.window_scale = None
            self.sack_permitted = False
            self.sack_blocks = ()
            self.timestamps = ts
            return self
        items: list[TcpOption] = []
        i = 0
        while i < n:
            kind = data[i]
            if kind == _NOP:
                items.append(_NOP_ITEM)
                i += 1
                continue
            if kind == _EOL:
                break
            if i + 1 >= n:
                raise MalformedPacket("tcp", f"option {kind} at offset {i} has no length byte")
            length = data[i + 1]
            if length < 2:
                raise MalformedPacket("tcp", f"option {kind} at offset {i} has length {length} (< 2)")
            end = i + length
            if end > n:
                raise MalformedPacket(
                    "tcp", f"option {kind} at offset {i} (length {length}) overruns the {n}-byte option space"
                )
            if kind == _TS:
                if length != 10:
                    raise MalformedPacket("tcp", f"timestamps option has length {length}, not 10")
                items.append((_TS, _U32X2.unpack_from(data, i + 2)))
            elif kind == _MSS:
                if length != 4:
                    raise MalformedPacket("tcp", f"MSS option has length {length}, not 4")
                items.append((_MSS, _U16.unpack_from(data, i + 2)[0]))
            elif kind == _SACK:
                if length < 10 or (length - 2) & 7:
                    raise MalformedPacket("tcp", f"SACK option has length {length}, not 2 + 8n")
                items.append((_SACK, tuple(_U32X2.iter_unpack(data[i + 2 : end]))))
            elif kind == _WS:
                if length != 3:
                    raise MalformedPacket("tcp", f"window scale option has length {length}, not 3")
                items.append((_WS, data[i + 2]))
            elif kind == _SACKP:
                if length != 2:
                    raise MalformedPacket("tcp", f"SACK-permitted option has length {length}, not 2")
                items.append((_SACKP, None))
            else:
                items.append((kind, bytes(data[i + 2 : end])))
            i = end
        return cls._trusted(tuple(items), i)

    @property
    def encoded_len(self) -> int:
        """Bytes the items take, before padding."""
        return self._encoded_len

    @property
    def padded_len(self) -> int:
        """Bytes the options occupy in the header (a multiple of 4)."""
        return (self._encoded_len + 3) & ~3

    def emit_into(self, buf: WritableBuffer, offset: int = 0) -> int:
        """Write the items and zero (EOL) padding at ``offset``; return :attr:`padded_len`."""
        total = self.padded_len
        require_room(buf, offset, total, "TCP options")
        i = offset
        for kind, value in self.items:
            if kind == _NOP:
                buf[i] = _NOP
                i += 1
            elif kind == _TS:
                buf[i] = _TS
                buf[i + 1] = 10
                _U32X2.pack_into(buf, i + 2, *value)
                i += 10
            elif kind == _SACK:
                buf[i] = _SACK
                buf[i + 1] = 2 + 8 * len(value)
                i += 2
                for left, right in value:
                    _U32X2.pack_into(buf, i, left, right)
                    i += 8
            elif kind == _MSS:
                buf[i] = _MSS
                buf[i + 1] = 4
                _U16.pack_into(buf, i + 2, value)
                i += 4
            elif kind == _WS:
                buf[i : i + 3] = bytes((_WS, 3, value))
                i += 3
            elif kind == _SACKP:
                buf[i : i + 2] = b"\x04\x02"
                i += 2
            else:
                buf[i] = kind
                buf[i + 1] = 2 + len(value)
                buf[i + 2 : i + 2 + len(value)] = value
                i += 2 + len(value)
        end = offset + total
        if i < end:
            buf[i:end] = bytes(end - i)
        return total

    def to_bytes(self) -> bytes:
        """Return the padded option bytes."""
        out = bytearray(self.padded_len)
        self.emit_into(out, 0)
        return bytes(out)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TcpOptions):
            return NotImplemented
        return self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __repr__(self) -> str:
        parts = []
        for kind, value in self.items:
            if kind == _NOP:
                parts.append("nop")
            elif kind == _MSS:
                parts.append(f"mss {value}")
            elif kind == _WS:
                parts.append(f"wscale {value}")
            elif kind == _SACKP:
                parts.append("sackOK")
            elif kind == _TS:
                parts.append(f"TS val {value[0]} ecr {value[1]}")
            elif kind == _SACK:
                parts.append("sack " + " ".join(f"{left}:{right}" for left, right in value))
            else:
                parts.append(f"opt{kind} {value.hex()}")
        return f"TcpOptions<{','.join(parts)}>"


NO_OPTIONS = TcpOptions._trusted((), 0)
