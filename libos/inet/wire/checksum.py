"""The Internet checksum (RFC 1071), fast in pure Python.

The ones'-complement sum of the 16-bit big-endian words of a byte stream is
congruent to the stream read as one big-endian integer modulo 0xFFFF, because
2**16 == 1 (mod 0xFFFF).  So one ``int.from_bytes`` and one ``%`` by a
single-digit divisor replace a per-word Python loop (about 3.3 us per 1500 B on
the reference VM, against ~15 us for ``sum(memoryview.cast('H'))``).

The only ambiguity of the modular form is 0 versus 0xFFFF (the two zeros of
ones'-complement arithmetic): a true ones'-complement sum is 0 only when every
word is 0, so a zero remainder of non-zero data is reported as 0xFFFF.

Signatures are kept small and C-friendly so this module can later be replaced
by a C implementation without touching callers:

* ``checksum(*buffers, initial=0) -> int``: the value to put in a header field,
  or, over data that includes its checksum field, 0 when the data is intact.
* ``ones_sum(*buffers, initial=0) -> int``: the folded sum, for composing.
* ``pseudo_header_sum(src, dst, proto, length) -> int``: the IPv4
  pseudo-header's sum, to pass as ``initial`` for UDP and TCP.

Buffers are concatenated logically (RFC 1071 semantics): a buffer of odd
length shifts the alignment of the next one, and a final odd byte is padded
with a zero byte.
"""

from __future__ import annotations

from .errors import ReadableBuffer

__all__ = ["checksum", "ones_sum", "pseudo_header_sum", "fold"]

_MOD = 0xFFFF


def fold(value: int) -> int:
    """Fold a non-negative integer to 16 bits with end-around carry.

    Zero stays zero; any other value becomes a number in 1..0xFFFF with the
    same residue modulo 0xFFFF.
    """
    if value <= _MOD:
        return value
    rem = value % _MOD
    return rem if rem else _MOD


def ones_sum(*buffers: ReadableBuffer, initial: int = 0) -> int:
    """Return the 16-bit ones'-complement sum of the concatenated buffers.

    ``initial`` is a previous sum (any non-negative int, e.g. from
    :func:`pseudo_header_sum` or another ``ones_sum``) covering an
    even-length prefix of the stream.  The result is in 0..0xFFFF and is 0
    only if ``initial`` and every byte are 0.
    """
    if len(buffers) == 1:
        data = buffers[0]
        total = int.from_bytes(data, "big")
        if len(data) & 1:
            total <<= 8
        total += initial
    else:
        # Left to right: an odd-length buffer shifts everything before it by
        # one byte, i.e. multiplies it by 256 (mod 0xFFFF).  Reduce as we go
        # and remember separately whether any byte was non-zero.
        total = initial
        nonzero = initial != 0
        odd = 0
        for data in buffers:
            n = int.from_bytes(data, "big")
            if len(data) & 1:
                total = (total << 8) + n
                odd ^= 1
            else:
                total += n
            if n:
                nonzero = True
            total %= _MOD
        if odd:
            total <<= 8
        total %= _MOD
        if total == 0 and nonzero:
            return _MOD
        return total
    if total <= _MOD:
        return total
    rem = total % _MOD
    return rem if rem else _MOD


def checksum(*buffers: ReadableBuffer, initial: int = 0) -> int:
    """Return the Internet checksum (complement of :func:`ones_sum`).

    To fill a header: zero the checksum field, then store the result.
    To verify: run it over the data including the stored field (and the same
    ``initial``); intact data yields 0.
    """
    if len(buffers) == 1:  # the hot path, inlined: one conversion, one division
        data = buffers[0]
        total = int.from_bytes(data, "big")
        if len(data) & 1:
            total <<= 8
        total += initial
        if total > _MOD:
            total %= _MOD
            if total == 0:  # non-zero data summing to ones'-complement zero
                return 0
        return ~total & 0xFFFF
    return ~ones_sum(*buffers, initial=initial) & 0xFFFF


def pseudo_header_sum(src: int | bytes, dst: int | bytes, proto: int, length: int) -> int:
    """Return the folded sum of the IPv4 pseudo-header (RFC 768 / RFC 9293).

    ``src``/``dst`` are IPv4 addresses as ints (``Ipv4Address`` is an int) or
    4 raw bytes; ``proto`` the IP protocol number; ``length`` the UDP/TCP
    length in bytes (header + payload).  Pass the result as ``initial``.
    """
    if not isinstance(src, int):
        src = int.from_bytes(src, "big")
    if not isinstance(dst, int):
        dst = int.from_bytes(dst, "big")
    return fold((src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length)
