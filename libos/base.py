"""The seam between ``queueapi`` and the library OSes.

A library OS is a ``Backend`` that creates ``Queue`` objects (sockets, pipes, files) and a
``poll(timeout)`` that waits for device events and completes operations. ``queueapi`` owns the
qd table, the tokens, waiting, threads and combinators; a backend never reimplements them.

Contract for queues: every method is called with the LibOS lock held. ``push``/``pop``/
``accept``/``connect`` receive an ``Op`` and must either raise ``OSError`` at once (an error
visible when the call is made; the op is then dropped) or complete the op later (possibly
before returning) through ``core.complete(op, QResult)``. ``close`` completes every pending
op with ``FAILED``/``ECANCELED``.
"""
from __future__ import annotations

import errno
import os
from typing import Any, Protocol

from queueapi._fast import Op as _Op
from queueapi.types import QResult, failed_result

__all__ = ["Op", "Queue", "Backend", "Core", "oserror", "failed"]


def oserror(code: int, detail: str = "") -> OSError:
    """An ``OSError`` with ``code`` and the system's message, plus ``detail`` if given."""
    msg = os.strerror(code)
    if detail:
        msg = f"{msg}: {detail}"
    return OSError(code, msg)


# One pending operation: ``qt`` is the token the application holds, ``qd`` its queue;
# ``result`` is set once on completion; ``callback`` marks an internal op (used by
# combinators), run by the core after completion instead of waking a thread; ``waiter`` is
# the wake-up object of the thread blocked on it; ``lane`` the C fast lane holding it
# pending (see queueapi/_fast.c), ``counted`` whether that lane counted its pop already.
# ``Op(qt, qd, callback=None)``. Implemented in C: the data path makes one per operation.
Op = _Op


def failed(op: Op, code: int) -> QResult:
    """The ``FAILED`` result of ``op`` with errno ``code``."""
    return failed_result(op.qd, op.qt, code)


class Core(Protocol):
    """What a backend may call on the LibOS that owns it."""

    lock: Any

    def complete(self, op: Op, result: QResult) -> None: ...
    def drain(self) -> None: ...


class Queue:
    """A queue behind a qd. Subclasses override what they support; the rest raise."""

    kind = "queue"
    #: one push pops out as exactly one element on this queue
    element_preserving = True

    def __init__(self, core: Any, qd: int) -> None:
        self.core = core
        self.qd = qd
        self.pushes = 0
        self.pops = 0
        self.bytes_out = 0
        self.bytes_in = 0

    # -- control path --------------------------------------------------------------------
    def _not_socket(self, what: str) -> OSError:
        return oserror(errno.ENOTSOCK, f"{what} on a {self.kind} queue")

    def bind(self, addr: Any) -> None:
        raise self._not_socket("bind")

    def listen(self, backlog: int) -> None:
        raise self._not_socket("listen")

    def accept(self, op: Op) -> None:
        raise self._not_socket("accept")

    def connect(self, op: Op, addr: Any) -> None:
        raise self._not_socket("connect")

    def getsockname(self) -> Any:
        raise self._not_socket("getsockname")

    def getpeername(self) -> Any:
        raise self._not_socket("getpeername")

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        raise self._not_socket("setsockopt")

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        raise self._not_socket("getsockopt")

    def shutdown(self, how: int) -> None:
        raise oserror(errno.EOPNOTSUPP, f"shutdown on a {self.kind} queue")

    # -- data path -----------------------------------------------------------------------
    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        raise oserror(errno.EOPNOTSUPP, f"push on a {self.kind} queue")

    def pushto(self, op: Op, segs: tuple[Any, ...], addr: Any) -> None:
        raise oserror(errno.EOPNOTSUPP, f"pushto on a {self.kind} queue")

    def pop(self, op: Op, size: int | None) -> None:
        raise oserror(errno.EOPNOTSUPP, f"pop on a {self.kind} queue")

    def cancel(self, op: Op) -> bool:
        """Withdraw the pending ``op`` (an internal pop of a combinator being closed) without
        completing it. False if it is not pending here (it may have completed already)."""
        return False

    def unpop(self, result: QResult) -> bool:
        """Put a popped element back at the front of this queue, so the next pop returns it
        (a combinator being closed returns what it read ahead). False if not supported."""
        return False

    def close(self) -> None:
        """Cancel pending ops (``FAILED``/``ECANCELED``) and release resources."""

    def orphan(self) -> None:
        """The qd's fd was closed behind the library OS and now belongs to a new queue:
        cancel pending ops and release resources, but never touch that fd."""

    def stats(self) -> dict[str, Any]:
        return {"kind": self.kind, "pushes": self.pushes, "pops": self.pops,
                "bytes_out": self.bytes_out, "bytes_in": self.bytes_in}


class Backend:
    """A library OS: creates device queues and advances them in ``poll``."""

    name = "?"
    #: how long ``wait`` spins on a fast lane before sleeping (nanoseconds; 0: never)
    spin_ns = 0
    #: after this much of a spin, it yields the CPU at each check of the clock (nanoseconds;
    #: negative: never), so that a peer waiting for this CPU can run
    spin_yield_ns = -1
    #: how long a single-threaded wait in C polls the epoll before it sleeps in it
    #: (nanoseconds; 0: never; the posix library OS and those built on it)
    epoll_spin_ns = 0

    def __init__(self, core: Any, config: dict[str, Any]) -> None:
        self.core = core
        self.config = config

    def socket(self, domain: int, type: int, proto: int, framing: bool) -> Queue:
        raise oserror(errno.EAFNOSUPPORT, f"the {self.name} library OS has no sockets")

    def create_pipe(self, name: str) -> Queue:
        raise oserror(errno.EOPNOTSUPP, f"the {self.name} library OS has no pipes")

    def open_pipe(self, name: str) -> Queue:
        raise oserror(errno.EOPNOTSUPP, f"the {self.name} library OS has no pipes")

    def open(self, path: str, flags: int, mode: int, framing: bool) -> Queue:
        raise oserror(errno.EOPNOTSUPP, f"the {self.name} library OS has no files")

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for device events and complete the ops they finish.

        Called without the lock by at most one thread at a time; takes ``core.lock`` to process.
        """
        raise NotImplementedError

    def wake(self) -> None:
        """Make a ``poll`` blocked in another thread return soon."""
        raise NotImplementedError

    def before_sleep(self) -> None:
        """A waiting thread is about to sleep while another thread runs ``poll`` (the lock
        held). A library OS whose poll may not be watching that thread's queues wakes the
        poller here (``wake``); by default nothing is done."""

    def watch_kernel_fd(self, op: Op, fd: int, events: int) -> None:
        """Complete ``op`` (``POP``, ``ret=0``, ``sga=None``, ready mask in ``addr``) once the
        kernel fd ``fd`` is ready for ``events`` (poll bits); see ``LibOS.watch_fd``.
        Called with the lock held. A library OS that cannot watch kernel fds keeps this
        default; the shim then polls those fds itself between short waits."""
        raise oserror(errno.ENOSYS, f"the {self.name} library OS cannot watch kernel fds")

    def unwatch_kernel_fd(self, op: Op) -> None:
        """Forget the pending watch ``op`` (the lock held)."""

    def after_fork_in_child(self) -> None:
        """Re-arm private state (event loops, wake-up fds) in a forked child."""

    def shutdown_backend(self) -> None:
        """Release the backend's own resources (queues are closed by the core first)."""

    def stats(self) -> dict[str, Any]:
        return {}
