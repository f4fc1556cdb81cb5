"""The ``LibOS`` object: qd table, one-shot tokens, waiting, threads, and the public calls.

Every library OS sits behind ``libos.base.Backend``; this module owns everything common:
tokens, ``wait``/``wait_any``/``wait_all``, thread hand-off, combinators, stats.

Threads: one lock guards all state. At most one waiting thread at a time runs the backend's
``poll`` (the poller); other waiting threads sleep on their own ``threading.Event``, which is
set only when one of *their* tokens completes (or to hand over the poller role). Waits run in
slices of at most ``SLICE`` seconds, so Ctrl-C and signal handlers run within 100 ms.
"""
from __future__ import annotations

import errno
import operator
import os
import socket as _socket
import threading
import time
import weakref
from collections import deque
from itertools import chain as _chain, islice as _islice
from typing import Any, Callable, Sequence

from libos.base import Backend, Op, Queue, oserror
from queueapi import _fast, combinators
from queueapi.config import load_backend_class, load_config, resolve_name
from queueapi.types import Opcode, QResult, SGArray, as_segments

__all__ = ["LibOS"]

SLICE = 0.05
_POP = Opcode.POP
_TAKEN = _fast.TAKEN  # an op's result once consumed (true, like any result)
_DONE_LOOKAHEAD = 8  # completion-queue entries wait_any looks at before scanning its tokens
_get_ident = threading.get_ident
_active_count = threading.active_count
_monotonic = time.monotonic


class LibOS:
    """One library OS instance: ``LibOS("posix")``, ``LibOS("shm")``, ...

    ``name`` may be a Demikernel alias (``catnap``...). ``config`` overrides the ``[name]``
    table of the TOML file named by ``$DEMI_CONFIG``. Several instances may coexist.
    """

    # _fc: the C core (queueapi._fast.Core) that LibOS.push, pop, wait... call (_CORE_METHODS).
    # No instance __dict__: CPython then specialises ``los.push(...)`` and the other method
    # calls (LOAD_METHOD_NO_DICT), which it cannot do for an instance that has a dict.
    __slots__ = ("_fc", "__weakref__", "name", "lock", "backend", "_queues", "_ops", "_lanes",
                 "_deferred", "_done", "_rotor", "_resume_pop", "_sleepers", "_next_sleepers",
                 "_tls", "_closed")

    def __init__(self, name: str | None = None, config: dict[str, Any] | None = None) -> None:
        self.name = resolve_name(name)
        cfg = load_config(self.name) if config is None else dict(config)
        self.lock = threading.RLock()
        self._queues: dict[int, Queue] = {}
        self._ops: Any = _fast.OpTable()  # token -> Op (a dict's get/pop/[]/del/in/len, in C)
        self._deferred: deque[Op] = deque()
        self._rotor = 0  # where wait_any's fallback scan starts (fairness)
        self._done: deque[Op] = deque()  # user ops in completion order, for wait_next_n
        self._resume_pop: dict[int, int] = {}  # qd -> pop token left by a timed-out blocking_pop
        self._sleepers: list[threading.Event] = []
        self._next_sleepers: list[threading.Event] = []
        self._tls = threading.local()
        self._closed = False
        #: qd -> C fast lane (``queueapi._fast.Lane``) of queues whose push/pop bypass Python
        self._lanes: Any = _fast.OpTable()
        # the token counter and the poller's ident live in C (properties below)
        self._fc = _fast.Core(self, QResult, SGArray, Opcode.PUSH, Opcode.POP)
        self.backend: Backend = load_backend_class(self.name)(self, cfg)
        # push, pop, wait... first try the C fast paths (queueapi/_fast.c), which call the
        # methods below for everything they do not handle (see _CORE_METHODS)
        self._fc.spin_ns = self.backend.spin_ns
        self._fc.spin_yield_ns = self.backend.spin_yield_ns
        self._fc.epoll_spin_ns = self.backend.epoll_spin_ns
        # the C push/pop may do push()/pop() below for queues without a lane (same effects)
        self._fc.queue_fast = type(self).push is LibOS.push and type(self).pop is LibOS.pop
        _instances.add(self)

    def __repr__(self) -> str:
        return f"<LibOS {self.name!r} queues={len(self._queues)} pending={len(self._ops)}>"

    @property
    def _next_qt(self) -> int:
        return self._fc.next_qt

    @_next_qt.setter
    def _next_qt(self, qt: int) -> None:
        self._fc.next_qt = qt

    @property
    def _poller(self) -> int | None:
        """Ident of the thread running the backend's poll, or None."""
        return self._fc.poller

    @_poller.setter
    def _poller(self, ident: int | None) -> None:
        self._fc.poller = ident

    # ---------------------------------------------------------------- internal helpers
    def _queue(self, qd: Any) -> Queue:
        q = self._queues.get(qd)
        if q is None or qd.__class__ is not int:
            if qd.__class__ is not int:
                raise TypeError(f"a qd must be an int, not {type_name(qd)}")
            raise oserror(errno.EBADF, f"qd {qd} is not open on the {self.name} library OS")
        return q

    def new_op(self, qd: int, callback: Callable[[Op], None] | None = None) -> Op:
        """A fresh op with a new token (called with the lock held)."""
        qt = self._next_qt
        self._next_qt = qt + 1
        return Op(qt, qd, callback)

    def register(self, q: Queue) -> int:
        """Add ``q`` to the qd table (the lock held) and return its qd."""
        old = self._queues.get(q.qd)
        if old is not None:
            if old is q:
                raise RuntimeError(f"qd {q.qd} registered twice")
            # the kernel gave q the fd number of old: old's fd was closed behind the library
            # OS (os.close on a qd, or code such as ssl that took the fd over); forget old
            # without touching the fd, which is q's now
            del self._queues[q.qd]
            self._lanes.pop(q.qd, None)
            old.orphan()
        self._queues[q.qd] = q
        return q.qd

    def lookup(self, qd: int) -> Queue:
        """The queue behind ``qd`` (EBADF if none); for combinators."""
        return self._queue(qd)

    def replace(self, qd: int, q: Queue) -> None:
        """Put ``q`` in place of the queue at ``qd`` (a combinator wrapping its parent)."""
        self._queues[qd] = q
        self._lanes.pop(qd, None)  # pushes and pops on qd now go through ``q``

    def complete(self, op: Op, result: QResult) -> None:
        """Record ``result`` for ``op`` and wake whoever waits on it (the lock held): a
        thread sleeping on it, else the ``wait_next_n`` sleepers, else a poller in another
        thread. Internal ops (with a callback) are queued for ``drain``. Implemented in C
        (``queueapi/_fast.c``, ``Core.complete``)."""
        self._fc.complete(op, result)

    def drain(self) -> None:
        """Run the callbacks of completed internal ops (the lock held)."""
        d = self._deferred
        while d:
            op = d.popleft()
            op.callback(op)

    def _issue(self, qd: int, method: str, *args: Any) -> int:
        """Create an op, hand it to ``queue.<method>``; the token is kept only if that
        did not raise."""
        with self.lock:
            q = self._queues.get(qd)
            if q is None or qd.__class__ is not int:
                q = self._queue(qd)
            qt = self._next_qt
            self._next_qt = qt + 1
            op = Op(qt, qd)
            getattr(q, method)(op, *args)
            self._ops[qt] = op
            if self._deferred:
                self.drain()
            return qt

    # ---------------------------------------------------------------- control path
    def socket(self, domain: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM,
               proto: int = 0, *, framing: bool = False) -> int:
        """A new socket queue. ``framing=True`` preserves elements on a stream socket."""
        for v, what in ((domain, "domain"), (type, "type"), (proto, "proto")):
            if not isinstance(v, int):
                raise TypeError(f"socket {what} must be an int, not {type_name(v)}")
        with self.lock:
            return self.register(self.backend.socket(int(domain), int(type), int(proto),
                                                     bool(framing)))

    def bind(self, qd: int, addr: Any) -> None:
        with self.lock:
            self._queue(qd).bind(addr)

    def listen(self, qd: int, backlog: int = 128) -> None:
        if not isinstance(backlog, int):
            raise TypeError(f"backlog must be an int, not {type_name(backlog)}")
        with self.lock:
            self._queue(qd).listen(backlog)

    def accept(self, qd: int) -> int:
        """Token completing ``ACCEPT`` with ``new_qd`` and ``addr``."""
        return self._issue(qd, "accept")

    def connect(self, qd: int, addr: Any) -> int:
        """Token completing ``CONNECT``, or ``FAILED`` with ECONNREFUSED/ETIMEDOUT..."""
        return self._issue(qd, "connect", addr)

    def close(self, qd: int) -> None:
        """Close ``qd``; its pending tokens complete ``FAILED``/``ECANCELED``."""
        with self.lock:
            q = self._queue(qd)
            del self._queues[qd]
            q.close()
            if self._deferred:
                self.drain()

    def async_close(self, qd: int) -> int:
        """Close ``qd`` and return a token completing ``CLOSE``."""
        with self.lock:
            self.close(qd)
            op = self.new_op(qd)
            self._ops[op.qt] = op
            self.complete(op, QResult(Opcode.CLOSE, qd, op.qt))
            return op.qt

    def shutdown(self, qd: int, how: int = _socket.SHUT_WR) -> None:
        """End the write side (``SHUT_WR``): the peer (or the next pops of a memory queue)
        see end of stream after the elements already pushed. Extension of API.md."""
        with self.lock:
            self._queue(qd).shutdown(how)

    def getsockname(self, qd: int) -> Any:
        with self.lock:
            return self._queue(qd).getsockname()

    def getpeername(self, qd: int) -> Any:
        with self.lock:
            return self._queue(qd).getpeername()

    def setsockopt(self, qd: int, level: int, option: int, value: Any) -> None:
        with self.lock:
            self._queue(qd).setsockopt(level, option, value)

    def getsockopt(self, qd: int, level: int, option: int, buflen: int | None = None) -> Any:
        with self.lock:
            return self._queue(qd).getsockopt(level, option, buflen)

    def queue(self, capacity: int = combinators.DEFAULT_CAPACITY) -> int:
        """An in-process FIFO of elements holding at most ``capacity`` bytes (pushes beyond pend)."""
        with self.lock:
            return self.register(combinators.MemoryQueue(self, capacity))

    def create_pipe(self, name: str) -> int:
        """A named, cross-process, element-preserving pipe; the other end calls ``open_pipe``."""
        _check_name(name)
        with self.lock:
            return self.register(self.backend.create_pipe(name))

    def open_pipe(self, name: str) -> int:
        _check_name(name)
        with self.lock:
            return self.register(self.backend.open_pipe(name))

    def open(self, path: str | bytes | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o666,
             *, framing: bool = False) -> int:
        """A file queue: push writes at the write offset, pop reads the next bytes.

        ``framing=True`` stores each element as a length-prefixed record (a durable log).
        """
        if not isinstance(flags, int) or not isinstance(mode, int):
            raise TypeError("flags and mode must be ints")
        path = os.fspath(path)
        with self.lock:
            return self.register(self.backend.open(path, flags, mode, bool(framing)))

    def creat(self, path: str | bytes | os.PathLike, mode: int = 0o666, *,
              framing: bool = False) -> int:
        """``open(path, O_WRONLY|O_CREAT|O_TRUNC, mode)``."""
        return self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode, framing=framing)

    def merge(self, qd1: int, qd2: int) -> int:
        """Pop from whichever parent completes first, fairly; push goes to both."""
        with self.lock:
            return self.register(combinators.Merge(self, self._queue(qd1), self._queue(qd2)))

    def filter(self, qd: int, pred: Callable[[SGArray], bool]) -> int:
        """Elements of ``qd`` with ``pred(sga)`` true pop here; the rest stay on ``qd``."""
        _check_callable(pred, "filter predicate")
        with self.lock:
            return self.register(combinators.attach_filter(self, qd, pred))

    def sort(self, qd: int, key: Callable[[SGArray], Any],
             window: int = combinators.DEFAULT_WINDOW) -> int:
        """Pop the available element of ``qd`` with the smallest ``key(sga)`` (ties: FIFO)."""
        _check_callable(key, "sort key")
        with self.lock:
            return self.register(combinators.Sort(self, self._queue(qd), key, window))

    def map(self, qd: int, fn: Callable[[SGArray], Any]) -> int:
        """Pop yields ``fn(sga)``; push sends ``fn(data)`` to ``qd``."""
        _check_callable(fn, "map function")
        with self.lock:
            return self.register(combinators.Map(self, self._queue(qd), fn))

    def qconnect(self, qd_in: int, qd_out: int) -> None:
        """Forward every element of ``qd_in`` into ``qd_out`` until end of stream, then
        shut ``qd_out``'s write side, without the application in the loop."""
        with self.lock:
            combinators.QConnect(self, self._queue(qd_in), self._queue(qd_out)).start()
            self.drain()

    def qd_of(self, obj: Any) -> int:
        """The qd behind a socket or file object created by the shim."""
        qd = getattr(obj, "_demi_qd", None)
        if qd is None:
            raise oserror(errno.EBADF, f"{obj!r} was not created by demishim")
        return qd

    # ---------------------------------------------------------------- kernel fd watches
    # Extension of API.md for the shim (demishim): a selector must watch kernel fds (pipes,
    # asyncio's self-pipe, signal wake-up fds) together with queue tokens in one wait_any.
    def watch_fd(self, fd: int, events: int) -> int:
        """A one-shot token completing when kernel fd ``fd`` is ready for ``events``.

        ``events`` is a mask of ``select.POLLIN``/``POLLPRI``/``POLLOUT`` (the EPOLL values
        are the same). The token completes ``POP`` with ``ret=0``, ``sga=None``, ``qd=fd`` and
        the ready mask (which may add ``POLLERR``/``POLLHUP``) in ``addr``. ``fd`` must not
        be a qd of this LibOS (``EINVAL``: pop it instead). A library OS that cannot watch
        kernel fds raises ``OSError(ENOSYS)``. Cancel a pending watch with ``unwatch_fd``.
        """
        if fd.__class__ is not int or events.__class__ is not int:
            raise TypeError("watch_fd needs an int fd and an int event mask")
        if fd < 0 or not events:
            raise oserror(errno.EINVAL, f"watch_fd({fd}, {events}): bad fd or empty mask")
        with self.lock:
            if fd in self._queues:
                raise oserror(errno.EINVAL, f"fd {fd} is a qd of this library OS; pop it instead")
            op = self.new_op(fd)
            self.backend.watch_kernel_fd(op, fd, events)
            self._ops[op.qt] = op
            if self._deferred:
                self.drain()
            return op.qt

    def unwatch_fd(self, qt: int) -> QResult | None:
        """End the watch ``qt``: returns its result if it had completed (consuming the
        token), else cancels it and returns ``None``. Either way the token is gone."""
        with self.lock:
            op = self._ops.get(qt)
            if op is None or qt.__class__ is not int:
                raise _bad_token(qt)
            if op.result is not None:
                return self._take(qt)
            self.backend.unwatch_kernel_fd(op)
            del self._ops[qt]
            op.gone = 1  # (the C wait_any's memo checks this)
            if op.result is not None:  # completed while being cancelled
                return op.result
            return None

    def stats(self, qd: int) -> dict[str, Any]:
        with self.lock:
            s = self._queue(qd).stats()
            s["libos"] = self.name
            return s

    # ---------------------------------------------------------------- data path
    def push(self, qd: int, data: Any) -> int:
        """Push one element; returns a token completing ``PUSH``."""
        if data.__class__ is bytes and data:
            segs = (data,)
            n = len(data)
        else:
            segs = as_segments(data)
            n = -1
        with self.lock:
            q = self._queues.get(qd)
            if q is None or qd.__class__ is not int:
                q = self._queue(qd)
            qt = self._next_qt
            self._next_qt = qt + 1
            op = Op(qt, qd)
            q.push(op, segs)
            self._ops[qt] = op
            q.pushes += 1
            q.bytes_out += n if n >= 0 else sum(memoryview(s).nbytes for s in segs)
            if self._deferred:
                self.drain()
            return qt

    def pushto(self, qd: int, data: Any, addr: Any) -> int:
        """Push one datagram to ``addr``."""
        segs = as_segments(data)
        qt = self._issue(qd, "pushto", segs, addr)
        q = self._queues.get(qd)
        if q is not None:
            q.pushes += 1
            q.bytes_out += sum(memoryview(s).nbytes for s in segs)
        return qt

    def pop(self, qd: int, size: int | None = None) -> int:
        """Pop one element (at most ``size`` bytes on a plain stream; default 8192)."""
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool):
                raise TypeError(f"size must be an int or None, not {type_name(size)}")
            if size <= 0:
                raise oserror(errno.EINVAL, f"pop size must be positive, got {size}")
        with self.lock:
            if self._resume_pop:
                qt = self._resume_pop.pop(qd, None)
                if qt is not None and qt in self._ops:
                    return qt
            q = self._queues.get(qd)
            if q is None or qd.__class__ is not int:
                q = self._queue(qd)
            qt = self._next_qt
            self._next_qt = qt + 1
            op = Op(qt, qd)
            q.pop(op, size)
            self._ops[qt] = op
            if self._deferred:
                self.drain()
            return qt

    def _take(self, qt: int) -> QResult:
        """Consume a completed token (dict.pop is atomic: one taker wins)."""
        op = self._ops.pop(qt, None)
        if op is None:
            raise oserror(errno.EINVAL, f"token {qt} was consumed by another waiter")
        r = op.result
        op.result = _TAKEN  # the completion queue may keep the op a while: not its data
        done = self._done
        if done and done[0] is op:  # taken in completion order: keep the queue short
            with self.lock:
                if done and done[0] is op:
                    done.popleft()
        if r[0] is _POP and r[4] is not None and not op.counted:
            q = self._queues.get(r[1])
            if q is not None:  # counters are approximate when threads pop one qd at once
                q.pops += 1
                q.bytes_in += len(r[4])
        return r

    def wait(self, qt: int, timeout: float | None = None) -> QResult:
        """Wait for one token. ``None`` waits for ever, ``0`` polls once; on timeout raises
        ``TimeoutError`` and the token stays valid. Unknown or consumed token: ``EINVAL``."""
        op = self._ops.get(qt)
        if op is None or qt.__class__ is not int:
            raise _bad_token(qt)
        if timeout is not None:
            _check_timeout(timeout)
        if op.result is None or self._deferred:
            self._block((op,), timeout)
        return self._take(qt)

    def is_done(self, qt: int) -> bool:
        """Whether token ``qt`` has completed (without consuming it; an extension of API.md
        for callers that gather many completions in one pass, like the shim's select)."""
        op = self._ops.get(qt)
        if op is None or qt.__class__ is not int:
            raise _bad_token(qt)
        return op.result is not None and not self._deferred

    def wait_any(self, qts: Sequence[int], timeout: float | None = None) -> tuple[int, QResult]:
        """Wait for the first of ``qts``; returns ``(index, result)``.

        Fair: the token that completed first is returned first (completions are kept in
        order), so no index is favoured. Completions of other tokens are kept.
        """
        ops = self._ops_of(qts)
        if timeout is not None:
            _check_timeout(timeout)
        if not isinstance(qts, list):
            qts = list(qts)
        while True:
            if not self._deferred:
                with self.lock:
                    i = self._first_done_in(qts, ops)  # the oldest completion first: fair
                if i is not None:
                    return i, self._take(qts[i])
            self._block(ops, timeout)

    def wait_next_n(self, n: int, timeout: float | None = None, *,
                    only: Any = None) -> list[QResult]:
        """Up to ``n`` results of any completed tokens, oldest completion first (Demikernel's
        ``demi_wait_next_n``; an extension of API.md). Each returned token is consumed.

        Unlike ``wait_any`` it takes no token list, so its cost does not grow with the number
        of pending tokens: a server with many connections waits in O(completions). Waits up to
        ``timeout`` for the first completion (``TimeoutError`` if none); never waits for more.

        ``only`` (optional): a container of tokens (anything supporting ``in``); completions of
        other tokens are left untouched for whoever waits on them, so several users of one
        LibOS (the shim's selectors, threads waiting on their own tokens) can each take their
        own completions without a token list.
        """
        if n.__class__ is not int or n <= 0:
            raise oserror(errno.EINVAL, f"wait_next_n needs a positive int count, got {n!r}")
        if timeout is not None:
            _check_timeout(timeout)
        while True:
            if not self._deferred:
                out = self._take_done(n) if only is None else self._take_done_only(n, only)
                if out:
                    return out
            self._block((), timeout, next_n=True, only=only)

    def _first_done_in(self, qts: list[int], waited: list[Op]) -> int | None:
        """Index in ``qts`` of a completed token: the oldest completion among the first few
        in the completion queue, else (completions of other tokens are ahead, e.g. tokens
        the application never waits on) the first completed one from a rotating start."""
        done, ops = self._done, self._ops
        while done and ops.get(done[0].qt) is not done[0]:
            done.popleft()  # consumed by a wait on its token
        for op in _islice(done, _DONE_LOOKAHEAD):
            if ops.get(op.qt) is op:
                try:
                    return qts.index(op.qt)
                except ValueError:
                    continue  # completed, but not one of these tokens
        results = list(map(_result_of, waited))  # the scan runs in C: wait lists are long
        n = len(results)
        if results.count(None) == n:
            return None
        start = self._rotor % n
        self._rotor += 1
        return next(filter(results.__getitem__, _chain(range(start, n), range(start))))

    def _take_done(self, n: int) -> list[QResult]:
        out: list[QResult] = []
        done, ops = self._done, self._ops
        with self.lock:
            while done and len(out) < n:
                op = done.popleft()
                if ops.get(op.qt) is op:  # not consumed by a wait on its token meanwhile
                    out.append(self._take(op.qt))
        return out

    def _take_done_only(self, n: int, only: Any) -> list[QResult]:
        """``_take_done`` for the tokens in ``only``; the others keep their place."""
        out: list[QResult] = []
        done, ops = self._done, self._ops
        with self.lock:
            kept: list[Op] = []
            while done and len(out) < n:
                op = done.popleft()
                if ops.get(op.qt) is not op:
                    continue  # consumed meanwhile: drop the entry
                if op.qt in only:
                    out.append(self._take(op.qt))
                else:
                    kept.append(op)
            if kept:
                done.extendleft(reversed(kept))
        return out

    def _next_ready(self, only: Any = None) -> bool:
        """Some completed token (of ``only``, if given) is still unconsumed (the lock held)."""
        done, ops = self._done, self._ops
        while done:
            op = done[0]
            if ops.get(op.qt) is op:
                break
            done.popleft()
        else:
            return False
        if only is None:
            return True
        for op in done:
            if op.qt in only and ops.get(op.qt) is op:
                return True
        return False

    def wait_all(self, qts: Sequence[int], timeout: float | None = None) -> list[QResult]:
        """Wait for all of ``qts``. On timeout raises ``TimeoutError`` and consumes nothing."""
        ops = self._ops_of(qts)
        if timeout is not None:
            _check_timeout(timeout)
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            pending = [o for o in ops if o.result is None]
            if not pending and not self._deferred:
                return [self._take(qt) for qt in qts]
            remaining = None if deadline is None else max(0.0, deadline - _monotonic())
            self._block(pending or ops[:1], remaining, all_of=True)

    def blocking_push(self, qd: int, data: Any, timeout: float | None = None) -> int:
        """Push and wait; returns the bytes pushed. A ``FAILED`` result raises ``OSError``."""
        segs = as_segments(data)
        if timeout is not None:
            _check_timeout(timeout)
        qt = self.push(qd, segs)
        try:
            r = self.wait(qt, timeout)
        except TimeoutError:
            self._forget(qt)
            raise
        if r.opcode == Opcode.FAILED:
            raise oserror(r.ret)
        return sum(memoryview(s).nbytes for s in segs)

    def blocking_pop(self, qd: int, size: int | None = None,
                     timeout: float | None = None) -> SGArray:
        """Pop and wait; returns the sga. A ``FAILED`` result raises ``OSError``."""
        if timeout is not None:
            _check_timeout(timeout)
        qt = self.pop(qd, size)
        try:
            r = self.wait(qt, timeout)
        except TimeoutError:
            with self.lock:
                self._resume_pop[qd] = qt  # the next pop of qd takes this token over
            raise
        if r.opcode == Opcode.FAILED:
            raise oserror(r.ret)
        return r.sga

    def _forget(self, qt: int) -> None:
        """Drop a token nobody will wait on; its op still completes (a timed-out push)."""
        with self.lock:
            op = self._ops.pop(qt, None)
            if op is not None:
                op.gone = 1  # (the C wait_any's memo checks this)
                if op.result is None:
                    op.callback = _ignore_result

    def sgaalloc(self, size: int, qd: int | None = None) -> SGArray:
        """A one-segment sga of ``size`` zeroed bytes (1 <= size).

        ``qd`` (an extension): memory meant to be pushed on ``qd``. A queue that can hand out
        its own transmit memory does so (shm: space reserved in the ring, not zeroed, which a
        ``push`` on ``qd`` publishes without a copy); otherwise this is ordinary memory.
        """
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, not {type_name(size)}")
        if size <= 0:
            raise oserror(errno.EINVAL, f"sgaalloc size must be positive, got {size}")
        if qd is not None:
            with self.lock:
                alloc_on = getattr(self._queue(qd), "sgaalloc_on", None)
                sga = alloc_on(size) if alloc_on is not None else None
            if sga is not None:
                return sga
        alloc = getattr(self.backend, "sgaalloc", None)
        if alloc is not None:
            return alloc(size)
        return SGArray((memoryview(bytearray(size)),))

    def sgafree(self, sga: SGArray) -> None:
        """Free ``sga`` (EINVAL if already freed)."""
        if not isinstance(sga, SGArray):
            raise TypeError(f"sgafree needs an SGArray, not {type_name(sga)}")
        sga.free()

    # ---------------------------------------------------------------- waiting
    def _ops_of(self, qts: Sequence[int]) -> list[Op]:
        if isinstance(qts, (str, bytes)) or not hasattr(qts, "__len__"):
            raise TypeError("qts must be a sequence of tokens")
        if not qts:
            raise oserror(errno.EINVAL, "no tokens to wait on")
        ops = list(map(self._ops.get, qts))
        if None in ops or _INT_ONLY != set(map(type, qts)):
            for qt, op in zip(qts, ops):
                if op is None or qt.__class__ is not int:
                    raise _bad_token(qt)
        return ops

    def _event(self) -> threading.Event:
        ev = getattr(self._tls, "ev", None)
        if ev is None:
            ev = self._tls.ev = threading.Event()
        return ev

    def _block(self, ops: Sequence[Op], timeout: float | None, all_of: bool = False,
               next_n: bool = False, only: Any = None) -> None:
        """Return once one of ``ops`` (all, if ``all_of``) has a result; raise
        ``TimeoutError`` after ``timeout`` seconds (after one poll if it is 0)."""
        if timeout is not None:
            _check_timeout(timeout)
            deadline = _monotonic() + timeout
        else:
            deadline = None
        ident = _get_ident()
        lock = self.lock
        polled = False
        while True:
            lock.acquire()
            try:
                if self._deferred:
                    self.drain()
                if self._next_ready(only) if next_n else _all_done(ops) if all_of else _any_done(ops):
                    if self._poller is None and self._sleepers:
                        self._sleepers[0].set()  # let another thread take over polling
                    return
                if deadline is None:
                    slice_ = SLICE
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0 and polled:
                        raise TimeoutError(errno.ETIMEDOUT, "wait timed out")
                    slice_ = min(max(remaining, 0.0), SLICE)
                if self._poller is None:
                    self._poller = ident
                    # what a completion in another thread must wake this poller for (a
                    # thread alone has none to fear: None, and no set built on its waits)
                    self._fc.poller_only = (only if next_n else {o.qt for o in ops}
                                            if _active_count() > 1 else None)
                    ev = None
                else:
                    ev = self._event()
                    ev.clear()
                    for o in ops:
                        o.waiter = ev
                    self._sleepers.append(ev)
                    if next_n:
                        self._next_sleepers.append(ev)
                    self.backend.before_sleep()
            finally:
                lock.release()
            if ev is None:
                try:
                    self.backend.poll(slice_)
                finally:
                    self._poller = None
                    self._fc.poller_only = None
                    if self._sleepers:
                        with lock:
                            if self._sleepers:
                                self._sleepers[0].set()  # hand the polling over
            else:
                try:
                    ev.wait(slice_)
                finally:
                    with lock:
                        self._sleepers.remove(ev)
                        if next_n:
                            self._next_sleepers.remove(ev)
                        for o in ops:
                            o.waiter = None
            polled = True

    # ---------------------------------------------------------------- lifetime
    def shutdown_libos(self) -> None:
        """Close every queue and release the library OS (the instance is unusable after)."""
        with self.lock:
            for qd in list(self._queues):
                try:
                    self.close(qd)
                except OSError:
                    pass
            self.backend.shutdown_backend()
            self._closed = True
            _instances.discard(self)

    def _after_fork_in_child(self) -> None:
        self.lock = threading.RLock()
        self._poller = None
        self._sleepers = []
        self._next_sleepers = []
        self._tls = threading.local()
        self._fc.rebind()
        self.backend.after_fork_in_child()


def type_name(v: Any) -> str:
    return type(v).__name__


def _check_timeout(timeout: Any) -> None:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number or None, not {type_name(timeout)}")
    if not timeout >= 0:
        raise oserror(errno.EINVAL, f"timeout must not be negative, got {timeout}")


def _bad_token(qt: Any) -> Exception:
    if qt.__class__ is not int:
        return TypeError(f"a token must be an int, not {type_name(qt)}")
    return oserror(errno.EINVAL, f"token {qt} is unknown or already consumed")


_result_of = operator.attrgetter("result")
_INT_ONLY = {int}


def _any_done(ops: Sequence[Op]) -> bool:
    return any(map(_result_of, ops))  # a QResult is a non-empty tuple: true


def _all_done(ops: Sequence[Op]) -> bool:
    return all(map(_result_of, ops))


def _ignore_result(op: Op) -> None:
    pass


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a pipe name must be a str, not {type_name(name)}")
    if not name or "\0" in name or "/" in name or len(name) > 80:
        raise oserror(errno.EINVAL, f"bad pipe name {name!r} (1-80 characters, no '/' or NUL)")


def _check_callable(fn: Any, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type_name(fn)}")


#: The LibOS methods the C core does first: each becomes a method descriptor of the class
#: calling the Core's method of the instance (queueapi/_fast.c: core_method, so that
#: ``los.push(...)`` is an ordinary, specialised method call); the Python method, which the
#: Core calls for everything it does not handle, stays as ``_<name>_py``.
_CORE_METHODS = ("push", "pop", "wait", "wait_any", "wait_all", "complete")
for _name in _CORE_METHODS:
    _py = LibOS.__dict__[_name]
    setattr(LibOS, f"_{_name}_py", _py)
    setattr(LibOS, _name, _fast.core_method(LibOS, _name, _py.__doc__))
del _name, _py

_instances: "weakref.WeakSet[LibOS]" = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for los in list(_instances):
        if not los._closed:  # (a shut-down one's fd numbers may be another's by now)
            los._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_after_fork)
