"""Value types of the queue API: opcodes, results and scatter-gather arrays."""
from __future__ import annotations

import errno
from enum import IntEnum
from typing import Any, Iterable, Sequence, Union

from queueapi._fast import QResultBase as _QResultBase
from queueapi._fast import SGArrayBase as _SGArrayBase

__all__ = ["Opcode", "QResult", "SGArray", "Data", "as_segments"]


class Opcode(IntEnum):
    """What a completed token did (Demikernel's ``demi_opcode_t``)."""

    INVALID = 0
    PUSH = 1
    POP = 2
    ACCEPT = 3
    CONNECT = 4
    CLOSE = 5
    FAILED = 6


class QResult(_QResultBase):
    """The immutable result of one completed token.

    ``ret`` is 0, or the errno when ``opcode`` is ``FAILED``. ``sga`` is set for ``POP``
    (a zero-length sga means end of stream); ``new_qd`` and ``addr`` for ``ACCEPT``;
    ``addr`` is the source address of a ``POP`` on a datagram queue.

    ``QResult(opcode, qd, qt, ret=0, sga=None, new_qd=None, addr=None)``: a tuple of those
    seven fields with a namedtuple's interface (``_fields``, ``_replace``, ``_asdict``,
    ``_make``). Its fields are slots of its C base (queueapi/_fast.c: QResultBase), which
    CPython reads as cheaply as any slot.
    """

    __slots__ = ()
    opcode: Opcode
    qd: int
    qt: int
    ret: int
    sga: "SGArray | None"
    new_qd: "int | None"
    addr: Any

    _fields = ("opcode", "qd", "qt", "ret", "sga", "new_qd", "addr")
    _field_defaults = {"ret": 0, "sga": None, "new_qd": None, "addr": None}
    __match_args__ = _fields

    def __repr__(self) -> str:
        return "QResult(" + ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, self)) + ")"

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> "QResult":
        values = tuple(iterable)
        if len(values) != len(cls._fields):
            raise TypeError(f"Expected {len(cls._fields)} arguments, got {len(values)}")
        return cls(*values)

    def _replace(self, **changes: Any) -> "QResult":
        values = [changes.pop(n, v) for n, v in zip(self._fields, self)]
        if changes:
            raise ValueError(f"Got unexpected field names: {list(changes)!r}")
        return type(self)(*values)

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self))


class SGArray(_SGArrayBase):
    """A scatter-gather array: an ordered tuple of memoryview segments plus an address.

    ``len(sga)`` is the total number of bytes. Segments popped from a library OS may be views
    into its memory; they stay valid until ``free()``. Freeing twice raises ``OSError(EINVAL)``.
    A pushed sga may be freed before its push completes: the push keeps its own reference to
    the memory (free protection).
    """

    # _bufs, _views, addr, _freed, _release, len(), tobytes() and free() are in C
    # (queueapi/_fast.c: SGArrayBase); the rest is here
    __slots__ = ("__weakref__",)

    def __init__(self, segments: Sequence[Any] = (), addr: Any = None,
                 release: Any = None) -> None:
        # ``segments`` may be bytes-like objects of any kind; views are made when asked for
        self._bufs: tuple[Any, ...] = tuple(segments)
        self._views: tuple[memoryview, ...] | None = None
        self.addr = addr
        self._freed = False
        self._release = release  # called once by free(): returns libOS memory to its pool

    @classmethod
    def from_bytes(cls, data: Any, addr: Any = None) -> "SGArray":
        """One-segment sga over ``data`` (no copy)."""
        return cls((data,), addr)

    @property
    def segments(self) -> tuple[memoryview, ...]:
        if self._freed:
            raise ValueError("this SGArray has been freed")
        v = self._views
        if v is None:
            v = self._views = tuple(b if type(b) is memoryview else memoryview(b)
                                    for b in self._bufs)
        return v

    @property
    def freed(self) -> bool:
        return self._freed

    def __enter__(self) -> "SGArray":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._freed:
            self.free()

    def __repr__(self) -> str:
        if self._freed:
            return "<SGArray freed>"
        return f"<SGArray {len(self._bufs)} segment(s), {len(self)} bytes, addr={self.addr!r}>"


Data = Union[SGArray, bytes, bytearray, memoryview, Sequence[Union[bytes, bytearray, memoryview]]]


def as_segments(data: Any) -> tuple[Any, ...]:
    """Normalise pushable data to a tuple of bytes-like segments.

    Accepts an ``SGArray``, a bytes-like object, or a sequence of bytes-like objects.
    Raises ``TypeError`` for other types, ``OSError(EINVAL)`` for a freed sga or an empty element.
    """
    tp = type(data)
    if tp is bytes or tp is bytearray or tp is memoryview:
        if not data:
            raise OSError(errno.EINVAL, "cannot push an empty element")
        return (data,)
    if tp is SGArray:
        if data._freed:
            raise OSError(errno.EINVAL, "cannot push a freed SGArray")
        segs = data._bufs
    elif isinstance(data, (list, tuple)):
        segs = tuple(data)
        for s in segs:
            if not isinstance(s, (bytes, bytearray, memoryview)):
                raise TypeError(f"a segment must be bytes-like, not {type(s).__name__}")
    elif isinstance(data, (bytes, bytearray, memoryview)):
        segs = (data,)
    else:
        raise TypeError(
            f"push needs an SGArray, a bytes-like object or a sequence of them, not {tp.__name__}")
    if not segs or not any(len(s) for s in segs):
        raise OSError(errno.EINVAL, "cannot push an empty element")
    return segs


def total_len(segs: Iterable[Any]) -> int:
    """Total byte length of bytes-like segments."""
    return sum(memoryview(s).nbytes if not isinstance(s, bytes) else len(s) for s in segs)


# Constructors for the data path (positional arguments: QResultBase's __new__ parses them in C).
PUSH, POP, ACCEPT, CONNECT, CLOSE, FAILED = (Opcode.PUSH, Opcode.POP, Opcode.ACCEPT,
                                            Opcode.CONNECT, Opcode.CLOSE, Opcode.FAILED)


def pushed(qd: int, qt: int) -> QResult:
    """The ``PUSH`` result of token ``qt`` on ``qd``."""
    return QResult(PUSH, qd, qt, 0, None, None, None)


def popped(qd: int, qt: int, data: Any, addr: Any = None) -> QResult:
    """The ``POP`` result carrying one segment ``data`` (bytes-like; empty = end of stream)."""
    sga = SGArray.__new__(SGArray)
    sga._bufs = (data,)
    sga._views = None
    sga.addr = addr
    sga._freed = False
    sga._release = None
    return QResult(POP, qd, qt, 0, sga, None, addr)


def popped_sga(qd: int, qt: int, sga: SGArray, addr: Any = None) -> QResult:
    return QResult(POP, qd, qt, 0, sga, None, addr)


def failed_result(qd: int, qt: int, code: int) -> QResult:
    return QResult(FAILED, qd, qt, code, None, None, None)
