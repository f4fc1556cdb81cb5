"""The posix library OS (Demikernel's catnap): kernel sockets driven by one epoll.

Sockets are non-blocking and registered edge-triggered; ``poll`` waits in ``epoll_wait`` and
lets each ready queue continue its pending ops. An eventfd in the same epoll lets another
thread wake the poller. Files use ``pread``/``pwritev``; pipes are AF_UNIX stream sockets in
the abstract namespace carrying framed elements.

Waiting: a wait that finds nothing complete polls the epoll (``epoll_wait`` with timeout 0)
for up to ``spin_us`` (config ``[posix]`` in ``$DEMI_CONFIG``, default 200 µs) before it
sleeps in it, as Demikernel's library OSes poll: a busy peer's next request usually comes
sooner than a sleeping process is woken on a VM. After ``spin_yield_us`` (default 20 µs;
negative: never) each poll also yields the CPU to any other runnable thread. ``spin_us = 0``
sleeps at once, as a selectors loop does. The spin is the single-threaded C wait's
(queueapi/_fast.c); a wait while other threads wait too sleeps at once.
"""
from __future__ import annotations

import errno
import os
import select
import socket as _socket
from typing import Any

from libos import base
from libos.posix.files import FileQueue
from libos.posix.sockets import PipeQueue, SocketQueue
from queueapi.types import Opcode, QResult

_ET_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_ET_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_FAMILIES = (_socket.AF_INET, _socket.AF_INET6, _socket.AF_UNIX)
_TYPES = (_socket.SOCK_STREAM, _socket.SOCK_DGRAM)
MAX_EVENTS = 256
#: config ``spin_us``: how long a wait polls before it sleeps (see the module docstring)
DEFAULT_SPIN_US = 200.0
#: config ``spin_yield_us``: after this much of a spin, each poll also yields the CPU
DEFAULT_SPIN_YIELD_US = 20.0
_FD_ALWAYS = select.EPOLLERR | select.EPOLLHUP  # reported whatever a watch asked for


def pipe_address(name: str) -> str:
    """The abstract AF_UNIX address of pipe ``name`` for this user."""
    return f"\0pydemikernel-pipe.{os.getuid()}.{name}"


class Backend(base.Backend):
    name = "posix"

    def __init__(self, core: Any, config: dict[str, Any]) -> None:
        super().__init__(core, config)
        spin_us = float(config.get("spin_us", DEFAULT_SPIN_US))
        yield_us = float(config.get("spin_yield_us", DEFAULT_SPIN_YIELD_US))
        if not spin_us >= 0:
            raise ValueError(f"[{self.name}] spin_us must be >= 0, got {spin_us}")
        self.epoll_spin_ns = int(spin_us * 1e3)
        self.spin_yield_ns = int(yield_us * 1e3) if yield_us >= 0 else -1
        self.epoll_waits = 0
        self._watched: dict[int, Any] = {}
        self._kfd_watches: dict[int, list[tuple[base.Op, int]]] = {}  # kernel fd -> watches
        self._open_epoll()

    def _open_epoll(self) -> None:
        self._ep = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake_fd, select.EPOLLIN)
        fc = getattr(self.core, "_fc", None)
        busy = self.c_poll_busy()
        if fc is not None and (type(self).poll is Backend.poll or busy is not None):
            # single-threaded waits run ``poll`` in C (queueapi/_fast.c): the same dispatch,
            # with input on a SockLane's socket served there
            fc.set_epoll(self._ep.fileno(), self._watched, self._other_event, busy)

    def c_poll_busy(self) -> dict[Any, Any] | None:
        """For a subclass with its own ``poll`` that is this class's poll whenever a dict is
        empty: that dict (the C poll steps aside while it is not). None: no such dict."""
        return None

    # ------------------------------------------------------------------ queues
    def socket(self, domain: int, type: int, proto: int, framing: bool) -> base.Queue:
        if domain not in _FAMILIES:
            raise base.oserror(errno.EAFNOSUPPORT, f"address family {domain} (posix supports "
                               "AF_INET, AF_INET6 and AF_UNIX)")
        if type not in _TYPES:
            raise base.oserror(errno.EPROTONOSUPPORT if type > 0 else errno.EINVAL,
                               f"socket type {type} (posix supports SOCK_STREAM and SOCK_DGRAM)")
        if framing and type != _socket.SOCK_STREAM:
            raise base.oserror(errno.EINVAL, "framing=True is for stream sockets "
                               "(datagrams keep their boundaries already)")
        sock = _socket.socket(domain, type | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC, proto)
        return SocketQueue(self, sock, framing)

    def create_pipe(self, name: str) -> base.Queue:
        lsock = _socket.socket(_socket.AF_UNIX,
                               _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
        try:
            lsock.bind(pipe_address(name))
            lsock.listen(1)
        except OSError as e:
            lsock.close()
            if e.errno == errno.EADDRINUSE:
                raise base.oserror(errno.EEXIST, f"a pipe named {name!r} exists") from None
            raise
        return PipeQueue(self, lsock)

    def open_pipe(self, name: str) -> base.Queue:
        sock = _socket.socket(_socket.AF_UNIX,
                              _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
        err = sock.connect_ex(pipe_address(name))
        if err:
            sock.close()
            if err in (errno.ECONNREFUSED, errno.ENOENT):
                raise base.oserror(errno.ENOENT, f"no pipe named {name!r} is waiting to be opened")
            if err == errno.EAGAIN:
                raise base.oserror(errno.EBUSY, f"pipe {name!r} is already open")
            raise base.oserror(err, f"open_pipe({name!r})")
        return SocketQueue(self, sock, True, "connected")

    def open(self, path: str, flags: int, mode: int, framing: bool) -> base.Queue:
        return FileQueue(self.core, path, flags, mode, framing)

    # ------------------------------------------------------------------ events
    def watch(self, q: SocketQueue) -> None:
        """Watch a socket for input; ``arm_output`` adds output when a send would block."""
        self._ep.register(q.qd, _ET_IN)
        self._watched[q.qd] = q

    def arm_output(self, q: SocketQueue) -> None:
        """Also report EPOLLOUT edges for ``q`` (one epoll_ctl, on backpressure only)."""
        if self._watched.get(q.qd) is q:
            self._ep.modify(q.qd, _ET_MASK)

    def unwatch(self, q: SocketQueue) -> None:
        self.unwatch_fd(q.qd, q)

    def watch_fd(self, fd: int, handler: Any) -> None:
        """Call ``handler.on_events(mask)`` (with the lock held) when ``fd`` becomes ready;
        edge-triggered."""
        self._ep.register(fd, _ET_MASK)
        self._watched[fd] = handler

    def unwatch_fd(self, fd: int, handler: Any = None) -> None:
        """Stop watching ``fd`` (only if ``handler`` is its handler, when given)."""
        if fd in self._watched and (handler is None or self._watched[fd] is handler):
            del self._watched[fd]
            try:
                self._ep.unregister(fd)
            except OSError:
                pass

    def poll(self, timeout: float) -> None:
        self.epoll_waits += 1
        events = self._ep.poll(timeout, MAX_EVENTS)
        if not events:
            return
        core = self.core
        with core.lock:
            watched = self._watched
            for fd, ev in events:
                q = watched.get(fd)
                if q is not None:
                    q.on_events(ev)
                else:
                    self._other_event(fd, ev)
            if core._deferred:
                core.drain()

    def _other_event(self, fd: int, ev: int) -> None:
        """An event of an fd that is not a queue's: the wake-up eventfd or a kernel fd watch
        (the lock held)."""
        if fd == self._wake_fd:
            try:
                os.eventfd_read(self._wake_fd)
            except BlockingIOError:
                pass
        elif fd in self._kfd_watches:
            self._kernel_fd_ready(fd, ev)

    # ------------------------------------------------------------------ kernel fd watches
    def watch_kernel_fd(self, op: base.Op, fd: int, events: int) -> None:
        """One-shot watch of a kernel fd (``LibOS.watch_fd``): EPOLLONESHOT in our epoll."""
        if fd in self._watched or fd == self._wake_fd:
            raise base.oserror(errno.EINVAL, f"fd {fd} belongs to the library OS")
        ops = self._kfd_watches.setdefault(fd, [])
        ops.append((op, events))
        try:
            self._arm_kernel_fd(fd)
        except OSError as e:
            ops.remove((op, events))
            if not ops:
                del self._kfd_watches[fd]
            if e.errno != errno.EPERM:
                raise
            # a regular file or a device without poll support is always ready (as select says)
            self.core.complete(op, QResult(Opcode.POP, fd, op.qt, 0, None, None, events))

    def _arm_kernel_fd(self, fd: int) -> None:
        mask = select.EPOLLONESHOT
        for _, ev in self._kfd_watches[fd]:
            mask |= ev
        try:
            self._ep.modify(fd, mask)
        except FileNotFoundError:  # not registered (first watch, or the fd was closed and reused)
            self._ep.register(fd, mask)

    def unwatch_kernel_fd(self, op: base.Op) -> None:
        fd = op.qd
        ops = self._kfd_watches.get(fd)
        if not ops:
            return
        self._kfd_watches[fd] = ops = [w for w in ops if w[0] is not op]
        if ops:
            try:
                self._arm_kernel_fd(fd)
            except OSError:
                pass
            return
        del self._kfd_watches[fd]
        if fd not in self._watched and fd != self._wake_fd:
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def _kernel_fd_ready(self, fd: int, ev: int) -> None:
        """Complete the watches of ``fd`` that ``ev`` satisfies; re-arm the others."""
        done, rest = [], []
        for w in self._kfd_watches[fd]:
            (done if ev & (w[1] | _FD_ALWAYS) else rest).append(w)
        for op, want in done:
            self.core.complete(op, QResult(Opcode.POP, fd, op.qt, 0, None, None,
                                           ev & (want | _FD_ALWAYS)))
        if rest:
            self._kfd_watches[fd] = rest
            try:
                self._arm_kernel_fd(fd)
            except OSError:
                pass
        else:
            del self._kfd_watches[fd]  # stays registered but disarmed (EPOLLONESHOT)

    def wake(self) -> None:
        os.eventfd_write(self._wake_fd, 1)

    def after_fork_in_child(self) -> None:
        old_ep, old_wake = self._ep, self._wake_fd
        self._open_epoll()
        old_ep.close()
        os.close(old_wake)
        for fd, q in self._watched.items():
            self._ep.register(fd, _ET_MASK)  # both directions: edges may have been missed
        for fd in list(self._kfd_watches):
            try:
                self._arm_kernel_fd(fd)
            except OSError:
                pass
        for q in self._watched.values():
            if isinstance(q, SocketQueue):
                q.readable = q.writable = True

    def shutdown_backend(self) -> None:
        fc = getattr(self.core, "_fc", None)
        if fc is not None:
            fc.set_epoll(-1, None, None)
        self._ep.close()
        os.close(self._wake_fd)

    def stats(self) -> dict[str, Any]:
        waits = self.epoll_waits + getattr(getattr(self.core, "_fc", None), "epoll_waits", 0)
        return {"epoll_waits": waits, "watched": len(self._watched),
                "watched_kernel_fds": len(self._kfd_watches)}
