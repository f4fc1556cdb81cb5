"""A single-producer single-consumer ring of variable-size elements in shared memory.

This is the data path of the ``shm`` library OS.  The ring lives in a memfd
that one process creates (:meth:`Ring.create`) and hands to its peer (over
``SCM_RIGHTS`` or by ``fork``); the peer maps it with :meth:`Ring.attach`.
One process pushes, the other pops; a full duplex channel is two rings.

Elements are sequences of segments; one push pops out as exactly one element
with the same segment boundaries.  Popped segments are zero-copy, read-only
``memoryview`` slices of the shared mapping, valid until :meth:`Ring.release`
(:meth:`Ring.try_pop`, :meth:`Ring.pop_wait`, or many at once with
:meth:`Ring.try_pop_many`).
A producer can also write straight into the ring with :meth:`Ring.reserve`
and :meth:`Ring.commit` (this is how ``sgaalloc`` memory inside the ring
works).

The native part is ``ring.c`` (built by cffi as ``libos.shm._ring``): it
bounds-checks everything it reads from the shared mapping, because the peer
may write anything there; a state that does not make sense raises
:class:`RingCorruptedError` (``EBADMSG``) and never touches memory outside
the mapping.  Payload bytes under a zero-copy view remain writable by the
peer; copy them (:meth:`Ring.pop_copy`) before validating them if the peer is
not trusted.

Waiting spins for a bounded time (:attr:`Ring.spin_ns`), then sleeps on a
futex in the shared mapping; a push or release wakes the other side with a
system call only when that side announced that it is asleep.  Waits release
the GIL and return to Python at least every 50 ms, so signal handlers and
``KeyboardInterrupt`` run promptly.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import time
from collections.abc import Sequence
from typing import Any, Union

from libos.shm._ring import ffi, lib

__all__ = [
    "Ring",
    "RingCorruptedError",
    "HEADER_SIZE",
    "MIN_CAPACITY",
    "MAX_CAPACITY",
    "MAX_SEGMENTS",
    "DEFAULT_SPIN_NS",
]

HEADER_SIZE: int = lib.RING_HDR_SIZE
"""Bytes of ring header before the data area in the mapping."""
MIN_CAPACITY: int = lib.RING_MIN_CAP
MAX_CAPACITY: int = lib.RING_MAX_CAP
MAX_SEGMENTS: int = lib.RING_MAX_SEGS
"""Most segments one element may have."""
DEFAULT_SPIN_NS: int = 20_000
"""How long a wait spins before it sleeps, unless told otherwise (20 µs)."""

_SLICE_NS = 50_000_000  # longest time spent in C without returning to Python
_SLICE_S = _SLICE_NS / 1e9
_REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

BytesLike = Union[bytes, bytearray, memoryview, Any]

# Bound once: the hot paths avoid attribute lookups on `lib`.
_push1 = lib.ring_push1
_reserve = lib.ring_reserve
_commit = lib.ring_commit
_commit1 = lib.ring_commit1
_peek_packed = lib.ring_peek_packed
_peek_many = lib.ring_peek_many
_release = lib.ring_release
_wait_readable = lib.ring_wait_readable
_wait_writable = lib.ring_wait_writable
_wait_peek = lib.ring_wait_peek
_from_buffer = ffi.from_buffer
_unpack = ffi.unpack
_monotonic_ns = time.monotonic_ns
_EAGAIN = errno.EAGAIN
_ETIMEDOUT = errno.ETIMEDOUT
_EINTR = errno.EINTR
# Packed element descriptor from ring_peek_packed / ring_peek_many: payload
# offset in bits 0..30, length in bits 31..61, bit 62 = "not one segment".
_OFF_MASK = (1 << 31) - 1
_MULTI = 1 << 62
_DESC_WORDS = 4 * MAX_SEGMENTS  # descriptor buffer of try_pop_many


class RingCorruptedError(OSError):
    """The shared ring state is inconsistent (errno ``EBADMSG``).

    The peer wrote something that no correct producer/consumer writes; the
    ring cannot be used any further and the connection should be dropped.
    """

    def __init__(self, message: str = "shared-memory ring is corrupt") -> None:
        super().__init__(errno.EBADMSG, message)


def _error(rc: int, what: str) -> Exception:
    """Map a negative errno from ring.c to the exception Python code expects."""
    code = -rc
    if code == errno.EBADMSG:
        return RingCorruptedError(f"{what}: shared-memory ring is corrupt")
    if code == errno.EBADF:
        return ValueError(f"{what}: the ring is closed")
    if code == errno.EPIPE:
        return BrokenPipeError(errno.EPIPE, f"{what}: the ring is closed for writing")
    if code == errno.EMSGSIZE:
        return OSError(errno.EMSGSIZE, f"{what}: element can never fit in this ring")
    if code == errno.EINVAL:
        return ValueError(f"{what}: invalid argument")
    return OSError(code, f"{what}: {os.strerror(code)}")


def _flat(segment: BytesLike) -> memoryview:
    """A one-dimensional unsigned-byte view of a bytes-like object."""
    m = memoryview(segment)
    if m.format == "B" and m.ndim == 1:
        return m
    if m.c_contiguous:
        return m.cast("B")
    return memoryview(m.tobytes())


def _round_capacity(capacity: int) -> int:
    if capacity > MAX_CAPACITY:
        raise ValueError(f"capacity {capacity} exceeds the maximum {MAX_CAPACITY}")
    cap = MIN_CAPACITY
    while cap < capacity:
        cap <<= 1
    return cap


class Ring:
    """One end (or both ends, in tests) of a shared-memory SPSC ring.

    Contract: at most one process/thread pushes and at most one pops at a
    time; the object itself is not locked.  After ``os.fork`` both processes
    hold a working handle on the same ring and must agree on who pushes and
    who pops.
    """

    __slots__ = ("_mm", "_mem", "_r", "_view", "_wview", "_descs", "capacity", "spin_ns", "__weakref__")

    def __init__(self, mm: mmap.mmap, *, create: bool) -> None:
        """Wrap a writable mapping: initialise a ring in it (``create=True``)
        or validate the one it holds.  Prefer :meth:`create` / :meth:`attach`,
        which also set up and check the memfd (this does not check seals)."""
        self._mm = mm
        self._mem = _from_buffer(mm)
        self._r = ffi.new("ring_t *")
        rc = (lib.ring_init if create else lib.ring_attach)(self._r, self._mem, len(mm))
        if rc != 0:
            ffi.release(self._mem)
            raise _error(rc, "create" if create else "attach")
        self.capacity: int = lib.ring_capacity(self._r)
        data = memoryview(mm)[HEADER_SIZE:HEADER_SIZE + self.capacity]
        self._wview = data
        self._view = data.toreadonly()
        self._descs = ffi.new("uint64_t[]", _DESC_WORDS)
        self.spin_ns: int = DEFAULT_SPIN_NS

    # ------------------------------------------------------------------
    # setup

    @classmethod
    def create(cls, capacity: int = 1 << 20, name: str = "pydemikernel-ring") -> tuple["Ring", int]:
        """Create a ring of at least ``capacity`` data bytes (rounded up to a
        power of two, 4 KiB .. 1 GiB) in a new sealed memfd.

        Returns ``(ring, fd)``.  The fd (mode 0600, close-on-exec, sealed
        against shrinking and growing) is the caller's: pass it to the peer,
        then close it; the mapping stays valid without it.
        """
        cap = _round_capacity(capacity)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, HEADER_SIZE + cap)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _REQUIRED_SEALS)
            mm = mmap.mmap(fd, HEADER_SIZE + cap, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            return cls(mm, create=True), fd
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> "Ring":
        """Map the ring in ``fd`` (a memfd from :meth:`create`, maybe made by
        an untrusted peer).

        Refuses (``ValueError`` / :class:`RingCorruptedError`) anything that
        is not a memfd sealed against shrinking -- a peer that could truncate
        the file could make every access to the mapping raise SIGBUS -- or
        whose header is not a valid ring.  Does not take ownership of fd.
        """
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("ring fd is not a memfd")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise ValueError("ring fd is not a memfd (no seals)") from exc
        if seals & _REQUIRED_SEALS != _REQUIRED_SEALS:
            raise ValueError("ring memfd is not sealed against resizing")
        size = min(st.st_size, HEADER_SIZE + MAX_CAPACITY)
        if size < HEADER_SIZE + MIN_CAPACITY:
            raise RingCorruptedError("ring memfd is too small")
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            return cls(mm, create=False)
        except BaseException:
            mm.close()
            raise

    def close(self) -> None:
        """Detach from the ring and unmap it once no popped view is alive.

        Does not signal the peer: call :meth:`close_producer` or
        :meth:`close_consumer` first.  Idempotent.
        """
        if self._mem is None:
            return
        lib.ring_detach(self._r)
        self._view.release()
        self._wview.release()
        ffi.release(self._mem)
        self._mem = None
        try:
            self._mm.close()
        except BufferError:
            pass  # views handed out are alive: unmapped when the last one dies

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------
    # producer

    def push(self, data: BytesLike | Sequence[BytesLike]) -> int:
        """Copy one element into the ring and publish it.

        ``data`` is a bytes-like object (one segment) or a sequence of them
        (one segment each).  Returns 0, or ``errno.EAGAIN`` if the ring is
        too full right now (nothing was written; wait with
        :meth:`wait_writable`).  Raises ``OSError(EMSGSIZE)`` if the element
        can never fit, ``BrokenPipeError`` once either side closed,
        :class:`RingCorruptedError`, or ``ValueError`` on a closed ring /
        more than :data:`MAX_SEGMENTS` segments.
        """
        t = type(data)
        if t is bytes:
            rc = _push1(self._r, data, len(data))
        elif t is memoryview and data.c_contiguous:
            rc = _push1(self._r, _from_buffer(data), data.nbytes)
        else:
            rc = self._push_other(data)
        if rc == 0:
            return 0
        if rc == -_EAGAIN:
            return _EAGAIN
        raise _error(rc, "push")

    def _push_other(self, data: Any) -> int:
        try:
            m = memoryview(data)
        except TypeError:
            segments = list(data)
        else:
            return self._push_one_view(m)
        if len(segments) == 1:
            seg = segments[0]
            if type(seg) is bytes:
                return _push1(self._r, seg, len(seg))
            return self._push_one_view(memoryview(seg))
        views = [_flat(s) for s in segments]
        lens = [v.nbytes for v in views]
        n = len(views)
        if n > MAX_SEGMENTS:
            return -errno.EINVAL
        off = _reserve(self._r, sum(lens), n)
        if off < 0:
            return off
        w = self._wview
        for v, ln in zip(views, lens):
            w[off:off + ln] = v
            off += ln
        return _commit(self._r, lens, n)

    def _push_one_view(self, m: memoryview) -> int:
        if not m.c_contiguous:
            m = memoryview(m.tobytes())
        return _push1(self._r, _from_buffer(m), m.nbytes)

    def reserve(self, size: int, nsegs: int = 1) -> memoryview | None:
        """Reserve room for one element of ``size`` payload bytes in
        ``nsegs`` segments and return a writable view of the payload area
        (segments go back to back), or None if the ring is too full now.

        Write the payload, then :meth:`commit` (or :meth:`cancel`).  The view
        must not be written after the commit.  Raises like :meth:`push`.
        """
        off = _reserve(self._r, size, nsegs)
        if off >= 0:
            return self._wview[off:off + size]
        if off == -_EAGAIN:
            return None
        raise _error(off, "reserve")

    def commit(self, lengths: int | Sequence[int]) -> None:
        """Publish the reserved element; ``lengths`` are the segment lengths
        (an int for a single segment), as many as reserved, summing to at most
        the reserved size.  ``ValueError`` on a mismatch or no reservation."""
        if type(lengths) is int:
            rc = _commit1(self._r, lengths)
        else:
            lens = list(lengths)
            rc = _commit(self._r, lens, len(lens))
        if rc != 0:
            raise _error(rc, "commit")

    def cancel(self) -> None:
        """Drop an uncommitted reservation."""
        lib.ring_cancel(self._r)

    def close_producer(self) -> None:
        """End of stream: the consumer pops what is left, then sees EOF."""
        lib.ring_close_producer(self._r)

    # ------------------------------------------------------------------
    # consumer

    def try_pop(self) -> list[memoryview] | None:
        """The next element as zero-copy read-only views, one per segment,
        or None if the ring is empty.

        The views stay valid until :meth:`release`, which must be called
        before the next element is popped (popping again without releasing
        returns the same element).  Raises ``EOFError`` once the producer
        closed and everything was popped, :class:`RingCorruptedError`, or
        ``ValueError`` on a closed ring.
        """
        v = _peek_packed(self._r)
        if v >= 0:
            if v < _MULTI:
                off = v & _OFF_MASK
                return [self._view[off:off + (v >> 31)]]
            return self._segments(v & _OFF_MASK)
        if v == -_EAGAIN:
            return None
        return self._pop_failed(v)

    def pop_wait(self, timeout: float | None = None, spin_ns: int | None = None) -> list[memoryview] | None:
        """Blocking :meth:`try_pop`: wait up to ``timeout`` seconds (None: no
        limit, 0: poll) for an element, spinning ``spin_ns`` (default
        :attr:`spin_ns`) first.  Returns the views (release them with
        :meth:`release`) or None on timeout; raises like :meth:`try_pop`.

        One C call when an element is there or arrives within 50 ms.  A
        signal that interrupts the first 50 ms may extend the wait by that
        much."""
        spin = self.spin_ns if spin_ns is None else spin_ns
        if timeout is None or timeout >= _SLICE_S:
            v = _wait_peek(self._r, spin, _SLICE_NS)
            if v >= 0:
                if v < _MULTI:
                    off = v & _OFF_MASK
                    return [self._view[off:off + (v >> 31)]]
                return self._segments(v & _OFF_MASK)
            if v != -_ETIMEDOUT and v != -_EINTR and v != -_EAGAIN:
                return self._pop_failed(v)
            if timeout is not None:
                # A timed-out slice lasted 50 ms; an interrupted one, less.
                timeout -= _SLICE_S if v == -_ETIMEDOUT else 0.0
            spin = 0
        return self._pop_wait_slow(timeout, spin)

    def _pop_wait_slow(self, timeout: float | None, spin: int) -> list[memoryview] | None:
        r = self._r
        if timeout is None:
            deadline = None
            slice_ns = _SLICE_NS
        else:
            t = int(timeout * 1e9) if timeout > 0 else 0
            deadline = _monotonic_ns() + t
            slice_ns = t if t < _SLICE_NS else _SLICE_NS
        while True:
            v = _wait_peek(r, spin, slice_ns)
            if v >= 0:
                if v < _MULTI:
                    off = v & _OFF_MASK
                    return [self._view[off:off + (v >> 31)]]
                return self._segments(v & _OFF_MASK)
            if v != -_ETIMEDOUT and v != -_EINTR and v != -_EAGAIN:
                return self._pop_failed(v)
            if deadline is not None:
                slice_ns = deadline - _monotonic_ns()
                if slice_ns <= 0:
                    return None
                if slice_ns > _SLICE_NS:
                    slice_ns = _SLICE_NS
            spin = 0  # spin once per call; later slices only sleep
            # Back in the eval loop here: pending signal handlers run now.

    @staticmethod
    def _pop_failed(v: int) -> None:
        if v == -errno.EPIPE:
            raise EOFError("the producer closed the ring")
        raise _error(v, "pop")

    def try_pop_many(self, max_elements: int = 256) -> list[list[memoryview]]:
        """Up to ``max_elements`` next elements at once (zero-copy views, as
        :meth:`try_pop`); ``[]`` if the ring is empty.  One :meth:`release`
        consumes all of them.  Cheaper per element than :meth:`try_pop` when
        elements queue up.  Raises like :meth:`try_pop` when it cannot return
        even one element (a corrupt record after the first ends the batch
        and is reported by the next call)."""
        words = _peek_many(self._r, self._descs, _DESC_WORDS, max_elements)
        if words <= 0:
            if words == -_EAGAIN:
                return []
            return self._pop_failed(words)
        d = _unpack(self._descs, words)
        view = self._view
        out = []
        append = out.append
        i = 0
        while i < words:
            v = d[i]
            i += 1
            off = v & _OFF_MASK
            if v < _MULTI:
                append([view[off:off + (v >> 31)]])
                continue
            n = d[i]
            segs = []
            for ln in d[i + 1:i + 1 + n]:
                segs.append(view[off:off + ln])
                off += ln
            append(segs)
            i += 1 + n
        return out

    def _segments(self, off: int) -> list[memoryview]:
        r = self._r
        lens = r.peek_lens
        view = self._view
        out = []
        for i in range(r.peek_nsegs):
            ln = lens[i]
            out.append(view[off:off + ln])
            off += ln
        return out

    def release(self) -> None:
        """Consume the element returned by the last :meth:`try_pop`; its
        memory may be overwritten by the producer from now on."""
        rc = _release(self._r)
        if rc != 0:
            if rc == -errno.EINVAL:
                raise ValueError("release: no element was popped")
            raise _error(rc, "release")

    def pop_copy(self) -> list[bytes] | None:
        """Like :meth:`try_pop` followed by :meth:`release`, returning copies."""
        views = self.try_pop()
        if views is None:
            return None
        out = [v.tobytes() for v in views]
        _release(self._r)
        return out

    # ------------------------------------------------------------------
    # doorbell sleeping: a process that waits on many rings sleeps in its own epoll on an
    # eventfd, and the peer rings it when it sees the announcement

    def doze_readable(self) -> bool:
        """Announce that the consumer sleeps outside the ring. False if the ring is readable
        already (announcement withdrawn: do not sleep)."""
        return lib.ring_doze_readable(self._r) == 0

    def doze_writable(self, size: int, nsegs: int = 1) -> bool:
        """Announce that the producer sleeps until ``size`` bytes in ``nsegs`` segments fit.
        False if they fit already (do not sleep)."""
        rc = lib.ring_doze_writable(self._r, size, nsegs)
        if rc < 0:
            raise _error(rc, "doze_writable")
        return rc == 0

    def wake_up(self, producer: bool = False) -> None:
        """Withdraw this side's doze announcement after waking."""
        lib.ring_wake_up(self._r, 1 if producer else 0)

    def readable(self) -> bool:
        """An element, end of stream or corruption is waiting (a cheap spin check)."""
        return bool(lib.ring_readable(self._r))

    def take_doorbell(self) -> bool:
        """True (once) if the last operation found the peer dozing: ring its eventfd."""
        r = self._r
        if r.doorbell:
            r.doorbell = 0
            return True
        return False

    def close_consumer(self) -> None:
        """Tell the producer nobody will pop any more (its pushes fail EPIPE)."""
        lib.ring_close_consumer(self._r)

    # ------------------------------------------------------------------
    # waiting

    def wait_readable(self, timeout: float | None = None, spin_ns: int | None = None) -> bool:
        """Wait until :meth:`try_pop` has something to say (an element, EOF
        or corruption).  Returns True then, False after ``timeout`` seconds
        (None: no limit, 0: poll).  Spins ``spin_ns`` (default
        :attr:`spin_ns`) first, then sleeps without using CPU."""
        return self._wait(_wait_readable, (), timeout, spin_ns)

    def wait_writable(self, timeout: float | None = None, size: int = 0, nsegs: int = 1,
                      spin_ns: int | None = None) -> bool:
        """Wait until an element of ``size`` bytes in ``nsegs`` segments can
        be pushed (or a push would fail for another reason than being full).
        Same timeout and spinning rules as :meth:`wait_readable`."""
        return self._wait(_wait_writable, (size, nsegs), timeout, spin_ns)

    def _wait(self, fn: Any, args: tuple[int, ...], timeout: float | None,
              spin_ns: int | None) -> bool:
        r = self._r
        spin = self.spin_ns if spin_ns is None else spin_ns
        if timeout is None:
            deadline = None
            slice_ns = _SLICE_NS
        else:
            t = int(timeout * 1e9) if timeout > 0 else 0
            deadline = _monotonic_ns() + t
            slice_ns = t if t < _SLICE_NS else _SLICE_NS
        while True:
            rc = fn(r, *args, spin, slice_ns)
            if rc == 0:
                return True
            if rc != -_ETIMEDOUT and rc != -_EINTR:
                raise _error(rc, "wait")
            if deadline is not None:
                slice_ns = deadline - _monotonic_ns()
                if slice_ns <= 0:
                    return False
                if slice_ns > _SLICE_NS:
                    slice_ns = _SLICE_NS
            spin = 0  # spin once per call; later slices only sleep
            # Back in the eval loop here: pending signal handlers run now.

    # ------------------------------------------------------------------
    # introspection

    def max_payload(self, nsegs: int = 1) -> int:
        """Largest element (payload bytes) with ``nsegs`` segments that fits."""
        n = lib.ring_max_payload(self._r, nsegs)
        if n < 0:
            if n == -errno.EMSGSIZE:
                return -1
            raise _error(n, "max_payload")
        return n

    @property
    def used(self) -> int:
        """Bytes in the ring now (records, headers and padding)."""
        n = lib.ring_used(self._r)
        if n < 0:
            raise _error(n, "used")
        return n

    @property
    def stats(self) -> dict[str, int]:
        """Counters of this handle (not of the peer): pushes, push_bytes, pops,
        pop_bytes, full (pushes refused), empty (empty polls), wakes (FUTEX_WAKE
        calls), sleeps (FUTEX_WAIT calls), corrupt, plus capacity."""
        s = self._r.st
        return {
            "pushes": s.pushes,
            "push_bytes": s.push_bytes,
            "pops": s.pops,
            "pop_bytes": s.pop_bytes,
            "full": s.full,
            "empty": s.empty,
            "wakes": s.wakes,
            "sleeps": s.sleeps,
            "corrupt": s.corrupt,
            "capacity": self.capacity,
        }
