"""Socket and pipe queues of the posix library OS: non-blocking kernel sockets.

Each socket is registered once with the backend's epoll in edge-triggered mode; ``readable``
and ``writable`` remember the last edge, so a pop or push tries the system call only when it
can succeed, and a short read marks a stream drained. Pending ops are served in FIFO order
per direction. Partial sends are continued by the library OS.

A connected, unframed stream socket also gets a C lane (``queueapi._fast.SockLane``):
``LibOS.push``/``pop`` send and receive in C while nothing is pending in that direction, with
the same rules (the lane reads ``readable``/``writable``/``state`` here and hands partial
sends, end of stream and errors back through ``_lane_push_rest``/``_lane_pop_end``).
"""
from __future__ import annotations

import errno
import os
import select
import socket as _socket
from collections import deque
from typing import Any

from libos.base import Op, Queue, failed, oserror
from queueapi import _fast
from queueapi.framing import FrameDecoder, FramingError, encode_iovecs
from queueapi.types import Opcode, QResult, SGArray, popped, popped_sga, pushed

DEFAULT_POP = 8192
DGRAM_POP = 65535
FRAMED_RECV = 256 * 1024
_NOSIGNAL = _socket.MSG_NOSIGNAL
_EMPTY = b""
_IN = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR | select.EPOLLRDHUP
_HUP = select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLERR
_OUT = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR

NEW, BOUND, LISTENING, CONNECTING, CONNECTED, FAILED_CONNECT, PIPE_WAITING, CLOSED = (
    "new", "bound", "listening", "connecting", "connected", "failed", "pipe-waiting", "closed")


class SocketQueue(Queue):
    """A kernel socket behind a qd (the qd is the socket's own fd)."""

    kind = "socket"
    #: The state the C lane (``queueapi._fast.SockLane``) reads and writes on every push and
    #: pop: slots, so it reaches them at a fixed offset instead of through the instance dict.
    __slots__ = ("state", "readable", "writable", "shut_wr", "_hup", "_eof", "_error")

    def __init__(self, backend: Any, sock: _socket.socket, framing: bool, state: str = NEW) -> None:
        super().__init__(backend.core, sock.fileno())
        self.backend = backend
        self.sock = sock
        self.stream = sock.type == _socket.SOCK_STREAM
        self.framing = framing and self.stream
        self.element_preserving = self.framing or not self.stream
        self.state = state
        self.readable = True
        self.writable = True
        self.shut_wr = False
        self._hup = False  # the peer's FIN or a hang-up was seen: reads never block again
        self._shut_after_pushes = False
        self._eof = False
        self._error = 0
        self._pops: deque[Op] = deque()  # pending pops (each with its op.pop_size)
        self._pushes: deque[list[Any]] = deque()  # [op, bufs, addr]
        self._accepts: deque[Op] = deque()
        self._connect_op: Op | None = None
        self._decoder = FrameDecoder() if self.framing else None
        self._frames: deque[list[bytes]] = deque()
        self._pushback: deque[QResult] = deque()  # elements a closed combinator gave back
        self.syscalls = 0
        self._out_armed = False
        self._lane: Any = None
        backend.watch(self)
        if state == CONNECTED:
            self._add_lane()

    # ------------------------------------------------------------------ the C lane
    def _lane_allowed(self) -> bool:
        """Whether the C lane may bypass this class's push/pop (subclasses that change them
        say when)."""
        return type(self) is SocketQueue

    def _add_lane(self) -> None:
        """Let LibOS.push/pop run in C on this connected plain stream socket."""
        if not self.stream or self.framing or self._lane or not self._lane_allowed():
            return
        fc = getattr(self.core, "_fc", None)
        if fc is None:
            return
        self._lane = _fast.SockLane(fc, self.qd, self.sock.fileno(), self, self._pops,
                                    self._pushes, self._pushback, CONNECTED, DEFAULT_POP)
        self.core._lanes[self.qd] = self._lane

    def _drop_lane(self) -> None:
        lane, self._lane = self._lane, None
        if lane is not None:
            if self.core._lanes.get(self.qd) is lane:
                del self.core._lanes[self.qd]
            self.syscalls += lane.syscalls
            self.pushes += lane.pushes
            self.pops += lane.pops
            self.bytes_out += lane.bytes_out
            self.bytes_in += lane.bytes_in
            lane.close()

    def _lane_push_rest(self, op: Op, data: bytes, sent: int, err: int) -> None:
        """The lane sent ``sent`` bytes of ``data`` (or failed with ``err``): finish here."""
        if err:
            self.core.complete(op, failed(op, err))
            return
        self._want_write()
        self._pushes.append([op, [memoryview(data)[sent:]], None])

    def _lane_pop_end(self, op: Op, err: int) -> None:
        """The lane's recv found end of stream (``err`` 0) or an error."""
        if err:
            self._error = err
            self.core.complete(op, failed(op, err))
        else:
            self._eof = True
            self.core.complete(op, popped(op.qd, op.qt, _EMPTY))

    # ------------------------------------------------------------------ control path
    def bind(self, addr: Any) -> None:
        self._check_open()
        self.syscalls += 1
        self.sock.bind(addr)
        if self.state == NEW:
            self.state = BOUND

    def listen(self, backlog: int) -> None:
        self._check_open()
        if backlog < 0:
            raise oserror(errno.EINVAL, f"backlog must not be negative, got {backlog}")
        if self.state in (CONNECTED, CONNECTING):
            raise oserror(errno.EISCONN, "listen on a connected socket")
        self.syscalls += 1
        self.sock.listen(backlog)
        self.state = LISTENING

    def accept(self, op: Op) -> None:
        self._check_open()
        if self.state != LISTENING:
            raise oserror(errno.EINVAL, "accept on a socket that is not listening")
        self._accepts.append(op)
        self._serve_accepts()

    def connect(self, op: Op, addr: Any) -> None:
        self._check_open()
        if self.state == LISTENING:
            raise oserror(errno.EOPNOTSUPP, "connect on a listening socket")
        if self.state == CONNECTED and self.stream:
            raise oserror(errno.EISCONN, "socket is already connected")
        if self.state == CONNECTING:
            raise oserror(errno.EINPROGRESS, "a connect is already in progress")
        if self.state == FAILED_CONNECT:
            raise oserror(errno.EINVAL, "a connect failed on this socket; make a new one")
        self.syscalls += 1
        err = self.sock.connect_ex(addr)
        if err == 0:
            self.state = CONNECTED
            self._add_lane()
            self.core.complete(op, QResult(Opcode.CONNECT, op.qd, op.qt))
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self.state = CONNECTING
            self._connect_op = op
            self._want_write()
        else:
            self.state = FAILED_CONNECT
            self.core.complete(op, failed(op, err))

    def _finish_connect(self) -> None:
        op = self._connect_op
        self.syscalls += 1
        err = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if not err:
            try:
                self.sock.getpeername()
            except OSError:
                return  # a stale edge: the handshake is still in progress
        self._connect_op = None
        if err:
            self.state = FAILED_CONNECT
            self.core.complete(op, failed(op, err))
        else:
            self.state = CONNECTED
            self._add_lane()
            self.core.complete(op, QResult(Opcode.CONNECT, op.qd, op.qt))

    def getsockname(self) -> Any:
        self._check_open()
        return self.sock.getsockname()

    def getpeername(self) -> Any:
        self._check_open()
        return self.sock.getpeername()

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self._check_open()
        self.sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        self._check_open()
        if buflen is None:
            return self.sock.getsockopt(level, option)
        if not isinstance(buflen, int) or not 0 < buflen <= 1024:
            raise oserror(errno.EINVAL, f"getsockopt buflen must be 1..1024, got {buflen!r}")
        return self.sock.getsockopt(level, option, buflen)

    def shutdown(self, how: int) -> None:
        self._check_open()
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
            self.shut_wr = True
            if self._pushes:
                self._shut_after_pushes = True
                if how == _socket.SHUT_RDWR:
                    self.sock.shutdown(_socket.SHUT_RD)
                return
        self.sock.shutdown(how)

    def close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._drop_lane()
        self.backend.unwatch(self)
        core = self.core
        for op in self._pops:
            core.complete(op, failed(op, errno.ECANCELED))
        for item in self._pushes:
            core.complete(item[0], failed(item[0], errno.ECANCELED))
        for op in self._accepts:
            core.complete(op, failed(op, errno.ECANCELED))
        if self._connect_op is not None:
            core.complete(self._connect_op, failed(self._connect_op, errno.ECANCELED))
        self._pops.clear()
        self._pushes.clear()
        self._accepts.clear()
        self._connect_op = None
        self.sock.close()

    def orphan(self) -> None:
        try:
            self.sock.detach()  # the fd number is someone else's now
        except OSError:
            pass
        self.close()

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def _check_open(self) -> None:
        if self.state == CLOSED:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")

    # ------------------------------------------------------------------ events
    def _want_write(self) -> None:
        """The kernel buffer is full (or a connect is in progress): ask epoll for EPOLLOUT.

        Sockets are watched for input only until then, so that every ACK of a busy sender
        does not post a write event (which costs the sender ~4x in its send calls)."""
        self.writable = False
        if not self._out_armed:
            self._out_armed = True
            self.backend.arm_output(self)

    def on_events(self, ev: int) -> None:
        if ev & _IN:
            self.readable = True
            if ev & _HUP:
                self._hup = True
        if ev & _OUT:
            self.writable = True
        if self._connect_op is not None and self.writable:
            self._finish_connect()
        if self._accepts and self.readable:
            self._serve_accepts()
        if self._pushes and self.writable:
            self._serve_pushes()
        if self._pops and self.readable:
            self._serve_pops()

    # ------------------------------------------------------------------ accept
    def _serve_accepts(self) -> None:
        core = self.core
        while self._accepts and self.readable:
            self.syscalls += 1
            try:
                conn, addr = self.sock.accept()
            except BlockingIOError:
                self.readable = False
                return
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                op = self._accepts.popleft()
                core.complete(op, failed(op, e.errno or errno.EIO))
                continue
            conn.setblocking(False)
            q = type(self)(self.backend, conn, self.framing, CONNECTED)
            core.register(q)
            op = self._accepts.popleft()
            core.complete(op, QResult(Opcode.ACCEPT, op.qd, op.qt, 0, None, q.qd, addr))

    # ------------------------------------------------------------------ push
    def _check_push(self) -> None:
        if self.state == CLOSED:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")
        if self.shut_wr:
            raise oserror(errno.EPIPE, "the write side was shut down")
        if self.stream and self.state not in (CONNECTED, PIPE_WAITING):
            raise oserror(errno.ENOTCONN, "push on a stream socket that is not connected")

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check_push()
        if not self.stream and self.state != CONNECTED:
            raise oserror(errno.EDESTADDRREQ, "push on an unconnected datagram socket; use pushto")
        if not self._pushes and self.writable and not self.framing and len(segs) == 1:
            # the common case: one buffer, nothing queued: send it straight away
            seg = segs[0]
            self.syscalls += 1
            try:
                n = self.sock.send(seg, _NOSIGNAL)
            except BlockingIOError:
                n = 0
                self._want_write()
            except OSError as e:
                self.core.complete(op, failed(op, e.errno or errno.EIO))
                return
            if n == (len(seg) if type(seg) is bytes else memoryview(seg).nbytes):
                self.core.complete(op, pushed(op.qd, op.qt))
                return
            self._want_write()
            self._pushes.append([op, [memoryview(seg).cast("B")[n:]], None])
            return
        bufs = encode_iovecs(segs) if self.framing else list(segs)
        item = [op, bufs, None]
        if self._pushes or not self.writable or not self._send(item):
            self._pushes.append(item)

    def pushto(self, op: Op, segs: tuple[Any, ...], addr: Any) -> None:
        self._check_push()
        if self.stream:
            raise oserror(errno.EISCONN if self.state == CONNECTED else errno.ENOTCONN,
                          "pushto is for datagram sockets; use push on a stream")
        _check_address(self.sock.family, addr)
        item = [op, list(segs), addr]
        if self._pushes or not self.writable or not self._send(item):
            self._pushes.append(item)

    def _send(self, item: list[Any]) -> bool:
        """Send what ``item`` still holds; True once it is completed (sent or failed)."""
        op, bufs, addr = item
        self.syscalls += 1
        try:
            if addr is not None:
                n = self.sock.sendmsg(bufs, (), _NOSIGNAL, addr)
            elif len(bufs) == 1:
                n = self.sock.send(bufs[0], _NOSIGNAL)
            else:
                n = self.sock.sendmsg(bufs, (), _NOSIGNAL)
        except BlockingIOError:
            self._want_write()
            return False
        except OSError as e:
            self.core.complete(op, failed(op, e.errno or errno.EIO))
            return True
        while bufs:
            first = bufs[0]
            ln = len(first) if type(first) is bytes else memoryview(first).nbytes
            if n >= ln:
                n -= ln
                del bufs[0]
            else:
                bufs[0] = memoryview(first).cast("B")[n:]
                self._want_write()
                return False
        self.core.complete(op, pushed(op.qd, op.qt))
        return True

    def _serve_pushes(self) -> None:
        pushes = self._pushes
        while pushes and self.writable:
            if self._send(pushes[0]):
                pushes.popleft()
        if not pushes and self._shut_after_pushes:
            self._shut_after_pushes = False
            try:
                self.sock.shutdown(_socket.SHUT_WR)
            except OSError:
                pass

    # ------------------------------------------------------------------ pop
    def pop(self, op: Op, size: int | None) -> None:
        if self.state == CLOSED:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")
        if self.stream:
            if self.state not in (CONNECTED, PIPE_WAITING):
                raise oserror(errno.ENOTCONN, "pop on a stream socket that is not connected")
        elif self.state == NEW:
            raise oserror(errno.EDESTADDRREQ, "pop on an unbound datagram socket; bind it first")
        if self._pops or not self._try_pop(op, size):
            op.pop_size = size
            self._pops.append(op)

    def _serve_pops(self) -> None:
        lane = self._lane
        if lane is not None and lane.serve():
            return
        pops = self._pops
        while pops:
            op = pops[0]
            if not self._try_pop(op, op.pop_size):
                return
            pops.popleft()

    def cancel(self, op: Op) -> bool:
        try:
            self._pops.remove(op)  # (ops compare by identity)
        except ValueError:
            return False
        return True

    def unpop(self, result: QResult) -> bool:
        self._pushback.appendleft(result)
        if self._pops:
            self._serve_pops()
        return True

    def _try_pop(self, op: Op, size: int | None) -> bool:
        """Complete ``op`` if data, end of stream or an error is available; else False."""
        if self._pushback:
            r = self._pushback.popleft()
            self.core.complete(op, r._replace(qd=op.qd, qt=op.qt))
            return True
        if self.framing:
            return self._try_pop_framed(op)
        if self._error:
            self.core.complete(op, failed(op, self._error))
            return True
        if self._eof:
            self.core.complete(op, popped(op.qd, op.qt, _EMPTY))
            return True
        if not self.readable or self.state == PIPE_WAITING:
            return False
        self.syscalls += 1
        try:
            if self.stream:
                want = size or DEFAULT_POP
                data = self.sock.recv(want)
                addr = None
            else:
                data, addr = self.sock.recvfrom(size or DGRAM_POP)
        except BlockingIOError:
            self.readable = False
            return False
        except OSError as e:
            if not self.stream:
                self.core.complete(op, failed(op, e.errno or errno.EIO))
                return True
            self._error = e.errno or errno.EIO
            self.core.complete(op, failed(op, self._error))
            return True
        if self.stream:
            if not data:
                self._eof = True
            elif len(data) < want and not self._hup:
                self.readable = False
        self.core.complete(op, popped(op.qd, op.qt, data, addr))
        return True

    def _try_pop_framed(self, op: Op) -> bool:
        frames = self._frames
        while True:
            if frames:
                segs = frames.popleft()
                self.core.complete(op, popped_sga(op.qd, op.qt, SGArray(segs)))
                return True
            if self._error:
                self.core.complete(op, failed(op, self._error))
                return True
            if self._eof:
                if self._decoder.buffered:
                    self._error = errno.ECONNABORTED  # the stream ended inside an element
                    continue
                self.core.complete(op, popped(op.qd, op.qt, _EMPTY))
                return True
            if not self.readable or self.state == PIPE_WAITING:
                return False
            self.syscalls += 1
            try:
                data = self.sock.recv(FRAMED_RECV)
            except BlockingIOError:
                self.readable = False
                return False
            except OSError as e:
                self._error = e.errno or errno.EIO
                continue
            if not data:
                self._eof = True
                continue
            if len(data) < FRAMED_RECV and not self._hup:
                self.readable = False
            dec = self._decoder
            dec.feed(data)
            try:
                while (el := dec.next_element()) is not None:
                    frames.append(el)
            except FramingError as e:
                self._error = e.errno

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(path="kernel", state=self.state, framing=self.framing,
                 family=_socket.AddressFamily(self.sock.family).name if self.state != CLOSED else None,
                 syscalls=self.syscalls, pending_pops=len(self._pops),
                 pending_pushes=len(self._pushes))
        lane = self._lane
        if lane is not None:
            for k in ("syscalls", "pushes", "pops", "bytes_out", "bytes_in"):
                s[k] += getattr(lane, k)
        return s


class PipeQueue(SocketQueue):
    """The creating end of a named pipe: listens on an abstract AF_UNIX address until the
    other end opens it, then becomes that connection on the same fd (dup2), so the qd never
    changes. Pushes and pops made before the peer opens pend."""

    kind = "pipe"

    def __init__(self, backend: Any, listener: _socket.socket) -> None:
        super().__init__(backend, listener, True, PIPE_WAITING)
        self.writable = False  # pushes wait for the opener (set again once it is accepted)

    def on_events(self, ev: int) -> None:
        if self.state == PIPE_WAITING:
            if not ev & _IN:
                return
            self.syscalls += 1
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            self.backend.unwatch(self)
            os.dup2(conn.fileno(), self.qd, inheritable=False)  # the qd now is the connection
            conn.close()
            self.sock.setblocking(False)
            self.state = CONNECTED
            self.readable = self.writable = True
            self.backend.watch(self)
            ev = 0  # serve what was pushed and popped while waiting
        super().on_events(ev)


def _check_address(family: int, addr: Any) -> None:
    """Raise ``OSError(EINVAL)`` for an address ``family`` cannot take (checked before queuing)."""
    if family in (_socket.AF_INET, _socket.AF_INET6):
        if not isinstance(addr, tuple) or len(addr) < 2 or not isinstance(addr[1], int) \
                or not isinstance(addr[0], (str, bytes)):
            raise TypeError(f"an AF_INET/AF_INET6 address is a (host, port) tuple, not {addr!r}")
        if not 0 <= addr[1] <= 65535:
            raise oserror(errno.EINVAL, f"port must be 0-65535, got {addr[1]}")
    elif family == _socket.AF_UNIX and not isinstance(addr, (str, bytes, os.PathLike)):
        raise TypeError(f"an AF_UNIX address is a path, not {addr!r}")
