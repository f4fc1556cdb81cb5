"""The posix library OS (Demikernel's catnap): kernel sockets driven by one epoll.

Sockets are non-blocking and registered edge-triggered; ``poll`` waits in ``epoll_wait`` and
lets each ready queue continue its pending ops. An eventfd in the same epoll lets another
thread wake the poller. Files use ``pread``/``pwritev``; pipes are AF_UNIX stream sockets in
the abstract namespace carrying framed elements.
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

_ET_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_FAMILIES = (_socket.AF_INET, _socket.AF_INET6, _socket.AF_UNIX)
_TYPES = (_socket.SOCK_STREAM, _socket.SOCK_DGRAM)
MAX_EVENTS = 256


def pipe_address(name: str) -> str:
    """The abstract AF_UNIX address of pipe ``name`` for this user."""
    return f"\0pydemikernel-pipe.{os.getuid()}.{name}"


class Backend(base.Backend):
    name = "posix"

    def __init__(self, core: Any, config: dict[str, Any]) -> None:
        super().__init__(core, config)
        self.epoll_waits = 0
        self._watched: dict[int, Any] = {}
        self._open_epoll()

    def _open_epoll(self) -> None:
        self._ep = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ep.register(self._wake_fd, select.EPOLLIN)

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
        self._ep.register(q.qd, _ET_MASK)
        self._watched[q.qd] = q

    def unwatch(self, q: SocketQueue) -> None:
        if self._watched.get(q.qd) is q:
            del self._watched[q.qd]
            try:
                self._ep.unregister(q.qd)
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
                elif fd == self._wake_fd:
                    try:
                        os.eventfd_read(self._wake_fd)
                    except BlockingIOError:
                        pass
            if core._deferred:
                core.drain()

    def wake(self) -> None:
        os.eventfd_write(self._wake_fd, 1)

    def after_fork_in_child(self) -> None:
        old_ep, old_wake = self._ep, self._wake_fd
        self._open_epoll()
        old_ep.close()
        os.close(old_wake)
        for fd in self._watched:
            self._ep.register(fd, _ET_MASK)
        for q in self._watched.values():
            q.readable = q.writable = True

    def shutdown_backend(self) -> None:
        self._ep.close()
        os.close(self._wake_fd)

    def stats(self) -> dict[str, Any]:
        return {"epoll_waits": self.epoll_waits, "watched": len(self._watched)}
