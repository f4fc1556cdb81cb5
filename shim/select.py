"""``select.select`` and ``select.poll`` over queue tokens plus kernel fds.

An fd that belongs to a library-OS socket is ready according to its tokens (an outstanding
pop completed, an accept or connect finished, few enough unfinished pushes); the wait is one
``wait_any`` over those tokens plus, for kernel fds in the same call (pipes, asyncio's
self-pipe when it is a kernel socket, a signal wake-up fd), ``LibOS.watch_fd`` tokens. A
library OS without ``watch_fd`` gets the kernel fds polled between short waits. Calls that
involve kernel fds only go straight to the kernel's select/poll.
"""
from __future__ import annotations

import errno
import math
import os
import time
from typing import Any, Iterable

from shim import _orig, runtime
from shim.socket import POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI

__all__ = ["select", "poll", "wait_ready"]

_monotonic = time.monotonic
_READ_SET = POLLIN | 0x040 | 0x080 | POLLHUP | POLLERR   # what select() counts as readable
_WRITE_SET = POLLOUT | 0x100 | 0x200 | POLLERR
_SLICE = 0.005  # kernel-fd polling period when the library OS cannot watch kernel fds
_PRI_SLICE = 0.05  # urgent-data polling period (POLLPRI on library-OS sockets)


def _kernel_backed(st: Any) -> bool:
    """Is the socket's qd a kernel socket carrying its data (posix; shm's kernel path)?"""
    kb = getattr(st, "kernel_backed", None)
    if kb is None:
        try:
            kb = st.los.stats(st.qd).get("path") == "kernel"
        except OSError:
            kb = False
        st.kernel_backed = kb
    return kb


def fileno_of(obj: Any) -> int:
    """``PyObject_AsFileDescriptor``: an int, or an object with a ``fileno()`` method."""
    if isinstance(obj, int):
        fd = int(obj)
    else:
        meth = getattr(obj, "fileno", None)
        if meth is None:
            raise TypeError("argument must be an int, or have a fileno() method.")
        fd = meth()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
        fd = int(fd)
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def _kernel_poll(kern: dict[int, int], timeout: float | None) -> dict[int, int]:
    p = _orig.poll_fn()
    for fd, ev in kern.items():
        p.register(fd, ev)
    ms = None if timeout is None else math.ceil(timeout * 1000)
    return dict(p.poll(ms))


def wait_ready(rt: runtime.Runtime, shim: list[tuple[int, Any, int]], kern: dict[int, int],
               timeout: float | None) -> dict[int, int]:
    """Wait until one of the fds is ready; returns {fd: revents} of all ready fds.

    ``shim``: (fd, SocketState, events); ``kern``: kernel fd -> events (poll bits)."""
    los = rt.los
    deadline = None if timeout is None else _monotonic() + timeout
    polled = False
    # Urgent (out-of-band) data has no token: when a program asks for POLLPRI (select's
    # third list) on a socket whose qd is a kernel socket, the qd is polled for it, and
    # waits are sliced so that it is seen within _PRI_SLICE.
    pri = {fd: st.qd for fd, st, ev in shim if ev & POLLPRI and _kernel_backed(st)}
    while True:
        ready, toks = _check(rt, shim, kern, pri)
        if ready:
            if toks and not polled:  # once: let the library OS report what else is ready
                _harvest(rt, toks)
                ready, _ = _check(rt, shim, kern, pri)
            return ready
        remaining = None if deadline is None else max(0.0, deadline - _monotonic())
        if polled and remaining == 0:
            return {}
        polled = True
        if remaining == 0:  # a zero timeout: one poll of the library OS, no kernel watches
            if toks:
                _harvest(rt, toks)
            continue
        if pri:  # wait in slices; the deadline still ends the loop
            remaining = _PRI_SLICE if remaining is None else min(remaining, _PRI_SLICE)
        if kern and rt.watch_ok is not False:
            wtoks: list[int] = []
            try:
                for fd, ev in kern.items():
                    wtoks.append(los.watch_fd(fd, ev))
            except (OSError, AttributeError) as e:
                for w in wtoks:
                    _unwatch(los, w)
                wtoks = []
                if isinstance(e, AttributeError) or e.errno == errno.ENOSYS:
                    rt.watch_ok = False
                    continue
                if _kernel_poll(kern, 0):  # e.g. EBADF: the kernel poll reports it
                    continue
            else:
                rt.watch_ok = True
            try:
                if toks or wtoks:
                    rt.wait_tokens(list(toks) + wtoks, remaining)
                else:
                    time.sleep(min(_SLICE, remaining if remaining is not None else _SLICE))
            finally:
                for w in wtoks:
                    _unwatch(los, w)
        elif kern:
            if toks:
                sl = _SLICE if remaining is None else min(_SLICE, remaining)
                rt.wait_tokens(list(toks), sl)
            else:
                _kernel_poll(kern, remaining)  # the next check reports what is ready
        elif toks:
            rt.wait_tokens(list(toks), remaining)
        else:
            # nothing can become ready but through another thread's call: look again soon
            time.sleep(0.05 if remaining is None else min(0.05, remaining))
        if toks:
            _harvest(rt, toks)


def _check(rt: runtime.Runtime, shim: list[tuple[int, Any, int]],
           kern: dict[int, int], pri: dict[int, int]) -> tuple[dict[int, int], dict[int, None]]:
    ready: dict[int, int] = {}
    toks: dict[int, None] = {}
    with rt.lock:
        for fd, st, ev in shim:
            m = st.poll_mask(ev, toks)
            if m:
                ready[fd] = ready.get(fd, 0) | m
    if pri:
        urgent = _kernel_poll({qd: POLLPRI for qd in pri.values()}, 0)
        for fd, qd in pri.items():
            if urgent.get(qd, 0) & POLLPRI:
                ready[fd] = ready.get(fd, 0) | POLLPRI
    if kern:
        for fd, m in _kernel_poll(kern, 0).items():
            if m:
                ready[fd] = ready.get(fd, 0) | m
    return ready, toks


def _harvest(rt: runtime.Runtime, toks: dict[int, None]) -> None:
    """Dispatch every completed token of ``toks`` (polling the library OS once)."""
    los = rt.los
    pending = [qt for qt in toks if qt in rt.tokens]
    if not pending:
        return
    try:
        _, r = los.wait_any(pending, 0)  # polls the library OS once
    except TimeoutError:
        return
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return  # another thread consumed one of them: it dispatches it; good enough
    rt.dispatch(r)
    for qt in pending:  # then everything else already completed, in one pass
        if qt == r.qt or qt not in rt.tokens:
            continue
        try:
            if los.is_done(qt):
                rt.dispatch(los.wait(qt, 0))
        except (TimeoutError, OSError):
            pass  # consumed by another thread meanwhile: it dispatches it


def _unwatch(los: Any, qt: int) -> None:
    try:
        los.unwatch_fd(qt)
    except (OSError, TypeError):
        pass


def _classify(rt: runtime.Runtime, fds: dict[int, int]) -> tuple[list, dict[int, int]]:
    shim, kern = [], {}
    by_fd = rt.by_fd
    for fd, ev in fds.items():
        st = by_fd.get(fd)
        if st is not None and not st.closed:
            shim.append((fd, st, ev))
        else:
            kern[fd] = ev
    return shim, kern


# =============================================================================================
# select.select
# =============================================================================================
def select(rlist: Iterable[Any], wlist: Iterable[Any], xlist: Iterable[Any],
           timeout: float | None = None) -> tuple[list, list, list]:
    """``select.select`` that understands library-OS sockets."""
    rt = runtime.current()
    if rt is None:
        return _orig.select_fn(rlist, wlist, xlist, timeout)
    if timeout is not None:
        if not isinstance(timeout, (int, float)):
            try:
                timeout = timeout.__index__()
            except AttributeError:
                raise TypeError("timeout must be a float or None") from None
        if math.isnan(timeout):
            raise ValueError("Invalid value NaN (not a number)")
        if timeout < 0:
            raise ValueError("timeout must be non-negative")
    lists = []
    for seq in (rlist, wlist, xlist):
        try:
            items = list(seq) if not isinstance(seq, (list, tuple)) else seq
        except TypeError:
            raise TypeError("arguments 1-3 must be sequences") from None
        lists.append([(obj, fileno_of(obj)) for obj in items])
    fds: dict[int, int] = {}
    for (items, bit) in zip(lists, (POLLIN, POLLOUT, POLLPRI)):
        for _, fd in items:
            fds[fd] = fds.get(fd, 0) | bit
    shim, kern = _classify(rt, fds)
    if not shim:  # kernel fds only: the kernel's select (fileno() is not called again)
        r, w, x = _orig.select_fn(*[[fd for _, fd in items] for items in lists], timeout)
        kready: dict[int, int] = {}
        for fds_, bit in ((r, POLLIN), (w, POLLOUT), (x, POLLPRI)):
            for fd in fds_:
                kready[fd] = kready.get(fd, 0) | bit
        ready = kready
    else:
        ready = wait_ready(rt, shim, kern, timeout)
    for fd in fds:
        if ready.get(fd, 0) & POLLNVAL:  # a closed fd, as the kernel's select says
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    out = []
    for (items, sets) in zip(lists, (_READ_SET, _WRITE_SET, POLLPRI)):
        out.append([obj for obj, fd in items if ready.get(fd, 0) & sets])
    return out[0], out[1], out[2]


# =============================================================================================
# select.poll
# =============================================================================================
def _mask(eventmask: Any) -> int:
    if not isinstance(eventmask, int):
        raise TypeError(f"'{type(eventmask).__name__}' object cannot be interpreted as an integer")
    if eventmask < 0:
        raise ValueError("value must be positive")
    if eventmask > 0xFFFF:
        raise OverflowError("Python int too large for C unsigned short")
    return int(eventmask)


class _Poll:
    """What ``select.poll()`` returns: a poll object that understands library-OS sockets."""

    __slots__ = ("_fds", "_polling")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("cannot create 'select.poll' instances")

    def register(self, fd: Any, eventmask: int = POLLIN | POLLPRI | POLLOUT) -> None:
        fd = fileno_of(fd)
        self._fds[fd] = _mask(eventmask)

    def modify(self, fd: Any, eventmask: int) -> None:
        fd = fileno_of(fd)
        mask = _mask(eventmask)
        if fd not in self._fds:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        self._fds[fd] = mask

    def unregister(self, fd: Any) -> None:
        fd = fileno_of(fd)
        del self._fds[fd]

    def poll(self, timeout: Any = None) -> list[tuple[int, int]]:
        if timeout is not None:
            if not isinstance(timeout, (int, float)):
                try:
                    timeout = timeout.__index__()
                except AttributeError:
                    raise TypeError(f"'{type(timeout).__name__}' object cannot be interpreted "
                                    "as an integer") from None
            if isinstance(timeout, float) and math.isnan(timeout):
                raise ValueError("Invalid value NaN (not a number)")
            if timeout >= 2 ** 63 // 10 ** 6:
                raise OverflowError("timeout is too large")
            timeout = None if timeout < 0 else timeout / 1000.0
        if self._polling:
            raise RuntimeError("concurrent poll() invocation")
        rt = runtime.current()
        fds = dict(self._fds)
        if rt is None:
            shim, kern = [], fds
        else:
            shim, kern = _classify(rt, fds)
        self._polling = True
        try:
            if not shim:
                ready = _kernel_poll(kern, timeout)
            else:
                ready = wait_ready(rt, shim, kern, timeout)  # type: ignore[arg-type]
        finally:
            self._polling = False
        return [(fd, ready[fd]) for fd in fds if ready.get(fd)]


_Poll.__module__ = "select"
_Poll.__name__ = _Poll.__qualname__ = "poll"


def poll() -> _Poll:
    """``select.poll()``: a poll object over queue tokens and kernel fds."""
    p = object.__new__(_Poll)
    p._fds = {}
    p._polling = False
    return p
