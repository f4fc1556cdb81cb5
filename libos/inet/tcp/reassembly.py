"""Out-of-order reassembly for the receive side of a connection.

Positions are *unwrapped* sequence numbers (plain, ever-growing ints; the
connection converts wire values with :func:`libos.inet.wire.seq_sub`), so the
ranges compare and sort like ordinary integers.

The queue keeps disjoint, non-adjacent byte ranges sorted by start, each as
one bytearray.  Adding a segment merges it with every range it overlaps or
touches in one step (the usual case, the next segment after a range, is an
in-place append).  Where a new segment overlaps stored bytes, the new bytes
win; honest peers resend identical bytes, so the choice only matters for
hostile ones.  The number of ranges is bounded: when a segment would create
one range too many, the highest range is evicted, or the segment dropped if
it lies above all of them (the peer retransmits it).  The number of bytes is
bounded by the connection, which only stores data inside its window.

It also remembers which ranges changed most recently, to order SACK blocks
as RFC 2018 4 asks (the block holding the latest segment first).
"""

from __future__ import annotations

from bisect import bisect_right

from libos.inet.wire.errors import ReadableBuffer

__all__ = ["OutOfOrderQueue"]

_RECENT = 8


class OutOfOrderQueue:
    """Sorted, disjoint ranges of received bytes above the next expected one."""

    __slots__ = ("_starts", "_blocks", "_recent", "max_blocks", "dropped_segments")

    def __init__(self, max_blocks: int = 64) -> None:
        self._starts: list[int] = []
        self._blocks: list[bytearray] = []
        self._recent: list[int] = []
        self.max_blocks = max_blocks
        self.dropped_segments = 0

    def __len__(self) -> int:
        """The number of separate ranges."""
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(map(len, self._blocks))

    def ranges(self) -> list[tuple[int, int]]:
        """The ``(start, end)`` of every range, ascending (end is exclusive)."""
        return [(s, s + len(b)) for s, b in zip(self._starts, self._blocks)]

    def add(self, start: int, data: ReadableBuffer) -> bool:
        """Store ``data`` at ``start``; return False if it was dropped or held nothing new."""
        n = len(data)
        if not n:
            return False
        end = start + n
        starts = self._starts
        blocks = self._blocks
        i = bisect_right(starts, start) - 1
        lo = i if i >= 0 and starts[i] + len(blocks[i]) >= start else i + 1
        hi = bisect_right(starts, end) - 1
        if lo > hi:  # touches nothing: a new range at index lo
            if len(starts) >= self.max_blocks:
                if lo >= len(starts):
                    self.dropped_segments += 1
                    return False
                starts.pop()
                blocks.pop()
            starts.insert(lo, start)
            blocks.insert(lo, bytearray(data))
            self._touch(start)
            return True
        first_start = starts[lo]
        hi_start = starts[hi]
        last_end = hi_start + len(blocks[hi])
        if lo == hi and first_start <= start and end <= last_end:
            self._touch(start)  # a duplicate: nothing new
            return False
        tail = blocks[hi][end - hi_start:] if last_end > end else None
        if first_start <= start:
            merged = blocks[lo]
            del merged[start - first_start:]
            merged += data
            new_start = first_start
        else:
            merged = bytearray(data)
            new_start = start
        if tail is not None:
            merged += tail
        starts[lo:hi + 1] = [new_start]
        blocks[lo:hi + 1] = [merged]
        self._touch(start)
        return True

    def pop_ready(self, next_seq: int) -> ReadableBuffer | None:
        """Remove and return the bytes from ``next_seq`` on, if the first range reaches it.

        Ranges wholly below ``next_seq`` are discarded on the way.
        """
        starts = self._starts
        while starts and starts[0] <= next_seq:
            start = starts.pop(0)
            block = self._blocks.pop(0)
            if start + len(block) > next_seq:
                return block if start == next_seq else memoryview(block)[next_seq - start:]
        return None

    def clear(self) -> None:
        """Drop everything."""
        self._starts.clear()
        self._blocks.clear()
        self._recent.clear()

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ranges for SACK: most recently changed first, then ascending."""
        starts = self._starts
        blocks = self._blocks
        chosen: list[int] = []
        for pos in self._recent:
            i = bisect_right(starts, pos) - 1
            if i >= 0 and pos < starts[i] + len(blocks[i]) and i not in chosen:
                chosen.append(i)
                if len(chosen) == limit:
                    break
        if len(chosen) < limit:
            for i in range(len(starts)):
                if i not in chosen:
                    chosen.append(i)
                    if len(chosen) == limit:
                        break
        return [(starts[i], starts[i] + len(blocks[i])) for i in chosen]

    def _touch(self, pos: int) -> None:
        recent = self._recent
        recent.insert(0, pos)
        if len(recent) > _RECENT:
            recent.pop()
