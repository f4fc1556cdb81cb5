"""In-process queues and the combinators of API.md: ``queue``, ``merge``, ``filter``, ``sort``,
``map`` and ``qconnect``.

They work over any queue of any library OS, because they only use the parent's ``push`` and
``pop`` with internal ops whose completion runs a callback (see ``LibOS.complete``). Each
derived queue owns a real fd (an eventfd it holds) as its qd, so qds never collide with the
process's other fds.
"""
from __future__ import annotations

import errno
import heapq
import logging
import os
import socket as _socket
from collections import deque
from typing import Any, Callable

from libos.base import Op, Queue, failed, oserror
from queueapi.types import Opcode, QResult, SGArray, as_segments, popped, popped_sga, pushed

log = logging.getLogger("queueapi")

DEFAULT_CAPACITY = 64 * 1024 * 1024  # bytes buffered in a memory queue before pushes pend
DEFAULT_WINDOW = 1024  # elements a sort queue reads ahead
STEER_LIMIT = 4096  # elements buffered for the other side of a filter before reading pauses

_EMPTY = b""


def _reserve_qd() -> int:
    """A real fd owned by a derived queue, used as its qd."""
    return os.eventfd(0, os.EFD_CLOEXEC)


def _relay(core: Any, op: Op, r: QResult) -> None:
    """Complete user ``op`` with the result ``r`` of an internal op."""
    core.complete(op, r._replace(qd=op.qd, qt=op.qt))


def _eof(op: Op) -> QResult:
    return popped(op.qd, op.qt, _EMPTY)


def _is_data(r: QResult) -> bool:
    return r.opcode == Opcode.POP and len(r.sga) > 0


def _to_sga(value: Any, addr: Any = None) -> SGArray:
    """What a map function returned, as an sga (a copy is not made)."""
    if isinstance(value, SGArray):
        return value
    segs = as_segments(value)
    return SGArray(tuple(memoryview(s) for s in segs), addr)


class Derived(Queue):
    """A queue with its own qd (an eventfd) and no device."""

    def __init__(self, core: Any) -> None:
        super().__init__(core, _reserve_qd())
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise oserror(errno.EBADF, f"{self.kind} queue {self.qd} is closed")

    def _release_qd(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.qd)

    @staticmethod
    def _cancel(core: Any, ops: deque) -> None:
        while ops:
            op = ops.popleft()
            if isinstance(op, tuple):
                op = op[0]
            core.complete(op, failed(op, errno.ECANCELED))


class MemoryQueue(Derived):
    """An in-process FIFO of elements. Pops take whole elements (``size`` is ignored).

    At most ``capacity`` bytes are held (one element always fits); further pushes pend until
    pops make room (backpressure). ``shutdown(SHUT_WR)`` ends the stream after the elements
    held: later pops return end of stream.
    """

    kind = "memory"

    def __init__(self, core: Any, capacity: int = DEFAULT_CAPACITY) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"queue capacity must be an int, not {type(capacity).__name__}")
        if capacity <= 0:
            raise oserror(errno.EINVAL, f"queue capacity must be a positive int, got {capacity!r}")
        super().__init__(core)
        self.capacity = capacity
        self._items: deque[tuple[tuple[bytes, ...], int]] = deque()
        self._held = 0
        self._pops: deque[Op] = deque()
        self._blocked: deque[tuple[Op, tuple[bytes, ...], int]] = deque()
        self._eof = False

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check_open()
        if self._eof:
            raise oserror(errno.EPIPE, "push after shutdown of the write side")
        if len(segs) == 1:
            s0 = segs[0]
            if type(s0) is not bytes:
                segs = (bytes(s0),)
            n = len(segs[0])
        else:
            segs = tuple(s if type(s) is bytes else bytes(s) for s in segs)
            n = sum(map(len, segs))
        if self._blocked or (self._items and self._held + n > self.capacity):
            self._blocked.append((op, segs, n))
            return
        self._admit(segs, n)
        self.core.complete(op, pushed(op.qd, op.qt))

    def _admit(self, segs: tuple[bytes, ...], n: int) -> None:
        if self._pops:
            pop = self._pops.popleft()
            self.core.complete(pop, self._result(pop, segs))
        else:
            self._items.append((segs, n))
            self._held += n

    @staticmethod
    def _result(op: Op, segs: tuple[bytes, ...]) -> QResult:
        if len(segs) == 1:
            return popped(op.qd, op.qt, segs[0])
        return popped_sga(op.qd, op.qt, SGArray(segs))

    def pop(self, op: Op, size: int | None) -> None:
        self._check_open()
        if self._items:
            segs, n = self._items.popleft()
            self._held -= n
            self.core.complete(op, self._result(op, segs))
            self._unblock()
        elif self._eof:
            self.core.complete(op, _eof(op))
        else:
            self._pops.append(op)

    def _unblock(self) -> None:
        blocked = self._blocked
        while blocked and (not self._items or self._held + blocked[0][2] <= self.capacity):
            op, segs, n = blocked.popleft()
            self._admit(segs, n)
            self.core.complete(op, QResult(Opcode.PUSH, op.qd, op.qt))

    def cancel(self, op: Op) -> bool:
        try:
            self._pops.remove(op)
        except ValueError:
            return False
        return True

    def unpop(self, result: QResult) -> bool:
        if self.closed or not _is_data(result):
            return False
        segs = tuple(bytes(s) for s in result.sga._bufs)
        n = sum(map(len, segs))
        if self._pops:
            pop = self._pops.popleft()
            self.core.complete(pop, self._result(pop, segs))
        else:
            self._items.appendleft((segs, n))
            self._held += n
        return True

    def shutdown(self, how: int) -> None:
        self._check_open()
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise oserror(errno.EINVAL, f"bad shutdown mode {how!r}")
        if how == _socket.SHUT_RD:
            return
        self._eof = True
        if not self._items and not self._blocked:
            while self._pops:
                op = self._pops.popleft()
                self.core.complete(op, _eof(op))

    def close(self) -> None:
        self._cancel(self.core, self._pops)
        self._cancel(self.core, self._blocked)
        self._items.clear()
        self._release_qd()

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(held_elements=len(self._items), held_bytes=self._held, capacity=self.capacity)
        return s


class Merge(Derived):
    """Pops take from whichever parent completes first; pushes go to both parents.

    Reading is demand-driven: at most one internal pop per parent is outstanding, and results
    not yet asked for are kept in order (nothing is lost). The parent tried first alternates.
    End of stream comes once both parents have ended; a parent's failure is delivered once.
    """

    kind = "merge"

    def __init__(self, core: Any, a: Queue, b: Queue) -> None:
        super().__init__(core)
        self.parents = (a, b)
        self.element_preserving = a.element_preserving and b.element_preserving
        self._inflight: list[Op | None] = [None, None]
        self._ended = [False, False]
        self._ready: deque[tuple[int, QResult]] = deque()  # (parent index, result)
        self._pops: deque[Op] = deque()
        self._turn = 0
        self._callbacks = (lambda iop: self._on_pop(0, iop), lambda iop: self._on_pop(1, iop))

    def pop(self, op: Op, size: int | None) -> None:
        self._check_open()
        self._pops.append(op)
        self._serve()
        self._pump()

    def _pump(self) -> None:
        if self.closed or len(self._pops) <= len(self._ready):
            return
        first = self._turn
        self._turn ^= 1
        for i in (first, first ^ 1):
            if self._inflight[i] is None and not self._ended[i]:
                parent = self.parents[i]
                iop = self.core.new_op(parent.qd, self._callbacks[i])
                self._inflight[i] = iop
                try:
                    parent.pop(iop, None)
                except OSError as e:
                    self.core.complete(iop, failed(iop, e.errno or errno.EIO))

    def _on_pop(self, i: int, iop: Op) -> None:
        self._inflight[i] = None
        r = iop.result
        if self.closed:  # read after close: give it back
            if _is_data(r):
                self.parents[i].unpop(r)
            return
        if _is_data(r):
            self._ready.append((i, r))
        else:
            self._ended[i] = True
            if r.opcode == Opcode.FAILED and r.ret != errno.ECANCELED:
                self._ready.append((i, r))
        self._serve()
        self._pump()

    def _serve(self) -> None:
        while self._pops and self._ready:
            _relay(self.core, self._pops.popleft(), self._ready.popleft()[1])
        if self._ended[0] and self._ended[1] and not self._ready:
            while self._pops:
                op = self._pops.popleft()
                self.core.complete(op, _eof(op))

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check_open()
        state = {"left": 2, "err": 0}

        def done(iop: Op) -> None:
            r = iop.result
            if r.opcode == Opcode.FAILED and not state["err"]:
                state["err"] = r.ret
            state["left"] -= 1
            if state["left"] == 0:
                if state["err"]:
                    self.core.complete(op, failed(op, state["err"]))
                else:
                    self.core.complete(op, QResult(Opcode.PUSH, op.qd, op.qt))

        for parent in self.parents:
            iop = self.core.new_op(parent.qd, done)
            try:
                parent.push(iop, segs)
            except OSError as e:
                self.core.complete(iop, failed(iop, e.errno or errno.EIO))

    def close(self) -> None:
        """Pending pops fail ``ECANCELED``; what was read ahead goes back to its parent."""
        self._release_qd()
        self._cancel(self.core, self._pops)
        for i, iop in enumerate(self._inflight):
            if iop is not None and self.parents[i].cancel(iop):
                self._inflight[i] = None
        for i, r in reversed(self._ready):
            if _is_data(r):
                self.parents[i].unpop(r)
        self._ready.clear()


class _Side:
    """One consumer of a steered stream: the parent itself, or one filter."""

    __slots__ = ("pred", "ready", "pops", "queue")

    def __init__(self, pred: Callable[[SGArray], bool] | None, queue: Queue) -> None:
        self.pred = pred
        self.ready: deque[tuple[int, QResult]] = deque()
        self.pops: deque[Op] = deque()
        self.queue = queue


class Steering:
    """Splits a parent's stream between its filters and the parent's own pops.

    Installed on the parent queue by the first ``filter``: it takes over the parent's ``pop``.
    Each element read from the parent goes to the first filter whose predicate accepts it, or
    else stays with the parent, in order. Reading is demand-driven and pauses while more than
    ``STEER_LIMIT`` elements wait for a side nobody pops (bounded memory).
    """

    def __init__(self, core: Any, parent: Queue) -> None:
        self.core = core
        self.parent = parent
        self._source_pop = parent.pop
        self.parent_side = _Side(None, parent)
        self.filters: list[_Side] = []
        self._inflight: Op | None = None
        self._end: QResult | None = None
        self._seq = 0  # arrival number of the next element (kept with it in a side's ready)
        self.pred_errors = 0
        self._source_cancel = parent.cancel
        parent.pop = self._pop_parent  # type: ignore[method-assign]
        parent.cancel = self._cancel_parent  # type: ignore[method-assign]
        parent.unpop = lambda r: self.unpop(self.parent_side, r)  # type: ignore[method-assign]
        parent.steering = self  # type: ignore[attr-defined]

    def sides(self) -> list[_Side]:
        return [self.parent_side, *self.filters]

    def _pop_parent(self, op: Op, size: int | None) -> None:
        if getattr(self.parent, "closed", False):
            raise oserror(errno.EBADF, f"qd {self.parent.qd} is closed")
        self.pop(self.parent_side, op)

    def pop(self, side: _Side, op: Op) -> None:
        side.pops.append(op)
        self._serve(side)
        self._pump()

    def _cancel_parent(self, op: Op) -> bool:
        return self.cancel(self.parent_side, op)

    def cancel(self, side: _Side, op: Op) -> bool:
        try:
            side.pops.remove(op)
        except ValueError:
            return False
        return True

    def unpop(self, side: _Side, r: QResult) -> bool:
        side.ready.appendleft((-1, r))  # before everything that arrived
        self._serve(side)
        return True

    def _pump(self) -> None:
        if self._inflight is not None or self._end is not None:
            return
        sides = self.sides()
        if not any(s.pops and not s.ready for s in sides):
            return
        if sum(len(s.ready) for s in sides if not s.pops) > STEER_LIMIT:
            return
        iop = self.core.new_op(self.parent.qd, self._on_element)
        self._inflight = iop
        try:
            self._source_pop(iop, None)
        except OSError as e:
            self.core.complete(iop, failed(iop, e.errno or errno.EIO))

    def _on_element(self, iop: Op) -> None:
        self._inflight = None
        r = iop.result
        if _is_data(r):
            target = self.parent_side
            for side in self.filters:
                try:
                    ok = side.pred(r.sga)
                except Exception:  # a predicate error keeps the element on the parent
                    self.pred_errors += 1
                    log.exception("filter predicate raised; element stays on the parent")
                    ok = False
                if ok:
                    target = side
                    break
            target.ready.append((self._seq, r))
            self._seq += 1
        else:
            self._end = r
        for side in self.sides():
            self._serve(side)
        self._pump()

    def _serve(self, side: _Side) -> None:
        while side.pops and side.ready:
            _relay(self.core, side.pops.popleft(), side.ready.popleft()[1])
        if self._end is not None and not side.ready:
            while side.pops:
                _relay(self.core, side.pops.popleft(), self._end)

    def detach(self, side: _Side) -> None:
        """A filter closed: its unread elements go back to the parent, ahead of newer ones."""
        self.filters.remove(side)
        merged = heapq.merge(self.parent_side.ready, side.ready, key=lambda e: e[0])
        self.parent_side.ready = deque(merged)  # in the order they arrived
        side.ready.clear()
        Derived._cancel(self.core, side.pops)
        self._serve(self.parent_side)


class Filter(Derived):
    """Pops yield only the parent's elements with ``pred(sga)`` true (see ``Steering``).

    A push whose element fails ``pred`` is dropped, counted in ``stats()['dropped']``, and
    completes ``PUSH``; others are pushed to the parent.
    """

    kind = "filter"

    def __init__(self, core: Any, steering: Steering, pred: Callable[[SGArray], bool]) -> None:
        super().__init__(core)
        self.steering = steering
        self.pred = pred
        self.side = _Side(pred, self)
        self.dropped = 0
        self.element_preserving = steering.parent.element_preserving
        self.offload: Any = None  # set by a libOS that runs pred below Python (see attach_filter)
        steering.filters.append(self.side)

    def pop(self, op: Op, size: int | None) -> None:
        self._check_open()
        self.steering.pop(self.side, op)

    def cancel(self, op: Op) -> bool:
        return self.steering.cancel(self.side, op)

    def unpop(self, result: QResult) -> bool:
        return not self.closed and self.steering.unpop(self.side, result)

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check_open()
        if not self.pred(SGArray(tuple(memoryview(s) for s in segs))):
            self.dropped += 1
            self.core.complete(op, QResult(Opcode.PUSH, op.qd, op.qt))
            return
        iop = self.core.new_op(op.qd, lambda i: _relay(self.core, op, i.result))
        self.steering.parent.push(iop, segs)

    def close(self) -> None:
        self._release_qd()
        self.steering.detach(self.side)
        if self.offload is not None:
            self.offload.release()
            self.offload = None

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(dropped=self.dropped, parent=self.steering.parent.qd,
                 predicate_errors=self.steering.pred_errors, offloaded=self.offload is not None,
                 offload=self.offload.kind if self.offload is not None else None)
        if self.offload is not None:
            s.update(self.offload.stats())
        return s


def attach_filter(core: Any, qd: int, pred: Callable[[SGArray], bool]) -> Filter:
    parent = core.lookup(qd)
    bind = getattr(pred, "bind_queue", None)
    if bind is not None:  # a declarative predicate (queueapi.Match) learns its queue
        pred = bind(parent)
    steering = getattr(parent, "steering", None)
    if not isinstance(steering, Steering):
        steering = Steering(core, parent)
    flt = Filter(core, steering, pred)
    offload = getattr(parent, "offload_filter", None)
    if offload is not None:  # the libOS may run it below Python (inet: classic BPF)
        flt.offload = offload(flt, pred)
    return flt


class Sort(Derived):
    """Pops yield the available element with the smallest ``key(sga)``; ties in arrival order.

    On the first pop the queue starts reading its parent ahead, up to ``window`` elements, so
    "available" means everything the parent could deliver without waiting. An element whose
    key raises sorts after all others.
    """

    kind = "sort"

    def __init__(self, core: Any, parent: Queue, key: Callable[[SGArray], Any], window: int) -> None:
        if not isinstance(window, int) or isinstance(window, bool):
            raise TypeError(f"sort window must be an int, not {type(window).__name__}")
        if window <= 0:
            raise oserror(errno.EINVAL, f"sort window must be a positive int, got {window!r}")
        super().__init__(core)
        self.parent = parent
        self.key = key
        self.window = window
        self.element_preserving = parent.element_preserving
        self._heap: list[tuple[Any, int, QResult]] = []
        self._seq = 0
        self._inflight: Op | None = None
        self._end: QResult | None = None
        self._pops: deque[Op] = deque()

    def pop(self, op: Op, size: int | None) -> None:
        self._check_open()
        self._pops.append(op)
        self._pump()

    def _pump(self) -> None:
        while self._inflight is None and self._end is None and len(self._heap) < self.window \
                and not self.closed:
            iop = self.core.new_op(self.parent.qd, self._on_element)
            self._inflight = iop
            try:
                self.parent.pop(iop, None)
            except OSError as e:
                self.core.complete(iop, failed(iop, e.errno or errno.EIO))
            if iop.result is not None:
                return  # completed at once: its callback reads on before anything is served
        self._serve()

    def _on_element(self, iop: Op) -> None:
        self._inflight = None
        r = iop.result
        if self.closed:
            if _is_data(r):
                self.parent.unpop(r)
            return
        if _is_data(r):
            try:
                k = (0, self.key(r.sga))
            except Exception:
                log.exception("sort key raised; the element sorts last")
                k = (1, 0)
            heapq.heappush(self._heap, (k, self._seq, r))
            self._seq += 1
        else:
            self._end = r
        self._pump()

    def _serve(self) -> None:
        while self._pops and self._heap:
            _relay(self.core, self._pops.popleft(), heapq.heappop(self._heap)[2])
        if self._end is not None and not self._heap:
            while self._pops:
                _relay(self.core, self._pops.popleft(), self._end)

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check_open()
        iop = self.core.new_op(op.qd, lambda i: _relay(self.core, op, i.result))
        self.parent.push(iop, segs)

    def close(self) -> None:
        """Pending pops fail ``ECANCELED``; what was read ahead goes back to the parent in
        arrival order."""
        self._release_qd()
        self._cancel(self.core, self._pops)
        if self._inflight is not None and self.parent.cancel(self._inflight):
            self._inflight = None
        for _, _, r in sorted(self._heap, key=lambda e: e[1], reverse=True):
            self.parent.unpop(r)
        self._heap.clear()


class Map(Derived):
    """Pops yield ``fn(sga)`` of the parent's elements; pushes send ``fn(sga)`` to the parent.

    ``fn`` returns an ``SGArray``, a bytes-like object or a sequence of them. If it raises on a
    popped element, that pop completes ``FAILED``/``EINVAL`` (the exception is logged); on a
    push, the exception propagates from ``push``.
    """

    kind = "map"

    def __init__(self, core: Any, parent: Queue, fn: Callable[[SGArray], Any]) -> None:
        super().__init__(core)
        self.parent = parent
        self.fn = fn
        self.element_preserving = parent.element_preserving
        self.errors = 0
        self._pending: dict[Op, Op] = {}  # internal pop on the parent -> user pop

    def pop(self, op: Op, size: int | None) -> None:
        self._check_open()
        iop = self.core.new_op(self.parent.qd, lambda i: self._mapped(op, i))
        self._pending[iop] = op
        self.parent.pop(iop, size)

    def _mapped(self, op: Op, iop: Op) -> None:
        self._pending.pop(iop, None)
        r = iop.result
        if self.closed:
            if _is_data(r):
                self.parent.unpop(r)
            return
        if _is_data(r):
            try:
                sga = _to_sga(self.fn(r.sga), r.sga.addr)
            except Exception:
                self.errors += 1
                log.exception("map function raised on a popped element")
                self.core.complete(op, failed(op, errno.EINVAL))
                return
            r = r._replace(sga=sga)
        _relay(self.core, op, r)

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check_open()
        out = as_segments(_to_sga(self.fn(SGArray(tuple(memoryview(s) for s in segs)))).segments)
        iop = self.core.new_op(op.qd, lambda i: _relay(self.core, op, i.result))
        self.parent.push(iop, out)

    def close(self) -> None:
        """Pending pops fail ``ECANCELED`` and their reads of the parent are withdrawn."""
        self._release_qd()
        for iop, op in list(self._pending.items()):
            self.parent.cancel(iop)
            if op.result is None:
                self.core.complete(op, failed(op, errno.ECANCELED))
        self._pending.clear()

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["errors"] = self.errors
        return s


class QConnect:
    """Forwards every element of ``src`` to ``dst`` until end of stream, then shuts ``dst``'s
    write side. One element is in flight at a time, so order is kept. It stops at the first
    failure on either side (the count and the errno go to ``src``'s stats)."""

    def __init__(self, core: Any, src: Queue, dst: Queue) -> None:
        self.core = core
        self.src = src
        self.dst = dst
        self.forwarded = 0
        self.error = 0

    def start(self) -> None:
        self.src.qconnect = self  # type: ignore[attr-defined]
        self._pop()

    def _pop(self) -> None:
        iop = self.core.new_op(self.src.qd, self._on_pop)
        try:
            self.src.pop(iop, None)
        except OSError as e:
            self.error = e.errno or errno.EIO

    def _on_pop(self, iop: Op) -> None:
        r = iop.result
        if _is_data(r):
            pop = self.core.new_op(self.dst.qd, self._on_push)
            try:
                self.dst.push(pop, r.sga.segments)
            except OSError as e:
                self.error = e.errno or errno.EIO
        elif r.opcode == Opcode.POP:
            try:
                self.dst.shutdown(_socket.SHUT_WR)
            except OSError as e:
                self.error = e.errno or errno.EIO
        else:
            self.error = r.ret

    def _on_push(self, iop: Op) -> None:
        if iop.result.opcode == Opcode.FAILED:
            self.error = iop.result.ret
            return
        self.forwarded += 1
        self._pop()
