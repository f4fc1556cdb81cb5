"""``select.select`` and ``select.poll`` over queue tokens plus kernel fds.

An fd that belongs to a library-OS socket is ready according to its tokens (an outstanding
pop completed, an accept or connect finished, few enough unfinished pushes). Kernel fds in
the same call (pipes, asyncio's self-pipe when it is a kernel socket, a signal wake-up fd)
are watched with ``LibOS.watch_fd`` tokens; a library OS without ``watch_fd`` gets them
polled between short waits. Calls that involve kernel fds only go straight to the kernel.

``select.select`` takes its fds anew on every call, so it looks at all of them and waits
with one ``wait_any``. A ``select.poll`` object (and so every selector: ``PollSelector``,
``DefaultSelector``) keeps its registrations, and is O(ready) like epoll: each call looks
only at the fds registered or modified since the last call, the fds that were ready at the
last call, and the sockets whose state changed since (``Runtime.changed``, a log every
dispatched completion, close, shutdown... appends to); it waits with ``wait_next_n`` for
completions of its own sockets' tokens only (``only=``). A change made by another thread
while a poll waits (a recv that took the token it waited for, a close) wakes it through a
private memory queue (``Runtime.poke_poll``).

With ``shim._speedups`` (not under ``DEMISHIM_NO_C=1``), ``select.poll()``, a new poll
object's ``register`` and zero-timeout ``poll``, ``select.select``'s zero-timeout look at one
socket and the waits are C; the Python functions here (kept as ``_Poll._py_poll``,
``_Poll._py_register`` and ``_py_select``) do everything else.
"""
from __future__ import annotations

import errno
import math
import os
import threading
import time
from typing import Any, Iterable

from shim import _orig, runtime
from queueapi.types import Opcode
from shim.socket import (CONNECTED, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI,
                         POP_SIZE, SPEEDUPS)

_POP = Opcode.POP
# shim._speedups' versions of the per-fd loops below (None: the Python loops)
_c_scan = SPEEDUPS.scan if SPEEDUPS is not None else None
_c_gather = SPEEDUPS.gather if SPEEDUPS is not None else None
_c_take_done = SPEEDUPS.take_done if SPEEDUPS is not None else None
_c_dispatch = SPEEDUPS.dispatch if SPEEDUPS is not None else None

__all__ = ["select", "poll", "wait_ready"]

_monotonic = time.monotonic
_get_ident = threading.get_ident
_active_count = threading.active_count
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
    _add_kernel_ready(ready, kern, pri)
    return ready, toks


def _add_kernel_ready(ready: dict[int, int], kern: dict[int, int] | None,
                      pri: dict[int, int] | None) -> None:
    """Add to ``ready`` what a zero-timeout poll of the kernel fds finds: ``kern`` (fd ->
    events) and, for shim sockets with a kernel twin, urgent data (``pri``: fd -> twin qd)."""
    if pri:
        urgent = _kernel_poll({qd: POLLPRI for qd in pri.values()}, 0)
        for fd, qd in pri.items():
            if urgent.get(qd, 0) & POLLPRI:
                ready[fd] = ready.get(fd, 0) | POLLPRI
    if kern:
        for fd, m in _kernel_poll(kern, 0).items():
            if m:
                ready[fd] = ready.get(fd, 0) | m


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
    if timeout == 0 and _c_probe_fd is not None and len(fds) == 1 and not lists[1] \
            and not lists[2]:  # is there input on this one connection? (in C)
        got = _c_probe_fd(rt, lists[0][0][1])
        if got is not None:
            return ([obj for obj, _ in lists[0]] if got else []), [], []
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


_NEXT_N = 256  # completions taken per wait
_WAIT_ANY_MAX = 256  # a poll waiting on more tokens than this uses wait_next_n
_MINE_SLACK = 64  # stale entries allowed in a poll's token set before it is pruned


class _Poll:
    """What ``select.poll()`` returns: a poll object that understands library-OS sockets.

    It is O(ready), like epoll: each library-OS socket registered here keeps one token
    outstanding (its pop, accept, connect or oldest push) across calls; a call looks only at
    the fds registered or modified since the last call, the fds ready at the last call, and
    the sockets whose state changed since (``Runtime.changed``: a completion was dispatched
    to them, they were closed, shut down...), then waits with ``wait_next_n`` for
    completions of its own sockets' tokens. Kernel fds are polled (and watched) each call.
    """

    __slots__ = ("_fds", "_polling", "_rt", "_shim", "_by_st", "_kern", "_pri", "_check",
                 "_ready", "_seq", "_poked", "_wake_toks", "_watch_toks", "_mine")

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("cannot create 'select.poll' instances")

    def _init(self) -> None:
        self._fds: dict[int, int] = {}       # every registered fd -> its event mask
        self._polling = False
        self._rt: Any = None                 # the runtime the classification below is for
        self._shim: dict[int, Any] = {}      # fd -> SocketState (library-OS sockets)
        self._by_st: dict[Any, list[int]] = {}  # SocketState -> its fds registered here
        self._kern: dict[int, int] = {}      # kernel fd -> event mask
        self._pri: dict[int, int] = {}       # fd -> qd: POLLPRI wanted on a kernel-backed qd
        self._check: set[int] = set()        # fds to look at on the next call
        self._ready: list[int] = []          # library-OS fds ready at the last call
        self._seq = 0                        # cursor in the runtime's readiness log
        self._poked = False
        self._wake_toks: dict[int, None] = {}
        self._watch_toks: dict[int, None] = {}
        # the ``only`` of this poll's wait_next_n: the tokens its sockets wait on (poll_mask
        # adds them), its wake-ups and kernel-fd watches. A dict, so that the library OS
        # tests membership in C; an entry whose token was consumed elsewhere (a recv waited
        # on it) or whose socket left this poll is harmless (tokens are never reused: at
        # worst this poll dispatches a completion its socket's state would get anyway) and
        # is pruned once there are _MINE_SLACK more entries than two per registered fd
        self._mine: dict[int, None] = {}

    # ------------------------------------------------------------------ registration
    def _drop(self, fd: int) -> None:
        """Forget how ``fd`` was classified (the runtime lock held, if any)."""
        st = self._shim.pop(fd, None)
        if st is not None:
            fl = self._by_st.get(st)
            if fl is not None:
                try:
                    fl.remove(fd)
                except ValueError:
                    pass
                if not fl:
                    del self._by_st[st]
        self._kern.pop(fd, None)
        self._pri.pop(fd, None)

    def _place(self, rt: runtime.Runtime, fd: int) -> Any:
        """(Re)classify ``fd``: its SocketState, or None for a kernel fd (lock held)."""
        self._drop(fd)
        mask = self._fds.get(fd)
        if mask is None:
            return None
        st = rt.by_fd.get(fd)
        if st is not None and not st.closed:
            self._shim[fd] = st
            fl = self._by_st.get(st)
            if fl is None:
                self._by_st[st] = [fd]
            else:
                fl.append(fd)
            if mask & POLLPRI and _kernel_backed(st):
                self._pri[fd] = st.qd
            return st
        self._kern[fd] = mask
        return None

    def _changed(self, fd: int) -> None:
        rt = self._rt
        if rt is None:
            return
        with rt.lock:
            self._drop(fd)
            self._check.add(fd)

    def register(self, fd: Any, eventmask: int = POLLIN | POLLPRI | POLLOUT) -> None:
        fd = fileno_of(fd)
        self._fds[fd] = _mask(eventmask)
        self._changed(fd)

    def modify(self, fd: Any, eventmask: int) -> None:
        fd = fileno_of(fd)
        mask = _mask(eventmask)
        if fd not in self._fds:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        self._fds[fd] = mask
        self._changed(fd)

    def unregister(self, fd: Any) -> None:
        fd = fileno_of(fd)
        del self._fds[fd]
        self._changed(fd)

    # ------------------------------------------------------------------ polling
    def poll(self, timeout: Any = None) -> list[tuple[int, int]]:
        return list(self._poll_ready(timeout).items())

    def _poll_ready(self, timeout: Any = None) -> dict[int, int]:
        """``poll`` as a dict fd -> revents (DemiSelector.select reads it directly)."""
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
            if not -2 ** 31 <= math.ceil(timeout) <= 2 ** 31 - 1:  # a C int of milliseconds
                raise OverflowError("timeout is too large")
            timeout = None if timeout < 0 else timeout / 1000.0
        if self._polling:
            raise RuntimeError("concurrent poll() invocation")
        rt = runtime.current()
        self._polling = True
        try:
            if rt is None:
                self._rt = None
                fds = self._fds
                ready = _kernel_poll(dict(fds), timeout)
                return {fd: ready[fd] for fd in fds if ready.get(fd)}
            try:
                if _c_wait is not None:  # _wait's common case in C (it calls _wait for the rest)
                    if self._rt is not rt:  # a new poll object
                        if timeout == 0:  # a probe of one connection (hiredis, per command)
                            ready = _c_probe(self, rt)
                            if ready is not None:
                                return ready
                        with rt.lock:  # classified here, so that its first wait is C's too
                            self._reset(rt)
                    return _c_wait(self, rt, timeout)
                return self._wait(rt, timeout)
            except BaseException:
                self._unblock(rt, _get_ident())
                raise
        finally:
            self._polling = False

    def _scan(self, rt: runtime.Runtime) -> dict[int, int]:
        """The ready library-OS fds among those that may have changed (the lock held)."""
        log = rt.log
        start = self._seq - rt.log_base
        if self._rt is not rt or start < 0:
            self._reset(rt)
            cands: Any = self._check
            self._check = set()
        else:
            cands = self._check
            self._check = set()
            cands.update(self._ready)
            if start < len(log) and _c_gather is not None:  # the loop below in C
                _c_gather(cands, log, start, self._by_st)
            elif start < len(log):
                by_st = self._by_st
                for st in (log[start:] if start else log):
                    fl = by_st.get(st)
                    if fl is not None:
                        cands.update(fl)
        self._seq = rt.log_base + len(log)
        ready: dict[int, int] = {}
        if not cands:
            self._ready = []
            return ready
        fds, shim, by_fd, toks = self._fds, self._shim, rt.by_fd, self._mine
        tokens, pop = rt.tokens, rt.los.pop
        if _c_scan is not None:  # the loop below in C (the uncommon fds: _scan_slow)
            ready = _c_scan(self, rt, cands, fds, shim, by_fd, toks, tokens)
            cands = ()
        for fd in cands:
            mask = fds.get(fd)
            if mask is None:
                continue
            st = shim.get(fd)
            if st is None or st.closed or by_fd.get(fd) is not st:
                st = self._place(rt, fd)
                if st is None:
                    continue
            if mask == POLLIN and st.status is CONNECTED and st.stream and not st.closing:
                # SocketState.poll_mask's common case, inlined with ensure_pop (a
                # selector's EVENT_READ on a connection: every request of a server)
                if st.rbuf or st.eof or st.shut_rd:
                    ready[fd] = POLLIN
                    continue
                if not st.rerr:
                    qt = st.pop_qt
                    if qt is None:
                        try:
                            qt = st.pop_qt = pop(st.qd, POP_SIZE)
                        except OSError:
                            qt = None  # poll_mask below reports it
                        else:
                            tokens[qt] = (st, "pop")
                    if qt is not None:
                        toks[qt] = None
                        continue
            m = st.poll_mask(mask, toks)
            if m:
                ready[fd] = m
        if len(toks) > 2 * len(fds) + _MINE_SLACK:  # (a pop and a push per fd)
            self._prune(rt)
        self._ready = list(ready)
        return ready

    def _reset(self, rt: runtime.Runtime) -> None:
        """Classify every registered fd anew and mark all of them to be looked at: the first
        call, a new runtime, or too far behind in the runtime's log (lock held)."""
        self._rt = rt
        self._mine = dict.fromkeys(self._wake_toks)
        self._mine.update(self._watch_toks)
        for fd in list(self._shim) + list(self._kern):
            self._drop(fd)
        self._check = set(self._fds)
        self._seq = rt.log_base + len(rt.log)
        for fd in self._fds:
            self._place(rt, fd)

    def _scan_slow(self, rt: runtime.Runtime, fd: int, mask: int) -> int:
        """_scan's look at one fd, for what shim._speedups.scan leaves to Python."""
        st = self._shim.get(fd)
        if st is None or st.closed or rt.by_fd.get(fd) is not st:
            st = self._place(rt, fd)
            if st is None:
                return 0
        return st.poll_mask(mask, self._mine)

    def _prune(self, rt: runtime.Runtime) -> None:
        """Drop the entries of ``_mine`` that no socket of this poll waits on (lock held)."""
        tokens, by_st = rt.tokens, self._by_st
        keep = {}
        for qt in self._mine:
            ent = tokens.get(qt)
            if (ent is not None and ent[0] in by_st) or qt in self._wake_toks \
                    or qt in self._watch_toks:
                keep[qt] = None
        self._mine.clear()  # in place: a thread poking this poll may hold it
        self._mine.update(keep)

    def _wait(self, rt: runtime.Runtime, timeout: float | None) -> dict[int, int]:
        deadline = None if timeout is None else _monotonic() + timeout
        ident = _get_ident()
        polled = False
        while True:
            with rt.lock:
                ready = self._scan(rt)
                kern = self._kern
                if kern:  # kernel fds that became library-OS sockets (an fd reused)
                    by_fd = rt.by_fd
                    for fd in [fd for fd in kern if fd in by_fd]:
                        st = self._place(rt, fd)
                        if st is not None:
                            m = st.poll_mask(self._fds[fd], self._mine)
                            if m:
                                ready[fd] = m
                                self._ready.append(fd)
                    kern = dict(kern)
                pri = dict(self._pri) if self._pri else None
                if not ready:  # from here on, changes made by other threads wake this poll
                    rt.blocked[ident] = self
                    self._poked = False
            _add_kernel_ready(ready, kern, pri)
            if ready:
                self._unblock(rt, ident)
                if polled or not self._shim:
                    return ready
                # once: let the library OS report what else is ready (data that arrived
                # but was not polled yet), as a kernel poll would see it
                polled = True
                self._take(rt, 0)
                continue
            if not self._shim:  # kernel fds only: the kernel's poll
                self._unblock(rt, ident)
                if polled:
                    return {}
                remaining = None if deadline is None else max(0.0, deadline - _monotonic())
                ready = _kernel_poll(kern, remaining)
                polled = True
                if not ready:
                    return {}
                continue  # look again: a fd may have become a library-OS socket meanwhile
            remaining = None if deadline is None else max(0.0, deadline - _monotonic())
            if polled and remaining == 0:
                self._unblock(rt, ident)
                return {}
            polled = True
            if pri:  # urgent data has no token: wait in slices
                remaining = _PRI_SLICE if remaining is None else min(remaining, _PRI_SLICE)
            if kern and remaining != 0:
                remaining = self._watch(rt, kern, remaining)
            try:
                results = self._next(rt, remaining)
            finally:
                self._unblock(rt, ident)
            if results:
                ready = self._dispatch(rt, results, not kern and not pri)
                if ready:
                    return ready

    def _next(self, rt: runtime.Runtime, timeout: float | None) -> Any:
        """Completions of this poll's tokens (waits up to ``timeout``).

        In a single-threaded program, up to _WAIT_ANY_MAX tokens: ``wait_any`` over them,
        which waits in C (on posix the library OS's epoll is polled and its socket events
        served in C), then every other one already completed is taken with ``wait(qt, 0)``
        (a C call for a completed token). Else ``wait_next_n``, whose cost does not grow
        with the tokens, and whose ``only`` sees the wake-up tokens that other threads add
        while it waits (Runtime.poke_poll); wait_any's list would not."""
        los = rt.los
        mine = self._mine
        ops = getattr(los, "_ops", None)
        if 0 < len(mine) <= _WAIT_ANY_MAX and ops is not None and _active_count() == 1:
            for qt in [qt for qt in mine if qt not in ops]:
                del mine[qt]  # consumed elsewhere (a recv waited on it): wait_any refuses it
            qts = list(mine)
        else:
            qts = None
        if qts:
            try:
                _, r = los.wait_any(qts, timeout)
            except TimeoutError:
                return ()
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # a token consumed elsewhere (a recv waited on it): forget such tokens,
                # and let wait_next_n (which takes no token list) do this wait
                with rt.lock:
                    self._prune(rt)
            else:
                out = [r]
                first = r[2]
                wait = los.wait
                if _c_take_done is not None:  # the loop below in C
                    _c_take_done(qts, ops, first, wait, out)
                    return out
                for qt in qts:
                    op = ops.get(qt)
                    if op is not None and op.result is not None and qt != first:
                        try:
                            out.append(wait(qt, 0))
                        except (OSError, TimeoutError):
                            pass  # taken by another thread meanwhile: it dispatches it
                return out
        try:
            return los.wait_next_n(_NEXT_N, timeout, only=mine)
        except TimeoutError:
            return ()

    def _take(self, rt: runtime.Runtime, timeout: float | None) -> None:
        """Wait up to ``timeout`` for completions of this poll's tokens; dispatch them."""
        results = self._next(rt, timeout)
        if results:
            self._dispatch(rt, results)

    def _dispatch(self, rt: runtime.Runtime, results: Any, quick: bool = False) -> Any:
        """Hand the results to their sockets. With ``quick``: when the readiness of the
        poll's fds follows from these results alone (nothing else changed since the last
        scan, and each result is data or end of stream on a connection registered here
        for POLLIN only: ready for POLLIN), those fds as ``poll`` returns them, without
        another scan; else None. The next call's scan looks at them again."""
        tokens, mine, log = rt.tokens, self._mine, rt.log
        with rt.lock:
            fast = not rt.blocked  # else on_result: its Runtime.changed wakes those polls
            ready: Any = None
            if quick and fast and not self._check and self._seq == rt.log_base + len(log):
                ready = {}
                by_st, fds = self._by_st, self._fds
            if _c_dispatch is not None:  # the loop below in C (True: it makes the dict)
                ready = _c_dispatch(results, tokens, mine, log, self._by_st, self._fds, fast,
                                    ready is not None)
                results = ()
            for r in results:
                qt = r[2]
                mine.pop(qt, None)
                ent = tokens.pop(qt, None)
                if ent is None:
                    ready = None  # a wake-up or a watch: the next scan or kernel poll tells
                    continue
                st = ent[0]
                if fast and r[0] is _POP and ent[1] == "pop" and st.stream:
                    # SocketState.on_result's common case, without its wake-ups (none blocked)
                    st.keep_popped(r)
                    log.append(st)
                    if ready is not None:
                        if st.status is CONNECTED and not (st.closing or st.closed):
                            for fd in by_st.get(st, ()):
                                if fds.get(fd) != POLLIN:
                                    ready = None
                                    break
                                ready[fd] = POLLIN
                        else:
                            ready = None
                else:
                    st.on_result(ent[1], r)
                    ready = None
            if len(log) > runtime.LOG_MAX:
                rt.trim_log()
            if ready is not None:
                # the log's entries since the last scan are this dispatch's, whose fds here
                # are all in ``ready``: the next scan looks at them (``_ready``) without
                # walking those entries
                self._seq = rt.log_base + len(log)
                if ready:
                    self._ready = list(ready)
            return ready

    def _watch(self, rt: runtime.Runtime, kern: dict[int, int],
               remaining: float | None) -> float | None:
        """Watch the kernel fds with ``LibOS.watch_fd``; without it, shorten the wait to
        ``_SLICE`` so they are polled again soon."""
        los = rt.los
        if rt.watch_ok is not False:
            wtoks, mine = self._watch_toks, self._mine
            try:
                for fd, ev in kern.items():
                    w = los.watch_fd(fd, ev)
                    wtoks[w] = mine[w] = None
            except (OSError, AttributeError) as e:
                for w in list(wtoks):
                    _unwatch(los, w)
                    mine.pop(w, None)
                wtoks.clear()
                if isinstance(e, AttributeError) or e.errno == errno.ENOSYS:
                    rt.watch_ok = False
                else:
                    return 0.0  # e.g. EBADF: the kernel poll reports it
            else:
                rt.watch_ok = True
                return remaining
        return _SLICE if remaining is None else min(_SLICE, remaining)

    def _unblock(self, rt: runtime.Runtime, ident: int) -> None:
        """No longer blocked: drop the wake-ups and the kernel-fd watches of this call."""
        with rt.lock:
            if rt.blocked.get(ident) is self:
                del rt.blocked[ident]
            los, mine = rt.los, self._mine
            if self._wake_toks:
                for qt in list(self._wake_toks):
                    mine.pop(qt, None)
                    try:
                        if los.is_done(qt):
                            los.wait(qt, 0)
                    except (OSError, TimeoutError):
                        pass
                self._wake_toks.clear()
            if self._watch_toks:
                for qt in list(self._watch_toks):
                    mine.pop(qt, None)
                    _unwatch(los, qt)
                self._watch_toks.clear()


_Poll.__module__ = "select"
_Poll.__name__ = _Poll.__qualname__ = "poll"
_c_wait = _c_probe = _c_probe_fd = None


def poll() -> _Poll:
    """``select.poll()``: a poll object over queue tokens and kernel fds."""
    p = object.__new__(_Poll)
    p._init()
    return p


if SPEEDUPS is not None:
    # C poll() and register() go on the class (the Python ones stay as _py_poll and
    # _py_register: they do all but a new poll object's probe and registration)
    SPEEDUPS.install_poll(_Poll, runtime.Runtime, vars(runtime), runtime.LOG_MAX, _MINE_SLACK,
                          _WAIT_ANY_MAX)
    _c_wait = SPEEDUPS.wait
    _c_probe = SPEEDUPS.probe
    _c_probe_fd = SPEEDUPS.probe_fd
    #: select.poll() in C: a C function, which (as the builtin) does not bind as a method
    poll = SPEEDUPS.poll  # type: ignore[assignment]  # noqa: F811
    #: select.select: a zero-timeout look at one connection in C, the rest the function above
    _py_select = select
    select = SPEEDUPS.install_select(_py_select)  # type: ignore[assignment]  # noqa: F811
    poll.__module__ = select.__module__ = "select"  # (as the builtins they stand for)
