"""32-bit TCP sequence-number arithmetic (serial-number arithmetic, RFC 1982).

Sequence numbers are plain ints in 0..2**32-1.  Comparisons are defined by
the signed distance modulo 2**32: ``a`` is before ``b`` when ``b - a`` (mod
2**32) is in 1..2**31-1.  Two numbers exactly 2**31 apart are unordered, as
RFC 1982 leaves them undefined: neither ``seq_lt(a, b)`` nor ``seq_lt(b, a)``
holds, and ``seq_sub`` returns -2**31.  TCP keeps windows far below 2**31, so
valid comparisons never meet that case.
"""

from __future__ import annotations

__all__ = [
    "SEQ_MOD",
    "SEQ_MASK",
    "seq_add",
    "seq_sub",
    "seq_lt",
    "seq_le",
    "seq_gt",
    "seq_ge",
    "seq_max",
    "seq_min",
    "seq_in_window",
]

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
_HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32 (``n`` may be negative)."""
    return (a + n) & SEQ_MASK


def seq_sub(a: int, b: int) -> int:
    """The signed distance ``a - b`` in -2**31..2**31-1 (positive when ``a`` is after ``b``)."""
    return ((a - b + _HALF) & SEQ_MASK) - _HALF


def seq_lt(a: int, b: int) -> bool:
    """``a`` comes strictly before ``b``."""
    return 0 < ((b - a) & SEQ_MASK) < _HALF


def seq_le(a: int, b: int) -> bool:
    """``a`` equals ``b`` or comes before it."""
    return ((b - a) & SEQ_MASK) < _HALF


def seq_gt(a: int, b: int) -> bool:
    """``a`` comes strictly after ``b``."""
    return 0 < ((a - b) & SEQ_MASK) < _HALF


def seq_ge(a: int, b: int) -> bool:
    """``a`` equals ``b`` or comes after it."""
    return ((a - b) & SEQ_MASK) < _HALF


def seq_max(a: int, b: int) -> int:
    """The later of ``a`` and ``b``."""
    return b if seq_lt(a, b) else a


def seq_min(a: int, b: int) -> int:
    """The earlier of ``a`` and ``b``."""
    return a if seq_lt(a, b) else b


def seq_in_window(x: int, start: int, size: int) -> bool:
    """``start <= x < start + size`` in sequence space (``size`` in 0..2**31)."""
    return ((x - start) & SEQ_MASK) < size
