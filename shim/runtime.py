"""The shim's shared state: the library OS, the shim's tokens, fd lookups, stats and --strict.

One ``Runtime`` exists per process once ``shim.install()`` ran. It owns:

* ``los``: the ``queueapi.LibOS`` every patched call goes through;
* ``tokens``: every queue token the shim has outstanding, mapped to the socket state that
  issued it. Whoever consumes a token (a ``recv`` in one thread, a ``select`` in another)
  hands its result to that state through ``dispatch``, so no completion is ever lost;
* ``by_fd``: fd -> socket state for every fd a shim socket answers to (its qd, and the
  extra fds made by ``dup()``/``fromfd()``), so ``select``/``poll``/selectors, which only
  see fds, can find the tokens behind them;
* the counters printed by ``--stats`` and the ``--strict`` switch.
"""
from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections import Counter
from typing import Any, Sequence

__all__ = ["Runtime", "StrictModeError", "get", "current"]

_UNSUPPORTED = {errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT,
                errno.EOPNOTSUPP, errno.ENOSYS, errno.EPFNOSUPPORT, errno.ENOPROTOOPT}


#: the readiness log keeps at most this many entries (a poll object that fell further behind
#: rescans all its fds once)
LOG_MAX = 4096
_get_ident = threading.get_ident


class StrictModeError(RuntimeError):
    """Raised under ``demishim --strict`` where the shim would fall back to the kernel."""


class Stats:
    """What went through the library OS and what fell back to the kernel."""

    def __init__(self, libos: str) -> None:
        self.libos = libos
        self.sockets = 0            # sockets made on the library OS (incl. accepted ones)
        self.files = 0              # regular files opened on the library OS
        self.socket_fallbacks = 0   # sockets that are kernel sockets (or became one)
        self.file_fallbacks = 0     # regular files served by the kernel
        self.passthrough_files = 0  # fds and non-regular files: not the library OS's business
        self.other_fallbacks = 0    # single calls on library-OS objects served by the kernel
        self.calls: Counter[str] = Counter()  # fallback description -> count
        self.pushes = self.pops = self.bytes_out = self.bytes_in = 0

    def add_queue_stats(self, s: dict[str, Any]) -> None:
        self.pushes += s.get("pushes", 0)
        self.pops += s.get("pops", 0)
        self.bytes_out += s.get("bytes_out", 0)
        self.bytes_in += s.get("bytes_in", 0)

    def report(self) -> str:
        def n(k: int, what: str) -> str:
            return f"{k} {what}" + ("" if k == 1 else "s")
        lines = [
            f"demishim stats, library OS {self.libos!r}:",
            f"  through the library OS: {n(self.sockets, 'socket')}, {n(self.files, 'file')} "
            f"({self.pushes} pushes, {self.pops} pops, {self.bytes_out} bytes out, "
            f"{self.bytes_in} bytes in)",
            f"  fell back to the kernel: {n(self.socket_fallbacks, 'socket')}, "
            f"{n(self.file_fallbacks, 'file')}, {n(self.other_fallbacks, 'call')}",
        ]
        for call, k in sorted(self.calls.items()):
            lines.append(f"    {k} x {call}")
        if self.passthrough_files:
            lines.append(f"  left to the kernel (fds, pipes, devices): "
                         f"{n(self.passthrough_files, 'file')}")
        return "\n".join(lines)


class Runtime:
    # slots: shim._speedups reads the hot ones at fixed offsets (while the class is
    # unmodified); other attributes still work (``__dict__``)
    __slots__ = ("los", "strict", "lock", "tokens", "by_fd", "detached", "files", "stats",
                 "watch_ok", "log", "log_base", "blocked", "wake_qd", "count_queues",
                 "__dict__", "__weakref__")

    def __init__(self, los: Any, strict: bool = False) -> None:
        self.los = los
        self.strict = strict
        self.lock = threading.RLock()
        self.tokens: dict[int, tuple[Any, str]] = {}
        self.by_fd: dict[int, Any] = {}
        self.detached: dict[int, Any] = {}   # fd -> state, for socket(fileno=fd) to adopt
        self.files: dict[int, Any] = {}      # qd -> weakref of the shim file (DemiFileIO)
        self.stats = Stats(los.name)
        self.watch_ok: bool | None = None   # does the LibOS have watch_fd? (None: not tried)
        # readiness changes, for the selectors (shim.select._Poll): every socket state whose
        # readiness may have changed (a completion was dispatched to it, it was closed,
        # bound, shut down...) is appended here; each poll object reads the entries after its
        # cursor, so a select() costs O(changes + ready) instead of O(registered)
        self.log: list[Any] = []
        self.log_base = 0                   # the sequence number of log[0]
        self.blocked: dict[int, Any] = {}   # thread ident -> the poll object it waits in
        self.wake_qd: int | None = None     # a memory queue whose pops wake a blocked poll
        # whether a closing socket adds its queue's counters to ``stats`` (for report();
        # the launcher turns it off unless --stats: it costs a LibOS.stats call per close)
        self.count_queues = True

    # ------------------------------------------------------------------ fallbacks
    def fallback(self, kind: str, call: str, reason: str, count: int = 1) -> None:
        """Count a fallback to the kernel, or raise ``StrictModeError`` under --strict.

        ``kind``: ``socket``, ``file`` or ``call``."""
        if self.strict:
            raise StrictModeError(
                f"demishim --strict: {call} would fall back to the kernel ({reason}); "
                f"run without --strict to allow kernel fallbacks") from None
        with self.lock:
            st = self.stats
            if kind == "socket":
                st.socket_fallbacks += count
            elif kind == "file":
                st.file_fallbacks += count
            else:
                st.other_fallbacks += count
            st.calls[f"{call}: {reason}"] += count

    # ------------------------------------------------------------------ readiness log
    def changed(self, st: Any) -> None:
        """``st``'s readiness may have changed (the lock held): tell the poll objects."""
        log = self.log
        log.append(st)
        if len(log) > LOG_MAX:
            self.trim_log()
        if self.blocked:
            self._poke(st)

    def trim_log(self) -> None:
        """Drop the oldest entries of the readiness log, keeping LOG_MAX // 2 (lock held)."""
        log = self.log
        drop = len(log) - LOG_MAX // 2
        if drop > 0:
            del log[:drop]
            self.log_base += drop

    def _poke(self, st: Any) -> None:
        """Wake the polls blocked in other threads that watch ``st``: a poll waits for
        completions of its own sockets' tokens only, and a change made by another thread
        (which consumed a token, closed or shut down the socket) completes none of them."""
        me = _get_ident()
        for ident, p in list(self.blocked.items()):
            if ident != me and not p._poked and st in p._by_st:
                p._poked = True
                self.poke_poll(p)

    def poke_poll(self, p: Any) -> None:
        """Complete a token that the blocked poll ``p`` waits for (the lock held)."""
        los = self.los
        try:
            if self.wake_qd is None:
                self.wake_qd = los.queue()
            qt = los.pop(self.wake_qd)
            p._wake_toks[qt] = p._mine[qt] = None
            pq = los.push(self.wake_qd, b"\0")  # completes the pop at once
            if los.is_done(pq):
                los.wait(pq, 0)
        except OSError:
            pass

    # ------------------------------------------------------------------ tokens
    def track(self, qt: int, state: Any, kind: str) -> int:
        """Remember that ``qt`` belongs to ``state`` (lock held by the caller or not)."""
        self.tokens[qt] = (state, kind)
        return qt

    def dispatch(self, r: Any) -> None:
        """Hand a consumed result to the state that issued its token."""
        with self.lock:
            ent = self.tokens.pop(r.qt, None)
            if ent is not None:
                ent[0].on_result(ent[1], r)

    def wait_token(self, qt: int, timeout: float | None) -> bool:
        """Wait for one shim token and dispatch it. True if it completed (here, or in
        another thread that consumed it first), False on timeout."""
        try:
            r = self.los.wait(qt, timeout)
        except TimeoutError:
            return False
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._consumed_elsewhere(qt)
            return True
        self.dispatch(r)
        return True

    def wait_tokens(self, qts: Sequence[int], timeout: float | None) -> Any:
        """``wait_any`` over shim tokens (and watch tokens, returned undispatched).

        Returns the result of a watch token, True when a shim token completed (dispatched),
        or False on timeout."""
        if len(qts) == 1:
            qt = qts[0]
            if qt in self.tokens:
                return self.wait_token(qt, timeout)
        try:
            _, r = self.los.wait_any(qts, timeout)
        except TimeoutError:
            return False
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            for qt in qts:
                if qt in self.tokens:
                    self._consumed_elsewhere(qt)
                    break
            return True
        if r.qt in self.tokens:
            self.dispatch(r)
            return True
        return r

    def _consumed_elsewhere(self, qt: int) -> None:
        # Another thread took the result and is about to dispatch it: let it finish.
        for _ in range(200):
            if qt not in self.tokens:
                return
            time.sleep(0.0005)

    # ------------------------------------------------------------------ stats
    def note_closed(self, qd: int) -> None:
        if not self.count_queues:
            return
        try:
            s = self.los.stats(qd)
        except Exception:
            return
        with self.lock:
            self.stats.add_queue_stats(s)

    def report(self) -> str:
        with self.lock:
            for st in {id(s): s for s in self.by_fd.values()}.values():
                qd = getattr(st, "qd", None)
                if qd is not None and not getattr(st, "closed", True):
                    try:
                        self.stats.add_queue_stats(self.los.stats(qd))
                    except Exception:
                        pass
            return self.stats.report()

    def after_fork_in_child(self) -> None:
        self.lock = threading.RLock()
        self.blocked = {}  # the threads blocked in a poll did not survive the fork


_runtime: Runtime | None = None


def get() -> Runtime:
    """The installed runtime (``RuntimeError`` if ``shim.install()`` has not run)."""
    rt = _runtime
    if rt is None:
        raise RuntimeError("demishim is not installed: call shim.install() first")
    return rt


def current() -> Runtime | None:
    return _runtime


def set_runtime(rt: Runtime | None) -> None:
    global _runtime
    _runtime = rt


def _after_fork() -> None:
    rt = _runtime
    if rt is not None:
        rt.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)


_INTERNAL = ("libos.", "queueapi.")
#: open() callers that are not the program: the import system (io.open_code calls _io.open),
#: runpy and the launcher reading the program itself
_INTERNAL_OPEN = _INTERNAL + ("importlib", "_frozen_importlib", "zipimport", "runpy",
                              "demishim", "shim.")


def internal_caller(depth: int = 2, prefixes: tuple[str, ...] = _INTERNAL) -> bool:
    """True when the code calling the patched function (skipping the stdlib ``socket``
    module's own helpers) is the library OS or queueapi itself, which must get the real,
    unpatched objects."""
    f = sys._getframe(depth)
    while f is not None:
        name = f.f_globals.get("__name__") or ""
        if name == "socket" or name == "shim.patch":  # stdlib helpers, our call wrappers
            f = f.f_back
            continue
        return name.startswith(prefixes) or name in ("libos", "queueapi")
    return False


def internal_open_caller() -> bool:
    """``internal_caller`` for ``open()``: also the import system, runpy, the launcher."""
    return internal_caller(3, _INTERNAL_OPEN)


def unsupported(e: OSError) -> bool:
    """Does ``e`` mean "the library OS cannot do that" (rather than a real error)?"""
    return e.errno in _UNSUPPORTED
