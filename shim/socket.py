"""``socket.socket`` over a queue library OS.

``socket`` below replaces ``socket.socket`` in place. It is a subclass of the stdlib class (so
``isinstance`` checks, ``makefile()``, ``with`` and subclasses keep working) and has two modes:

* **library-OS mode** (the normal case): the socket is a qd of ``queueapi``; ``fileno()`` is
  that qd, a real fd the process owns. Reading keeps one ``pop`` outstanding and buffers the
  rest of a popped element for later ``recv`` calls; writing pushes a copy of the data and
  returns at once, reaping the push tokens lazily; the socket is writable unless too many
  pushes are unfinished. Blocking calls wait on their own tokens with the socket's timeout.
* **kernel mode** (a fallback, counted by ``--stats`` and refused by ``--strict``): families
  and types the library OS cannot take (AF_NETLINK, SOCK_RAW, AF_PACKET...) and raw fds
  (``socket(fileno=fd)``, ``fromfd``) are ordinary kernel sockets; every method is the stdlib's.

The library OS itself also calls ``socket.socket`` (the posix library OS makes kernel sockets);
those calls get the original class (see ``runtime.internal_caller``).
"""
from __future__ import annotations

import _socket
import errno
import os
import socket as _stdsocket
import sys
import threading
import time
import warnings
from collections import deque
from typing import Any

from queueapi.types import Opcode

_FAILED = Opcode.FAILED
_POP = Opcode.POP
from shim import _orig, runtime

__all__ = ["socket", "create_connection", "create_server", "socketpair", "fromfd",
           "SocketState"]

_monotonic = time.monotonic
_AF_INET, _AF_INET6, _AF_UNIX = _stdsocket.AF_INET, _stdsocket.AF_INET6, _stdsocket.AF_UNIX
_SOCK_STREAM, _SOCK_DGRAM = _stdsocket.SOCK_STREAM, _stdsocket.SOCK_DGRAM
_TYPE_FLAGS = getattr(_stdsocket, "SOCK_NONBLOCK", 0) | getattr(_stdsocket, "SOCK_CLOEXEC", 0)
_SOCK_NONBLOCK = getattr(_stdsocket, "SOCK_NONBLOCK", 0)
# plain ints: ``&`` on the IntFlag members costs a Python call on every recv/send
_MSG_PEEK = int(_stdsocket.MSG_PEEK)
_MSG_DONTWAIT = int(getattr(_stdsocket, "MSG_DONTWAIT", 0))
_MSG_WAITALL = int(getattr(_stdsocket, "MSG_WAITALL", 0))
_MSG_TRUNC = int(getattr(_stdsocket, "MSG_TRUNC", 0))
_MSG_NOSIGNAL = int(getattr(_stdsocket, "MSG_NOSIGNAL", 0))
_MSG_MORE = int(getattr(_stdsocket, "MSG_MORE", 0))
_MSG_CMSG_CLOEXEC = int(getattr(_stdsocket, "MSG_CMSG_CLOEXEC", 0))
_RECV_FLAGS = _MSG_PEEK | _MSG_DONTWAIT | _MSG_WAITALL | _MSG_CMSG_CLOEXEC
_SEND_FLAGS = _MSG_DONTWAIT | _MSG_NOSIGNAL | _MSG_MORE

POLLIN, POLLPRI, POLLOUT = 0x001, 0x002, 0x004
POLLERR, POLLHUP, POLLNVAL = 0x008, 0x010, 0x020
POLLRDNORM, POLLWRNORM = 0x040, 0x100
_RD = POLLIN | POLLRDNORM
_WR = POLLOUT | POLLWRNORM

#: bytes asked of the library OS per pop on a stream (more when recv() asks for more)
POP_SIZE = 64 * 1024
MAX_POP = 4 * 1024 * 1024
#: at most this many bytes per push (a larger send() is partial, as in the kernel)
MAX_PUSH = 1024 * 1024
#: a socket is not writable while this many pushes or bytes are unfinished (the bytes limit
#: follows SO_SNDBUF when the program sets it, as the kernel's send buffer would)
MAX_PUSHES = 256
MAX_INFLIGHT = 4 * 1024 * 1024
#: reap finished push tokens once this many are outstanding
REAP_AT = 16
#: close() waits at most this long for unfinished pushes (the kernel would send them after
#: close; the library OS cancels what is pending when the queue closes)
CLOSE_LINGER = 10.0
_UDP_MAX = {_AF_INET: 65507, _AF_INET6: 65527}

NEW, BOUND, LISTENING, CONNECTING, CONNECTED, FAILED, CLOSED = (
    "new", "bound", "listening", "connecting", "connected", "failed", "closed")


def _oserror(code: int, detail: str | None = None) -> OSError:
    if detail:
        return OSError(code, f"{os.strerror(code)} ({detail})")
    return OSError(code, os.strerror(code))


def _timed_out(timeout: float | None) -> OSError:
    if timeout == 0:
        return BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return _socket.timeout("timed out")


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else _monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - _monotonic())


def _name(value: int, enum: Any) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _as_bytes(data: Any) -> bytes:
    """``data`` as bytes: a copy of a mutable buffer (the caller may reuse it at once, and
    no view of it may outlive the call), or the bytes object itself."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'")
    try:
        with memoryview(data) as m:
            return m.tobytes()
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(data).__name__}'") from None


def _view(data: Any) -> memoryview:
    """A byte view of ``data`` after ``_as_bytes``."""
    return memoryview(_as_bytes(data))


#: socket.family/type values converted already (the stdlib's accept() reads both, and an
#: enum conversion costs more than the rest of a property)
_FAMILIES: dict[Any, Any] = {}
_KINDS: dict[Any, Any] = {}


def _enum_of(v: Any, enum: Any, cache: dict[Any, Any]) -> Any:
    """``socket._intenum_converter(v, enum)``, remembered for int ``v``."""
    if v.__class__ is not int:
        return _stdsocket._intenum_converter(v, enum)
    e = cache.get(v)
    if e is None:
        e = _stdsocket._intenum_converter(v, enum)
        if len(cache) < 64:
            cache[v] = e
    return e


#: timeouts parsed already (programs such as redis-py set the same few on every call)
_TIMEOUTS: dict[Any, float | None] = {None: None}


def _parse_timeout(value: Any) -> float | None:
    """The stdlib's own validation (TypeError/ValueError exactly as socket.settimeout)."""
    cacheable = value.__class__ is float or value.__class__ is int
    if cacheable:
        t = _TIMEOUTS.get(value, _TIMEOUTS)
        if t is not _TIMEOUTS:
            return t
    elif value is None:
        return None
    dummy = _socket.socket.__new__(_socket.socket)
    try:
        _socket.socket.settimeout(dummy, value)  # (a failing ioctl on fd -1: a system call)
    except OSError:
        pass  # the dummy has no fd; the value was parsed and stored before that
    t = dummy.gettimeout()
    if cacheable and len(_TIMEOUTS) < 256:
        _TIMEOUTS[value] = t
    return t


# =============================================================================================
# The state behind a library-OS socket (shared by dup()s)
# =============================================================================================
def sga_bytes(sga: Any) -> bytes:
    """The bytes of a popped sga, which is then freed (a library OS may reuse its memory)."""
    data = sga.tobytes()
    try:
        sga.free()
    except (OSError, ValueError):
        pass
    return data


class SocketState:
    """One library-OS socket: its qd, tokens, buffered data and pending errors.

    Every field is guarded by the runtime lock. Shared by every socket object (``dup()``,
    ``fromfd()``) that refers to the same qd; the qd is closed when the last one closes.

    Its fields are slots: shim._speedups reads them at fixed offsets (while the class is
    unmodified: its type version is checked), and attributes outside the list still work
    (``__dict__``).
    """

    __slots__ = ("rt", "los", "qd", "family", "type", "proto", "stream", "status", "closed",
                 "rbuf", "roff", "eof", "rerr", "werr", "pop_qt", "accept_qt", "accepted",
                 "accept_err", "connect_qt", "connect_err", "pushes", "push_bytes",
                 "inflight_limit", "shut_rd", "shut_wr", "opts", "refs", "fd_shares", "lost",
                 "handed_off", "closing", "kernel_backed", "__dict__", "__weakref__")

    def __init__(self, rt: runtime.Runtime, qd: int, family: int, type: int, proto: int,
                 status: str) -> None:
        self.rt = rt
        self.los = rt.los
        self.qd = qd
        self.family = family
        self.type = type
        self.proto = proto
        self.stream = type == _SOCK_STREAM
        self.status = status
        self.closed = False
        self.rbuf: deque[Any] = deque()  # stream: bytes chunks; datagram: (bytes, addr)
        self.roff = 0                    # consumed bytes of rbuf[0] (stream)
        self.eof = False
        self.rerr = 0                    # an error to report on the next read
        self.werr = 0                    # an error of a finished push, for the next write
        self.pop_qt: int | None = None
        self.accept_qt: int | None = None
        self.accepted: deque[tuple[int, Any]] = deque()
        self.accept_err = 0
        self.connect_qt: int | None = None
        self.connect_err = 0             # SO_ERROR
        self.pushes: dict[int, int] = {}  # unfinished push token -> bytes (in push order)
        self.push_bytes = 0
        self.inflight_limit = MAX_INFLIGHT
        self.shut_rd = self.shut_wr = False
        self.opts: dict[tuple[int, int], Any] = {}  # options the library OS ignored
        self.refs = 1
        # fd -> how many more socket objects use that same fd (socket(fileno=fd) over a live
        # fd: an SSLSocket taking the socket over, then the original is detached): a detach
        # of one of them leaves the fd to the others; a close closes it under all of them,
        # as the kernel would: their fd goes to ``lost`` (their calls fail with EBADF)
        self.fd_shares: dict[int, int] = {}
        self.lost: dict[int, int] = {}  # fd -> objects still holding it after that close
        self.handed_off = False
        self.closing = False  # closed by the program; unfinished pushes still going out
        with rt.lock:
            rt.by_fd[qd] = self

    def __repr__(self) -> str:
        return f"<SocketState qd={self.qd} {self.status} refs={self.refs}>"

    # ------------------------------------------------------------------ tokens (lock held)
    def ensure_pop(self, size: int | None = None) -> int:
        qt = self.pop_qt
        if qt is None:
            if self.stream:
                size = POP_SIZE if size is None or size < POP_SIZE else size
            else:
                size = None
            qt = self.pop_qt = self.los.pop(self.qd, size)
            self.rt.tokens[qt] = (self, "pop")  # Runtime.track, inlined (every request)
        return qt

    def ensure_accept(self) -> int:
        if self.accept_qt is None:
            self.accept_qt = self.rt.track(self.los.accept(self.qd), self, "accept")
        return self.accept_qt

    def keep_popped(self, r: Any) -> None:
        """A completed pop's data into the read buffer (a stream's empty pop: end of stream)."""
        self.pop_qt = None
        data = sga_bytes(r[4])
        if not self.stream:
            self.rbuf.append((data, r.addr))
        elif data:
            self.rbuf.append(data)
        else:
            self.eof = True

    def on_result(self, kind: str, r: Any) -> None:
        if kind == "pop" and self.stream and r[0] is _POP:
            # the common case (every request of a server): data, or end of stream
            self.keep_popped(r)
            rt = self.rt
            log = rt.log  # Runtime.changed, inlined
            log.append(self)
            if rt.blocked or len(log) > runtime.LOG_MAX:
                del log[-1]
                rt.changed(self)
            return
        failed = r[0] is _FAILED
        if kind == "pop":
            if failed:
                self.pop_qt = None
                if r.ret != errno.ECANCELED:
                    self.rerr = r.ret
            else:
                self.keep_popped(r)
        elif kind == "accept":
            self.accept_qt = None
            if failed:
                if r.ret != errno.ECANCELED:
                    self.accept_err = r.ret
            else:
                self.accepted.append((r.new_qd, r.addr))
        elif kind == "connect":
            self.connect_qt = None
            if failed:
                if r.ret != errno.ECANCELED:
                    self.connect_err = r.ret
                if self.status == CONNECTING:
                    self.status = FAILED
            elif self.status == CONNECTING:
                self.status = CONNECTED
        elif kind == "push":
            self.push_bytes -= self.pushes.pop(r.qt, 0)
            if failed and r.ret != errno.ECANCELED:
                self.werr = r.ret
        self.rt.changed(self)

    def reap(self) -> None:
        """Consume the finished push tokens, oldest first (pushes of a qd finish in order)."""
        rt = self.rt
        while self.pushes:
            qt = next(iter(self.pushes))
            try:
                r = self.los.wait(qt, 0)
            except TimeoutError:
                return
            except OSError:
                return  # consumed by another thread: it dispatches it
            rt.dispatch(r)

    def track_push(self, qt: int, n: int) -> None:
        """A push of ``n`` bytes still in flight: its token is reaped when it completes."""
        self.rt.tokens[qt] = (self, "push")  # Runtime.track, inlined (every send)
        self.pushes[qt] = n
        self.push_bytes += n

    def reap_push(self, qt: int, n: int) -> None:
        """A push of ``n`` bytes just made: consume its token now if it completed at once
        (the common case; a completed token is taken in C), else track it."""
        try:
            r = self.los.wait(qt, 0)
        except TimeoutError:  # not sent yet: reaped later
            self.track_push(qt, n)
            return
        except OSError:  # consumed by another thread: it dispatches it
            return
        if r[0] is _FAILED and r[3] != errno.ECANCELED:
            self.werr = r[3]
            self.rt.changed(self)

    def has_room(self) -> bool:
        if len(self.pushes) >= REAP_AT:
            self.reap()
        return len(self.pushes) < MAX_PUSHES and self.push_bytes < self.inflight_limit

    def oldest_push(self) -> int:
        return next(iter(self.pushes))

    def implicit_bind(self) -> None:
        """Bind an unbound datagram socket as the kernel does on first use."""
        if self.status != NEW or self.stream:
            return
        if self.family == _AF_INET:
            addr: Any = ("0.0.0.0", 0)
        elif self.family == _AF_INET6:
            addr = ("::", 0)
        elif self.family == _AF_UNIX:
            addr = ""  # Linux autobind (abstract name)
        else:
            return
        self.los.bind(self.qd, addr)
        self.status = BOUND
        self.rt.changed(self)

    # ------------------------------------------------------------------ reading (lock held)
    def take(self, n: int, peek: bool) -> tuple[bytes, Any, bool] | None:
        """Up to ``n`` buffered bytes (or a datagram), end of stream, or a pending error;
        ``None`` when the caller must wait."""
        if self.stream:
            if n == 0:
                return b"", None, False
            if self.rbuf:
                return self._take_stream(n, peek), None, False
            if self.rerr:
                code, self.rerr = self.rerr, 0
                self.eof = True  # after a reset the kernel reports end of stream
                raise _oserror(code)
            if self.eof or self.shut_rd:
                return b"", None, False
            return None
        if self.rbuf:
            data, addr = self.rbuf[0] if peek else self.rbuf.popleft()
            return data[:n], addr, len(data) > n
        if self.rerr:
            code, self.rerr = self.rerr, 0
            raise _oserror(code)
        return None

    def _take_stream(self, n: int, peek: bool) -> bytes:
        rbuf = self.rbuf
        off = self.roff
        first = rbuf[0]
        avail = len(first) - off
        if avail < n and len(rbuf) == 1:  # all there is, in one chunk
            if not peek:
                rbuf.clear()
                self.roff = 0
            return first[off:] if off else first
        if avail >= n:  # one chunk has enough
            data = first[off:off + n] if (off or avail > n) else first
            if not peek:
                if avail == n:
                    rbuf.popleft()
                    self.roff = 0
                else:
                    self.roff = off + n
            return data
        out = []
        need = n
        i = 0
        while need and i < len(rbuf):
            chunk = rbuf[i]
            o = off if i == 0 else 0
            part = chunk[o:o + need]
            out.append(part)
            need -= len(part)
            i += 1
        if not peek:
            need = n
            while need and rbuf:
                avail = len(rbuf[0]) - self.roff
                if avail <= need:
                    rbuf.popleft()
                    self.roff = 0
                    need -= avail
                else:
                    self.roff += need
                    need = 0
        return b"".join(out)

    def read_token(self, want: int = 0) -> int:
        """The token a reader must wait on: the outstanding pop, or the connect."""
        if self.stream:
            if self.status == CONNECTED:
                return self.ensure_pop(min(want, MAX_POP))
            if self.status == CONNECTING and self.connect_qt is not None:
                return self.connect_qt
            raise _oserror(errno.ENOTCONN)
        if self.status == NEW:
            self.implicit_bind()
        return self.ensure_pop()

    # ------------------------------------------------------------------ readiness (lock held)
    def poll_mask(self, events: int, toks: dict[int, None]) -> int:
        """The ready mask for ``events`` (poll bits); tokens to wait on go into ``toks``."""
        if events == POLLIN and self.status is CONNECTED and self.stream \
                and not (self.closed or self.closing):
            # the common case (a selector's EVENT_READ on a connection), in a few loads
            if self.rbuf or self.eof or self.shut_rd:
                return POLLIN
            if not self.rerr:
                qt = self.pop_qt
                if qt is None:
                    try:
                        qt = self.ensure_pop()
                    except OSError:
                        return POLLIN | POLLERR
                toks[qt] = None
                return 0
        if self.closed or self.closing:
            return POLLNVAL
        m = 0
        rd = events & (_RD | POLLPRI)
        wr = events & _WR
        if self.stream:
            st = self.status
            if st == CONNECTED:
                if rd:
                    if self.rbuf or self.eof or self.shut_rd:
                        m |= POLLIN
                    elif self.rerr:
                        m |= POLLIN | POLLERR | POLLHUP
                    else:
                        try:
                            toks[self.ensure_pop()] = None
                        except OSError:
                            m |= POLLIN | POLLERR
                if wr:
                    if self.werr:
                        m |= POLLOUT | POLLERR
                    elif self.shut_wr or self.has_room():
                        m |= POLLOUT
                    else:
                        toks[self.oldest_push()] = None
            elif st == LISTENING:
                if rd:
                    if self.accepted or self.accept_err:
                        m |= POLLIN
                    else:
                        try:
                            toks[self.ensure_accept()] = None
                        except OSError:
                            m |= POLLIN | POLLERR
            elif st == CONNECTING:
                if self.connect_qt is not None and (rd or wr):
                    toks[self.connect_qt] = None
            elif st == FAILED:
                m |= POLLERR | POLLHUP | (POLLIN if rd else 0) | (POLLOUT if wr else 0)
            else:  # NEW, BOUND: as the kernel says for a fresh TCP socket
                m |= POLLHUP | (POLLOUT if wr else 0)
        else:
            if rd:
                if self.rbuf:
                    m |= POLLIN
                elif self.rerr:
                    m |= POLLIN | POLLERR
                elif self.status != NEW:
                    try:
                        toks[self.ensure_pop()] = None
                    except OSError:
                        m |= POLLIN | POLLERR
            if wr:
                if self.werr:
                    m |= POLLOUT | POLLERR
                elif self.has_room():
                    m |= POLLOUT
                else:
                    toks[self.oldest_push()] = None
        if m & POLLIN:
            m |= events & POLLRDNORM
        if m & POLLOUT:
            m |= events & POLLWRNORM
        return m & (events | POLLERR | POLLHUP | POLLNVAL)

    # ------------------------------------------------------------------ lifetime
    def flush(self, linger: float) -> None:
        """Wait (at most ``linger`` s) until the unfinished pushes are done."""
        rt = self.rt
        deadline = _monotonic() + linger
        while True:
            with rt.lock:
                if not self.pushes or self.werr or self.closed:
                    return
                qt = self.oldest_push()
            left = deadline - _monotonic()
            if left <= 0:
                return
            try:
                if not rt.wait_token(qt, left):
                    return
            except OSError:
                return

    def release(self, fd: int) -> None:
        """One socket object referring to this state (through ``fd``) is closed."""
        rt = self.rt
        with rt.lock:
            if self.lost.get(fd):  # another object on this fd closed it already
                self.lost[fd] -= 1
                raise _oserror(errno.EBADF)  # as close() of a closed fd
            shares = self.fd_shares.pop(fd, 0)
            if shares:  # the other objects on this fd lose it (the kernel closes the fd)
                self.lost[fd] = self.lost.get(fd, 0) + shares
                self.refs -= shares
            if fd != self.qd:
                if rt.by_fd.get(fd) is self:
                    del rt.by_fd[fd]
                    rt.changed(self)
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.refs -= 1
            if self.refs > 0 or self.closed:
                return
        self.final_close()

    def final_close(self) -> None:
        """Close the queue. Unfinished pushes are finished first, in a background thread
        (the kernel, too, sends what a closed socket had queued): close() never blocks."""
        if not self.handed_off and self.pushes:
            self.reap()
            with self.rt.lock:
                linger = bool(self.pushes) and not self.werr and not self.closing
                if linger:
                    self.closing = True
                    self.rt.changed(self)
            if linger:
                t = threading.Thread(target=self._linger, name=f"demishim-linger-{self.qd}",
                                     daemon=True)
                with _lingering_lock:
                    _lingering.add(t)
                t.start()
                return
        self._close_now()

    def _linger(self) -> None:
        try:
            self.flush(CLOSE_LINGER)
            self._close_now()
        except Exception:
            pass
        finally:
            with _lingering_lock:
                _lingering.discard(threading.current_thread())

    def _close_now(self) -> None:
        rt = self.rt
        with rt.lock:
            if self.closed:
                return
            self.closed = True
            self.status = CLOSED
            rt.note_closed(self.qd)
            close_err = None
            try:
                self.los.close(self.qd)
            except OSError as e:  # e.g. EBADF: another object closed the fd (as in the kernel)
                close_err = e
            if rt.by_fd.get(self.qd) is self:
                del rt.by_fd[self.qd]
            if rt.detached.get(self.qd) is self:
                del rt.detached[self.qd]
            rt.changed(self)
            pending = [qt for qt in (self.pop_qt, self.accept_qt, self.connect_qt)
                       if qt is not None] + list(self.pushes)
        for qt in pending:  # cancelled (or finished) by the close: consume them
            try:
                rt.dispatch(self.los.wait(qt, 0))
            except (OSError, TimeoutError):
                rt.tokens.pop(qt, None)
        with rt.lock:
            for new_qd, _ in self.accepted:
                try:
                    self.los.close(new_qd)
                except OSError:
                    pass
            self.accepted.clear()
            self.rbuf.clear()
        if close_err is not None and close_err.errno == errno.EBADF:
            raise _oserror(errno.EBADF)

    def release_to_kernel(self, fd: int) -> bool:
        """For ``detach()``: the library OS lets go of the queue and ``fd`` stays open as a
        plain kernel socket that the caller owns (it may ``os.close`` it, or wrap it in a new
        socket object: a kernel one). False when that is not possible without losing data
        (the shim holds data the program has not read, or other socket objects share the
        queue) or the qd is not a kernel socket: then the queue stays open under ``fd`` for
        ``socket(fileno=fd)`` to adopt again."""
        rt = self.rt
        if fd != self.qd:  # an extra fd from dup(): a kernel fd of its own
            with rt.lock:
                if rt.by_fd.get(fd) is self:
                    del rt.by_fd[fd]
                    rt.changed(self)
                self.refs -= 1
                last = self.refs == 0 and not self.closed
            if last:
                self.final_close()
            return True
        if self.pop_qt is not None:
            rt.wait_token(self.pop_qt, 0)  # a pop that already took data: keep that data
        with rt.lock:
            if self.rbuf or self.eof or self.rerr or self.accepted or self.refs > 1:
                return False
        if not self.handed_off:
            self.flush(CLOSE_LINGER)  # what was pushed goes out before the caller writes
        if not _unown_kernel_socket(self):
            return False
        self.handed_off = True
        with rt.lock:
            self.refs -= 1
        try:
            self._close_now()
        except OSError:
            pass
        with rt.lock:
            _released.add(fd)
        return True


def _unown_kernel_socket(st: SocketState) -> bool:
    """Make the library OS's close of ``st.qd`` leave the fd open, when the queue is a plain
    kernel socket whose socket object holds the qd (posix's socket queues, shm's kernel
    connections): that object is detached. Returns False for anything else."""
    los = st.los
    try:
        if los.stats(st.qd).get("path") != "kernel":
            return False
        q = los.lookup(st.qd)
    except (OSError, AttributeError):
        return False
    ksock = getattr(q, "sock", None)
    if not isinstance(ksock, _socket.socket):
        return False
    with st.rt.lock:
        try:
            if ksock.fileno() != st.qd:
                return False
            _socket.socket.detach(ksock)
        except OSError:
            return False
    return True


# =============================================================================================
# socket.socket
# =============================================================================================
class socket(_orig.socket_cls):
    """``socket.socket`` over the library OS (see the module docstring)."""

    __slots__ = ("_st", "_fd", "_tmo", "_ids")
    __module__ = "socket"  # reprs and tracebacks read as in plain Python: <socket.socket ...>

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if runtime.internal_caller():  # the library OS's own kernel sockets
            return _orig.socket_cls(*args, **kwargs)
        return _socket.socket.__new__(cls)

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1,
                 fileno: int | None = None) -> None:
        self._io_refs = 0
        self._closed = False
        self._st: SocketState | None = None
        self._fd = -1
        self._tmo: float | None = None
        self._ids: tuple[int, int, int] | None = None  # family/type/proto given with fileno
        rt = runtime.current()
        if rt is None:
            _orig.socket_cls.__init__(self, family, type, proto, fileno)
            return
        if fileno is None:
            fam = _AF_INET if family == -1 else _index(family)
            typ = _SOCK_STREAM if type == -1 else _index(type)
            pr = 0 if proto == -1 else _index(proto)
            base_type = typ & ~_TYPE_FLAGS
            try:
                qd = rt.los.socket(fam, base_type, pr)
            except OSError as e:
                if not runtime.unsupported(e) and e.errno != errno.EINVAL:
                    raise
                call = (f"socket({_name(fam, _stdsocket.AddressFamily)}, "
                        f"{_name(base_type, _stdsocket.SocketKind)}, {pr})")
                reason = f"the {rt.los.name} library OS cannot take it: {e.strerror}"
                if rt.strict:
                    rt.fallback("socket", call, reason)
                _orig.socket_cls.__init__(self, family, type, proto, fileno)
                rt.fallback("socket", call, reason)
                return
            st = SocketState(rt, qd, int(fam), int(base_type), int(pr), NEW)
            with rt.lock:
                rt.stats.sockets += 1
            self._st = st
            self._fd = qd
            self._tmo = 0.0 if typ & _SOCK_NONBLOCK else _stdsocket.getdefaulttimeout()
            return
        fd = fileno
        if isinstance(fd, int) and not isinstance(fd, bool):
            with rt.lock:
                st = rt.detached.pop(fd, None)
                live = rt.by_fd.get(fd)
            if st is not None:  # a fd this shim handed out (detach, dup, accept, fromfd)
                self._st = st
                self._fd = fd
                self._tmo = _stdsocket.getdefaulttimeout()
                if (family, type, proto) != (-1, -1, -1):
                    self._ids = (st.family if family == -1 else family,
                                 st.type if type == -1 else type,
                                 st.proto if proto == -1 else proto)
                return
            if live is not None and not live.closed:
                # a second object over a live library-OS socket's fd (ssl's
                # SSLSocket._create, then it detaches the original; http.client users
                # wrapping response.fileno()): it uses the same library-OS socket. A detach
                # of either leaves the fd to the other; a close closes it under both, as the
                # kernel would (SocketState.fd_shares, .lost)
                with rt.lock:
                    live.refs += 1
                    live.fd_shares[fd] = live.fd_shares.get(fd, 0) + 1
                self._st = live
                self._fd = fd
                self._tmo = _stdsocket.getdefaulttimeout()
                if (family, type, proto) != (-1, -1, -1):
                    self._ids = (live.family if family == -1 else family,
                                 live.type if type == -1 else type,
                                 live.proto if proto == -1 else proto)
                if _is_sslsocket(self):  # TLS runs over the shim socket (shim.tls)
                    from shim import tls
                    tls.ensure_patched()
                return
            if fd >= 0:
                with rt.lock:
                    accepted = fd in _kernel_accepted
                    counted = fd in _precounted
                    released = fd in _released
                    _kernel_accepted.discard(fd)
                    _precounted.discard(fd)
                    _released.discard(fd)
                if accepted:
                    rt.fallback("socket", "accept() on a kernel socket", "its listener is one")
                elif released:
                    rt.fallback("socket", f"socket(fileno={fd})",
                                "the fd of a detach()ed socket is a plain kernel socket")
                elif not counted:
                    rt.fallback("socket", f"socket(fileno={fd})",
                                "a kernel fd the shim did not create")
        _orig.socket_cls.__init__(self, family, type, proto, fileno)

    @classmethod
    def _demi_from_state(cls, st: SocketState, fd: int, timeout: float | None) -> "socket":
        sock = _socket.socket.__new__(cls)
        sock._io_refs = 0
        sock._closed = False
        sock._st = st
        sock._fd = fd
        sock._tmo = timeout
        sock._ids = None
        return sock

    # ------------------------------------------------------------------ identity
    @property
    def _demi_qd(self) -> int | None:
        """The qd behind this socket (``queueapi.qd_of``); None for a kernel socket."""
        st = self._st
        if st is None or self._fd < 0:
            return None
        return st.qd

    @property
    def _demi_state(self) -> SocketState | None:
        return self._st

    @property
    def family(self) -> Any:
        st = self._st
        v = _socket.socket.family.__get__(self) if st is None else \
            (st.family if self._ids is None else self._ids[0])
        return _enum_of(v, _stdsocket.AddressFamily, _FAMILIES)

    @property
    def type(self) -> Any:
        st = self._st
        v = _socket.socket.type.__get__(self) if st is None else \
            (st.type if self._ids is None else self._ids[1])
        return _enum_of(v, _stdsocket.SocketKind, _KINDS)

    @property
    def proto(self) -> int:
        st = self._st
        if st is None:
            return _socket.socket.proto.__get__(self)
        return st.proto if self._ids is None else self._ids[2]

    @property
    def timeout(self) -> float | None:
        if self._st is None:
            return _socket.socket.timeout.__get__(self)
        return self._tmo

    def fileno(self) -> int:
        if self._st is None:
            return _socket.socket.fileno(self)
        return self._fd

    def _live(self) -> SocketState:
        fd = self._fd
        if fd < 0:
            raise _oserror(errno.EBADF)
        st = self._st
        if st.lost and fd in st.lost:  # type: ignore[union-attr]
            raise _oserror(errno.EBADF)  # another object over this fd closed it
        return st  # type: ignore[return-value]

    def __del__(self) -> None:
        try:
            st = self._st
        except AttributeError:
            return
        if st is None:
            _socket.socket.__del__(self)
            return
        try:
            if self._fd >= 0:
                warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
                self._real_close()
        except Exception:
            pass

    # ------------------------------------------------------------------ timeouts
    def settimeout(self, value: Any) -> None:
        if self._st is None:
            return _socket.socket.settimeout(self, value)
        tmo = _parse_timeout(value)
        self._live()
        self._tmo = tmo

    def gettimeout(self) -> float | None:
        if self._st is None:
            return _socket.socket.gettimeout(self)
        return self._tmo

    def setblocking(self, flag: Any) -> None:
        if self._st is None:
            return _socket.socket.setblocking(self, flag)
        self._live()
        self._tmo = None if flag else 0.0

    def getblocking(self) -> bool:
        if self._st is None:
            return _socket.socket.getblocking(self)
        return self._tmo != 0.0

    # ------------------------------------------------------------------ control path
    def bind(self, address: Any) -> None:
        if self._st is None:
            return _socket.socket.bind(self, address)
        st = self._live()
        with st.rt.lock:
            st.los.bind(st.qd, address)
            if st.status == NEW:
                st.status = BOUND
                st.rt.changed(st)

    def listen(self, backlog: int | None = None) -> None:
        if self._st is None:
            if backlog is None:
                return _socket.socket.listen(self)
            return _socket.socket.listen(self, backlog)
        st = self._live()
        if backlog is None:
            backlog = min(_stdsocket.SOMAXCONN, 128)
        if not isinstance(backlog, int):
            raise TypeError(f"'{type(backlog).__name__}' object cannot be interpreted as an "
                            "integer")
        with st.rt.lock:
            if not st.stream:
                raise _oserror(errno.EOPNOTSUPP)
            st.los.listen(st.qd, max(0, backlog))
            st.status = LISTENING
            st.rt.changed(st)

    def _accept(self) -> tuple[int, Any]:
        if self._st is None:
            fd, addr = _socket.socket._accept(self)
            rt = runtime.current()
            if rt is not None:
                with rt.lock:
                    _kernel_accepted.add(fd)
            return fd, addr
        st = self._live()
        rt = st.rt
        timeout = self._tmo
        deadline = _deadline(timeout)
        while True:
            with rt.lock:
                if st.closed:
                    raise _oserror(errno.EBADF)
                if st.status != LISTENING:
                    raise _oserror(errno.EINVAL)
                if st.accepted:
                    new_qd, addr = st.accepted.popleft()
                    break
                if st.accept_err:
                    code, st.accept_err = st.accept_err, 0
                    raise _oserror(code)
                qt = st.ensure_accept()
            if not rt.wait_token(qt, _remaining(deadline)):
                raise _timed_out(timeout)
        new = SocketState(rt, new_qd, st.family, st.type, st.proto, CONNECTED)
        with rt.lock:
            rt.stats.sockets += 1
            rt.detached[new_qd] = new  # the stdlib's accept() adopts it: socket(fileno=fd)
        return new_qd, addr

    def connect(self, address: Any) -> None:
        if self._st is None:
            return _socket.socket.connect(self, address)
        err = self._connect(address, True)
        if err:
            raise _oserror(err)

    def connect_ex(self, address: Any) -> int:
        if self._st is None:
            return _socket.socket.connect_ex(self, address)
        return self._connect(address, False)

    def _connect(self, address: Any, raising: bool) -> int:
        st = self._live()
        rt = st.rt
        timeout = self._tmo
        if st.connect_qt is not None:
            rt.wait_token(st.connect_qt, 0)  # let a pending connect finish first
        with rt.lock:
            if st.status == CONNECTING:
                if timeout == 0:
                    return errno.EALREADY
                qt = st.connect_qt
            elif st.stream and st.status in (CONNECTED, LISTENING):
                return errno.EISCONN
            elif st.status == FAILED and st.connect_err:
                code, st.connect_err = st.connect_err, 0
                return code
            else:
                try:
                    qt = st.los.connect(st.qd, address)
                except OSError as e:
                    if raising or e.errno is None:
                        raise
                    return e.errno
                st.status = CONNECTING
                st.connect_err = 0
                st.connect_qt = rt.track(qt, st, "connect")
                rt.changed(st)
        if timeout == 0 and st.stream and st.family != _AF_UNIX:
            return errno.EINPROGRESS  # as the kernel: completion shows as writability
        if qt is not None and not rt.wait_token(qt, timeout):
            if timeout == 0:
                return errno.EINPROGRESS
            if raising:
                raise _timed_out(timeout)
            return errno.EAGAIN
        with rt.lock:
            if st.status == CONNECTED:
                return 0
            code, st.connect_err = st.connect_err, 0
            if st.status == FAILED and code:
                return code
            if st.status == CONNECTING:  # another thread's connect is still going
                return errno.EALREADY
            return code or errno.ECONNREFUSED

    def getsockname(self) -> Any:
        if self._st is None:
            return _socket.socket.getsockname(self)
        st = self._live()
        return st.los.getsockname(st.qd)

    def getpeername(self) -> Any:
        if self._st is None:
            return _socket.socket.getpeername(self)
        st = self._live()
        return st.los.getpeername(st.qd)

    def shutdown(self, how: int) -> None:
        if self._st is None:
            return _socket.socket.shutdown(self, how)
        st = self._live()
        how = _index(how)  # the checks the kernel call would make (a C int, then EINVAL)
        if not -2 ** 31 <= how <= 2 ** 31 - 1:
            raise OverflowError("signed integer is greater than maximum" if how > 0
                                else "signed integer is less than minimum")
        if how not in (_stdsocket.SHUT_RD, _stdsocket.SHUT_WR, _stdsocket.SHUT_RDWR):
            raise _oserror(errno.EINVAL)
        with st.rt.lock:
            st.los.shutdown(st.qd, how)
            if how in (_stdsocket.SHUT_RD, _stdsocket.SHUT_RDWR):
                st.shut_rd = True
            if how in (_stdsocket.SHUT_WR, _stdsocket.SHUT_RDWR):
                st.shut_wr = True
            st.rt.changed(st)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: Any = None) -> None:
        if self._st is None:
            if optlen is None:
                return _socket.socket.setsockopt(self, level, optname, value)
            return _socket.socket.setsockopt(self, level, optname, value, optlen)
        st = self._live()
        if optlen is not None:
            return self._kernel_call(f"setsockopt({level}, {optname}, None, {optlen})",
                                     lambda k: k.setsockopt(level, optname, value, optlen))
        if level == _stdsocket.SOL_SOCKET and optname == _stdsocket.SO_SNDBUF \
                and isinstance(value, int) and value > 0:
            with st.rt.lock:
                st.inflight_limit = max(2 * value, 4096)  # the kernel doubles it, too
                st.rt.changed(st)
        try:
            with st.rt.lock:
                st.los.setsockopt(st.qd, level, optname, value)
        except OSError as e:
            if not runtime.unsupported(e):
                raise
            self._option_fallback(f"setsockopt({level}, {optname})", e,
                                  lambda k: k.setsockopt(level, optname, value))
            with st.rt.lock:
                st.opts[(level, optname)] = value

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        if self._st is None:
            if buflen is None:
                return _socket.socket.getsockopt(self, level, optname)
            return _socket.socket.getsockopt(self, level, optname, buflen)
        st = self._live()
        rt = st.rt
        if level == _stdsocket.SOL_SOCKET and optname == _stdsocket.SO_ERROR and buflen is None:
            qt = st.connect_qt
            if qt is not None:
                rt.wait_token(qt, 0)
            with rt.lock:
                code, st.connect_err = st.connect_err, 0
                if not code and st.werr:
                    code, st.werr = st.werr, 0
                return code
        try:
            with rt.lock:
                return st.los.getsockopt(st.qd, level, optname, buflen)
        except OSError as e:
            if not runtime.unsupported(e):
                raise
            if buflen is None:
                with rt.lock:
                    if (level, optname) in st.opts:
                        return st.opts[(level, optname)]
                known = {_stdsocket.SO_TYPE: st.type, _stdsocket.SO_PROTOCOL: st.proto,
                         _stdsocket.SO_DOMAIN: st.family,
                         _stdsocket.SO_ACCEPTCONN: int(st.status == LISTENING)}
                if level == _stdsocket.SOL_SOCKET and optname in known:
                    return known[optname]
            return self._option_fallback(
                f"getsockopt({level}, {optname})", e,
                lambda k: k.getsockopt(level, optname) if buflen is None
                else k.getsockopt(level, optname, buflen))

    def _option_fallback(self, call: str, err: OSError, fn: Any) -> Any:
        """The library OS refused an option: ask the kernel socket under the qd, if any.

        The kernel's answer (or its error) is what plain Python would give. A qd that is not
        a kernel socket: the option is remembered and ignored (counted)."""
        st = self._st
        assert st is not None
        try:
            k = _kernel_view(st)
        except OSError:
            k = None
        if k is None:
            st.rt.fallback("call", call, f"the {st.los.name} library OS does not have this "
                           "option; it is remembered and ignored")
            return None
        try:
            result = fn(k)
        finally:
            _drop_kernel_view(k)
        st.rt.fallback("call", call, "the library OS refused the option; set on the kernel "
                       "socket under the qd")
        return result

    def _kernel_call(self, call: str, fn: Any) -> Any:
        """Do ``fn(kernel_socket)`` on the kernel socket under the qd (counted fallback).

        Not when the qd's fd does not carry the connection (a shm connection: its data rides
        shared-memory rings, and the fd is an unconnected socket or the control socket of the
        rings): then EOPNOTSUPP naming the call, never a call on the wrong socket."""
        st = self._live()
        if st.stream and st.status == CONNECTED and not kernel_backed(st):
            try:
                path = st.los.stats(st.qd).get("path", st.los.name)
            except (OSError, AttributeError):
                path = st.los.name
            what = ("ancillary data (SCM_RIGHTS, SCM_CREDENTIALS...) cannot ride a "
                    "shared-memory ring" if "ancillary" in call and path == "shm" else
                    "the connection's data does not go through the kernel socket")
            raise _oserror(errno.EOPNOTSUPP,
                           f"demishim: {call} on a {path} connection of the {st.los.name} "
                           f"library OS: {what}; socket.socketpair() makes kernel connections")
        st.rt.fallback("call", call, f"the {st.los.name} library OS cannot do it; done on the "
                       "kernel socket under the qd")
        try:
            k = _kernel_view(st)
        except OSError:
            raise _oserror(errno.EOPNOTSUPP, f"{call} is not possible on the {st.los.name} "
                           "library OS") from None
        try:
            return fn(k)
        finally:
            _drop_kernel_view(k)

    def _kernel_wait(self, st: SocketState, events: int, deadline: float | None) -> None:
        """Wait for kernel readiness of the qd itself (for calls done on the kernel socket)."""
        timeout = _remaining(deadline)
        p = _orig.poll_fn()
        p.register(st.qd, events)
        if not p.poll(None if timeout is None else timeout * 1000):
            raise _timed_out(self._tmo)

    def detach(self) -> int:
        if self._st is None:
            self._closed = True
            return _socket.socket.detach(self)
        self._closed = True
        fd, self._fd = self._fd, -1
        if fd < 0:
            return -1
        st = self._st
        with st.rt.lock:
            if st.lost.get(fd):  # another object on this fd closed it
                st.lost[fd] -= 1
                return fd
            if st.fd_shares.get(fd):  # another object (an SSLSocket) uses this fd now
                st.fd_shares[fd] -= 1
                st.refs -= 1
                return fd
        if st.release_to_kernel(fd):  # the caller owns a plain kernel fd now
            return fd
        with st.rt.lock:
            st.rt.detached[fd] = st
        return fd

    def dup(self) -> "socket":
        if self._st is None:
            return super().dup()
        st = self._live()
        fd = os.dup(self._fd)
        rt = st.rt
        with rt.lock:
            rt.by_fd[fd] = st
            rt.detached[fd] = st
            st.refs += 1
        sock = self.__class__(self.family, self.type, self.proto, fileno=fd)
        sock.settimeout(self.gettimeout())
        return sock

    def _real_close(self, _ss: Any = _socket.socket) -> None:
        st = self._st
        if st is None:
            _ss.close(self)
            return
        fd, self._fd = self._fd, -1
        if fd >= 0:
            st.release(fd)

    # sendfile() and _sendfile_use_sendfile() are the stdlib's: os.sendfile (patched: see
    # os_sendfile) pushes a file's bytes to a library-OS socket

    # ------------------------------------------------------------------ reading
    def _read(self, n: int, flags: int) -> tuple[bytes, Any, bool]:
        """Up to ``n`` bytes as the kernel's recv would return them: (data, addr, truncated)."""
        st = self._live()
        rt = st.rt
        timeout = 0.0 if flags & _MSG_DONTWAIT else self._tmo
        peek = bool(flags & _MSG_PEEK)
        deadline = None if timeout is None else _monotonic() + timeout
        got: list[bytes] | None = None
        while True:
            with rt.lock:
                res = st.take(n, peek)
                if res is None:
                    if st.closed:
                        raise _oserror(errno.EBADF)
                    qt = st.read_token(n)
            if res is not None:
                if flags & _MSG_WAITALL and st.stream and not peek and res[0]:
                    if got is None:
                        got = []
                    got.append(res[0])
                    n -= len(res[0])
                    if n > 0:
                        continue
                    return b"".join(got), None, False
                if got:
                    return b"".join(got) + res[0], None, False
                return res
            if not rt.wait_token(qt, _remaining(deadline)):
                if got:
                    return b"".join(got), None, False
                raise _timed_out(timeout)

    def _check_recv_flags(self, flags: int, call: str) -> bool:
        """True if these flags need the kernel (MSG_OOB, MSG_ERRQUEUE...)."""
        if not isinstance(flags, int):
            raise TypeError(f"'{type(flags).__name__}' object cannot be interpreted as an integer")
        return bool(flags & ~_RECV_FLAGS)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        st = self._st
        if st is None:
            return _socket.socket.recv(self, bufsize, flags)
        if not flags and self._fd >= 0:  # the common case: one whole buffered chunk
            with st.rt.lock:
                rbuf = st.rbuf
                if len(rbuf) == 1 and not st.roff and st.stream:
                    data = rbuf[0]
                    if len(data) <= bufsize:
                        rbuf.clear()
                        return data
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if flags and self._check_recv_flags(flags, "recv"):
            return self._kernel_call(f"recv(flags={flags:#x})",
                                     lambda k: k.recv(bufsize, flags | _MSG_DONTWAIT))
        return self._read(bufsize, flags)[0]

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        if self._st is None:
            return _socket.socket.recvfrom(self, bufsize, flags)
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        if self._check_recv_flags(flags, "recvfrom"):
            return self._kernel_call(f"recvfrom(flags={flags:#x})",
                                     lambda k: k.recvfrom(bufsize, flags | _MSG_DONTWAIT))
        data, addr, _ = self._read(bufsize, flags)
        return data, addr

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self._st is None:
            return _socket.socket.recv_into(self, buffer, nbytes, flags)
        n, _ = self._read_into(buffer, nbytes, flags, "recv_into")
        return n

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        if self._st is None:
            return _socket.socket.recvfrom_into(self, buffer, nbytes, flags)
        return self._read_into(buffer, nbytes, flags, "recvfrom_into")

    def _read_into(self, buffer: Any, nbytes: int, flags: int, call: str) -> tuple[int, Any]:
        # No view of ``buffer`` is held while waiting: a raised exception's frames would keep
        # it exported (asyncio resizes its bytearrays after a failed call).
        with memoryview(buffer) as m:
            if m.readonly:
                raise TypeError(f"{call}() argument 1 must be read-write bytes-like object, "
                                f"not {type(buffer).__name__}")
            size = m.nbytes
        nbytes = _index(nbytes)
        if nbytes < 0:
            raise ValueError(f"negative buffersize in {call}")
        if nbytes == 0:
            nbytes = size
        elif size < nbytes:
            raise ValueError("buffer too small for requested bytes")
        if self._check_recv_flags(flags, call):
            data, addr = self._kernel_call(f"{call}(flags={flags:#x})",
                                           lambda k: k.recvfrom(nbytes, flags | _MSG_DONTWAIT))
        else:
            data, addr, _ = self._read(nbytes, flags)
        n = len(data)
        with memoryview(buffer) as m, m.cast("B") as mb:
            mb[:n] = data
        return n, addr

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> tuple:
        if self._st is None:
            return _socket.socket.recvmsg(self, bufsize, ancbufsize, flags)
        bufsize, ancbufsize, flags = _index(bufsize), _index(ancbufsize), _index(flags)
        if bufsize < 0:
            raise ValueError("negative buffer size in recvmsg()")
        if ancbufsize < 0:
            raise ValueError("negative buffer size in recvmsg()")
        if ancbufsize or self._check_recv_flags(flags, "recvmsg"):
            res = self._kernel_recvmsg("recvmsg", flags,
                                       lambda k, f: k.recvmsg(bufsize, ancbufsize, f))
            if res is not None:
                return res
        data, addr, trunc = self._read(bufsize, flags)
        return data, [], (_MSG_TRUNC if trunc else 0), addr

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0, flags: int = 0) -> tuple:
        if self._st is None:
            return _socket.socket.recvmsg_into(self, buffers, ancbufsize, flags)
        bufs = list(buffers)
        sizes = []
        for b in bufs:
            with memoryview(b) as v:
                if v.readonly:
                    raise TypeError("recvmsg_into() argument 1 must be an iterable of "
                                    "writable buffers")
                sizes.append(v.nbytes)
        ancbufsize, flags = _index(ancbufsize), _index(flags)
        if ancbufsize < 0:
            raise ValueError("negative buffer size in recvmsg_into()")
        if ancbufsize or self._check_recv_flags(flags, "recvmsg_into"):
            res = self._kernel_recvmsg("recvmsg_into", flags,
                                       lambda k, f: k.recvmsg_into(bufs, ancbufsize, f))
            if res is not None:
                return res
        data, addr, trunc = self._read(sum(sizes), flags)
        pos = 0
        for b, size in zip(bufs, sizes):
            k = min(size, len(data) - pos)
            with memoryview(b) as v, v.cast("B") as vb:
                vb[:k] = data[pos:pos + k]
            pos += k
        return len(data), [], (_MSG_TRUNC if trunc else 0), addr

    def _kernel_recvmsg(self, call: str, flags: int, fn: Any) -> Any:
        """recvmsg with ancillary data: only the kernel has it. Done on the kernel socket
        under the qd when nothing is buffered or popped in the shim; else ``None``: the
        buffered data comes first, without ancillary data."""
        st = self._live()
        rt = st.rt
        with rt.lock:
            if st.rbuf or st.pop_qt is not None or st.eof or st.rerr:
                return None
        timeout = 0.0 if flags & _MSG_DONTWAIT else self._tmo
        deadline = _deadline(timeout)

        def go(k: Any) -> Any:
            while True:
                try:
                    return fn(k, flags | _MSG_DONTWAIT)
                except BlockingIOError:
                    if timeout == 0:
                        raise
                    self._kernel_wait(st, POLLIN, deadline)
        return self._kernel_call(f"{call}(ancillary data)", go)

    # ------------------------------------------------------------------ writing
    def _push(self, st: SocketState, immutable: bool, mv: memoryview, addr: Any,
              timeout: float | None, deadline: float | None) -> int:
        """Push up to MAX_PUSH bytes of ``mv`` once there is room; returns the bytes taken."""
        rt = st.rt
        n = len(mv)
        while True:
            with rt.lock:
                if st.werr:
                    code, st.werr = st.werr, 0
                    raise _oserror(code)
                if st.stream and st.status == CONNECTING:
                    qt = st.connect_qt
                elif st.stream and st.status != CONNECTED:
                    if st.status == FAILED and st.connect_err:
                        code, st.connect_err = st.connect_err, 0
                        raise _oserror(code)
                    raise _oserror(errno.EPIPE)
                elif st.has_room():
                    k = min(n, MAX_PUSH, st.inflight_limit - st.push_bytes)
                    if k == 0:
                        return 0
                    # the caller may reuse a mutable buffer as soon as send() returns
                    chunk: Any = (mv if k == n else mv[:k]) if immutable else mv[:k].tobytes()
                    los = st.los
                    if addr is None:
                        qt = los.push(st.qd, chunk)
                    else:
                        if st.status == NEW:
                            st.implicit_bind()
                        qt = los.pushto(st.qd, chunk, addr)
                    st.reap_push(qt, k)
                    return k
                else:
                    qt = st.oldest_push()
            if qt is None or not rt.wait_token(qt, _remaining(deadline)):
                raise _timed_out(timeout)

    def _send_flags(self, flags: int) -> bool:
        if not isinstance(flags, int):
            raise TypeError(f"'{type(flags).__name__}' object cannot be interpreted as an integer")
        return bool(flags & ~_SEND_FLAGS)

    def send(self, data: Any, flags: int = 0) -> int:
        st = self._st
        if st is None:
            return _socket.socket.send(self, data, flags)
        if self._fd < 0:
            raise _oserror(errno.EBADF)
        if data.__class__ is bytes and not flags and st.stream:
            # the common case: bytes on a connected stream with nothing queued before them
            n = len(data)
            with st.rt.lock:
                if st.status == CONNECTED and not st.pushes and not st.werr \
                        and 0 < n <= MAX_PUSH and n <= st.inflight_limit:
                    st.reap_push(st.los.push(st.qd, data), n)
                    return n
        # bytes go to the library OS as they are (immutable: no copy, no view)
        mv = data if data.__class__ is bytes else _view(data)
        if flags and self._send_flags(flags):
            return self._kernel_send(f"send(flags={flags:#x})", lambda k: k.send(mv, flags))
        if not st.stream:
            self._check_datagram(st, len(mv))
            if not len(mv):
                return self._kernel_send("send(b'')", lambda k: k.send(b"", flags))
        timeout = 0.0 if flags & _MSG_DONTWAIT else self._tmo
        return self._push(st, True, mv, None, timeout, _deadline(timeout))

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self._st is None:
            return _socket.socket.sendall(self, data, flags)
        st = self._live()
        mv = _view(data)
        if self._send_flags(flags):
            return self._kernel_send(f"sendall(flags={flags:#x})",
                                     lambda k: k.sendall(mv, flags))
        if not st.stream:
            self._check_datagram(st, len(mv))
        timeout = 0.0 if flags & _MSG_DONTWAIT else self._tmo
        deadline = _deadline(timeout)
        n = len(mv)
        sent = 0
        immutable = True  # _view copied a mutable buffer
        if n == 0:
            self._push(st, immutable, mv, None, timeout, deadline)
            return None
        while sent < n:
            sent += self._push(st, immutable, mv[sent:], None, timeout, deadline)
        return None

    def sendto(self, data: Any, *args: Any) -> int:
        if self._st is None:
            return _socket.socket.sendto(self, data, *args)
        if len(args) == 1:
            flags, addr = 0, args[0]
        elif len(args) == 2:
            flags, addr = args
        else:
            raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")
        mv = _view(data)
        self._send_flags(flags)
        st = self._live()
        _check_address(st.family, addr, "sendto")
        if self._send_flags(flags):
            return self._kernel_send(f"sendto(flags={flags:#x})",
                                     lambda k: k.sendto(mv, flags, addr))
        if st.stream:  # the address is ignored on a connected stream (POSIX)
            timeout = 0.0 if flags & _MSG_DONTWAIT else self._tmo
            return self._push(st, True, mv, None, timeout, _deadline(timeout))
        self._check_datagram(st, len(mv))
        if not len(mv):
            return self._kernel_send("sendto(b'')", lambda k: k.sendto(b"", flags, addr))
        timeout = 0.0 if flags & _MSG_DONTWAIT else self._tmo
        return self._push(st, True, mv, addr, timeout, _deadline(timeout))

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0,
                address: Any = None) -> int:
        if self._st is None:
            if address is None:
                return _socket.socket.sendmsg(self, buffers, ancdata, flags)
            return _socket.socket.sendmsg(self, buffers, ancdata, flags, address)
        st = self._live()
        views = [_view(b) for b in buffers]
        ancdata = list(ancdata)
        self._send_flags(flags)
        if address is not None:
            _check_address(st.family, address, "sendmsg")
        if ancdata or self._send_flags(flags):
            args = (views, ancdata, flags) + ((address,) if address is not None else ())
            return self._kernel_send("sendmsg(ancillary data)" if ancdata
                                     else f"sendmsg(flags={flags:#x})",
                                     lambda k: k.sendmsg(*args))
        data = b"".join(views)
        mv = memoryview(data)
        timeout = 0.0 if flags & _MSG_DONTWAIT else self._tmo
        deadline = _deadline(timeout)
        if st.stream:  # an address is ignored on a connected stream (POSIX)
            sent = 0
            while True:  # one sendmsg pushes all of it (it may be larger than MAX_PUSH)
                sent += self._push(st, True, mv[sent:], None, timeout, deadline)
                if sent >= len(mv):
                    return sent
        self._check_datagram(st, len(mv))
        if not len(mv):
            extra = () if address is None else (address,)
            return self._kernel_send("sendmsg(b'')",
                                     lambda k: k.sendmsg([b""], [], flags, *extra))
        with st.rt.lock:
            if st.werr:
                code, st.werr = st.werr, 0
                raise _oserror(code)
            if address is None:
                qt = st.los.push(st.qd, data)
            else:
                st.implicit_bind()
                qt = st.los.pushto(st.qd, data, address)
            st.track_push(qt, len(data))
        return len(data)

    def _check_datagram(self, st: SocketState, n: int) -> None:
        limit = _UDP_MAX.get(st.family)
        if limit is not None and n > limit:
            raise _oserror(errno.EMSGSIZE)

    def _kernel_send(self, call: str, fn: Any) -> Any:
        """A send the library OS cannot do: after the unfinished pushes, on the kernel socket."""
        st = self._live()
        st.flush(CLOSE_LINGER)
        timeout = self._tmo
        deadline = _deadline(timeout)

        def go(k: Any) -> Any:
            while True:
                try:
                    return fn(k)
                except BlockingIOError:
                    if timeout == 0:
                        raise
                    self._kernel_wait(st, POLLOUT, deadline)
        return self._kernel_call(call, go)


def _push_failed(st: SocketState, qt: int, n: int, r: Any) -> None:
    """For shim._speedups' send: the push ``qt`` of ``n`` bytes did not complete at once
    (``r`` None: track it) or failed (``r`` its result). SocketState.reap_push's two rare
    cases."""
    if r is None:
        st.track_push(qt, n)
    elif r[3] != errno.ECANCELED:
        st.werr = r[3]
        st.rt.changed(st)


#: the names of the methods shim._speedups does in C (the Python ones stay as _py_<name>)
_C_METHODS = ("recv", "recv_into", "send", "sendall", "settimeout")


def _install_speedups() -> bool:
    """Put shim._speedups' C methods on the socket class (unless $DEMISHIM_NO_C is set or
    the extension is not built): they do the common case in one C call and call the Python
    methods below for everything else."""
    if os.environ.get("DEMISHIM_NO_C"):
        return False
    try:
        from shim import _speedups
    except ImportError:
        return False
    py = {name: socket.__dict__[name] for name in _C_METHODS}
    descrs = _speedups.install(socket, py, SocketState, _push_failed, CONNECTED, _FAILED, _POP,
                               MAX_PUSH, POP_SIZE, deque)
    for name in _C_METHODS:
        setattr(socket, "_py_" + name, py[name])
        setattr(socket, name, descrs[name])
    return True


#: shim._speedups when its C code is in use (shim.select uses it too), else None
SPEEDUPS: Any = None
if _install_speedups():
    from shim import _speedups as SPEEDUPS


SocketType = _orig.SocketType
_lingering: set[threading.Thread] = set()  # closes waiting for their unfinished pushes
_lingering_lock = threading.Lock()


def wait_lingering(timeout: float = CLOSE_LINGER) -> None:
    """At exit: let closed sockets finish sending what they had queued (bounded)."""
    deadline = _monotonic() + timeout
    while True:
        with _lingering_lock:
            threads = list(_lingering)
        if not threads:
            return
        left = deadline - _monotonic()
        if left <= 0:
            return
        threads[0].join(left)
_kernel_accepted: set[int] = set()  # fds from accept() on kernel-mode listeners
_precounted: set[int] = set()       # kernel fds whose fallback was counted already
_released: set[int] = set()         # kernel fds given out by detach()


def _check_address(family: int, addr: Any, call: str) -> None:
    """The TypeErrors the kernel's address parsing gives, before anything is queued."""
    if family in (_AF_INET, _AF_INET6):
        if not isinstance(addr, tuple):
            raise TypeError(f"{call}(): {_name(family, _stdsocket.AddressFamily)} address must "
                            f"be tuple, not {type(addr).__name__}")
    elif family == _AF_UNIX:
        if not isinstance(addr, (str, bytes, bytearray, memoryview, os.PathLike)):
            raise TypeError(f"{call}(): AF_UNIX address must be str or bytes, not "
                            f"{type(addr).__name__}")


def _is_sslsocket(sock: Any) -> bool:
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(sock, ssl.SSLSocket)


def _index(v: Any) -> int:
    if isinstance(v, int):
        return v
    import operator
    return operator.index(v)


def _kernel_view(st: SocketState) -> Any:
    """A stdlib socket object over a dup of the qd, when the qd is a kernel socket."""
    fd = os.dup(st.qd)
    try:
        return _orig.socket_cls(st.family, st.type, st.proto, fileno=fd)
    except BaseException:
        os.close(fd)
        raise


def _drop_kernel_view(k: Any) -> None:
    try:
        k.close()
    except OSError:
        pass


# =============================================================================================
# Module helpers
# =============================================================================================
_GLOBAL_DEFAULT_TIMEOUT = _stdsocket._GLOBAL_DEFAULT_TIMEOUT


def create_connection(address: tuple[str, int], timeout: Any = _GLOBAL_DEFAULT_TIMEOUT,
                      source_address: Any = None, *, all_errors: bool = False) -> Any:
    """``socket.create_connection`` making library-OS sockets (names resolve as usual)."""
    host, port = address
    exceptions = []
    for res in _stdsocket.getaddrinfo(host, port, 0, _SOCK_STREAM):
        af, socktype, proto, canonname, sa = res
        sock = None
        try:
            sock = _stdsocket.socket(af, socktype, proto)  # late binding, as the stdlib does
            if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            exceptions.clear()
            return sock
        except OSError as exc:
            if not all_errors:
                exceptions.clear()
            exceptions.append(exc)
            if sock is not None:
                sock.close()
    if len(exceptions):
        try:
            if not all_errors:
                raise exceptions[0]
            raise ExceptionGroup("create_connection failed", exceptions)
        finally:
            exceptions.clear()
    raise OSError("getaddrinfo returns an empty list")


def create_server(address: Any, *, family: int = _AF_INET, backlog: int | None = None,
                  reuse_port: bool = False, dualstack_ipv6: bool = False) -> Any:
    """``socket.create_server`` making a library-OS listening socket."""
    if reuse_port and not hasattr(_stdsocket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT not supported on this platform")
    if dualstack_ipv6:
        if not _stdsocket.has_dualstack_ipv6():
            raise ValueError("dualstack_ipv6 not supported on this platform")
        if family != _AF_INET6:
            raise ValueError("dualstack_ipv6 requires AF_INET6 family")
    sock = _stdsocket.socket(family, _SOCK_STREAM)
    try:
        if os.name not in ("nt", "cygwin") and hasattr(_stdsocket, "SO_REUSEADDR"):
            try:
                sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
            except OSError:
                pass
        if reuse_port:
            sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
        if _stdsocket.has_ipv6 and family == _AF_INET6:
            if dualstack_ipv6:
                sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 0)
            elif hasattr(_stdsocket, "IPV6_V6ONLY") and hasattr(_stdsocket, "IPPROTO_IPV6"):
                sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as err:
            msg = "%s (while attempting to bind on address %r)" % (err.strerror, address)
            raise OSError(err.errno, msg) from None
        if backlog is None:
            sock.listen()
        else:
            sock.listen(backlog)
        return sock
    except OSError:
        sock.close()
        raise


_pair_counter = 0


def socketpair(family: int | None = None, type: int = _SOCK_STREAM, proto: int = 0) -> tuple:
    """A connected pair of library-OS sockets (listen/connect/accept, or two connected
    datagram sockets); the kernel's socketpair() if the library OS cannot make one."""
    global _pair_counter
    rt = runtime.current()
    if family is None:
        family = _AF_UNIX if hasattr(_stdsocket, "AF_UNIX") else _AF_INET
    if rt is not None:
        base_type = type & ~_TYPE_FLAGS
        if family in (_AF_UNIX, _AF_INET, _AF_INET6) and base_type in (_SOCK_STREAM, _SOCK_DGRAM) \
                and proto == 0:
            with rt.lock:
                _pair_counter += 1
                n = _pair_counter
            try:
                return _libos_pair(rt, family, base_type, type & _SOCK_NONBLOCK, n)
            except OSError as e:
                if not runtime.unsupported(e):
                    raise
                reason = f"the {rt.los.name} library OS cannot make it: {e.strerror}"
        else:
            reason = f"the {rt.los.name} library OS has no such sockets"
        call = (f"socketpair({_name(family, _stdsocket.AddressFamily)}, "
                f"{_name(type, _stdsocket.SocketKind)}, {proto})")
        rt.fallback("socket", call, reason, count=2)
    a, b = _orig.socketpair(family, type, proto)
    fa, fb = a.detach(), b.detach()
    if rt is not None:
        with rt.lock:
            _precounted.update((fa, fb))
    return _stdsocket.socket(family, type, proto, fa), _stdsocket.socket(family, type, proto, fb)


def kernel_backed(st: SocketState) -> bool:
    """Is the qd's own fd the connection (a kernel socket carrying the data), so that a write
    to the fd by other code (C code, ``os.write``, ``signal.set_wakeup_fd``) reaches the
    peer? False for a shm connection (the data rides a ring) or an inet socket."""
    try:
        return st.los.stats(st.qd).get("path") == "kernel"
    except (OSError, AttributeError):
        return False


def _ask_kernel_path(rt: runtime.Runtime, sock: Any) -> None:
    """Ask the library OS to make ``sock``'s connection a kernel connection (the shm library
    OS's ``kernel_path()`` hook: no shm rendezvous). Library OSes without it: nothing."""
    st = getattr(sock, "_st", None)
    if st is None:
        return
    with rt.lock:
        try:
            q = rt.los.lookup(st.qd)
        except (OSError, AttributeError):
            return
        fn = getattr(q, "kernel_path", None)
        if fn is not None:
            fn()


def _libos_pair(rt: runtime.Runtime, family: int, type: int, nonblock: int, n: int) -> tuple:
    """A pair of library-OS sockets whose connection is a kernel one where the library OS can
    choose (shm: ``kernel_path()``): a socketpair's fds are what programs hand to C code
    (``signal.set_wakeup_fd``, asyncio's self-pipe) or to ``os.read``/``os.write``
    (``multiprocessing.Pipe``), and "a write to fileno() reaches the peer" must hold."""
    def addr() -> Any:
        if family == _AF_UNIX:
            return f"\0demishim-pair.{os.getpid()}.{n}.{os.urandom(6).hex()}"
        return ("127.0.0.1", 0) if family == _AF_INET else ("::1", 0)

    cls = _stdsocket.socket
    if type == _SOCK_STREAM:
        lsock = cls(family, type)
        with rt.lock:
            rt.stats.sockets -= 1  # the temporary listener is not one of the pair
        try:
            _ask_kernel_path(rt, lsock)
            lsock.bind(addr())
            lsock.listen(1)
            a = cls(family, type)
            try:
                _ask_kernel_path(rt, a)
                a.settimeout(30.0)
                a.connect(lsock.getsockname())
                lsock.settimeout(30.0)
                b, _ = lsock.accept()
                if family != _AF_UNIX and b.getpeername() != a.getsockname():
                    b.close()
                    raise ConnectionError("unexpected peer in socketpair()")
            except BaseException:
                a.close()
                raise
        finally:
            lsock.close()
    else:
        a = cls(family, type)
        b = cls(family, type)
        try:
            a.bind(addr())
            b.bind(addr())
            a.connect(b.getsockname())
            b.connect(a.getsockname())
        except BaseException:
            a.close()
            b.close()
            raise
    t = 0.0 if nonblock else _stdsocket.getdefaulttimeout()
    a.settimeout(t)
    b.settimeout(t)
    return a, b


def fromfd(fd: Any, family: int, type: int, proto: int = 0) -> Any:
    """``socket.fromfd``: a dup of a library-OS socket stays on the library OS."""
    rt = runtime.current()
    if rt is not None:
        if not isinstance(fd, int):
            fd = fd.fileno() if hasattr(fd, "fileno") else fd
        with rt.lock:
            st = rt.by_fd.get(fd)
        if st is not None and not st.closed:
            nfd = os.dup(fd)
            with rt.lock:
                rt.by_fd[nfd] = st
                rt.detached[nfd] = st
                st.refs += 1
            return _stdsocket.socket(family, type, proto, nfd)
    nfd = os.dup(fd)
    return _stdsocket.socket(family, type, proto, nfd)


_orig_os_sendfile = getattr(os, "sendfile", None)


def os_sendfile(out_fd: int, in_fd: int, offset: Any, count: int, *args: Any, **kw: Any) -> int:
    """``os.sendfile`` to a library-OS socket: the file's bytes are read (``pread``, or
    ``read`` at the file position when ``offset`` is None, as sendfile(2) does) and pushed in
    order after what the socket already queued, at most as much as the socket has room for;
    a socket without room raises ``BlockingIOError`` (the qd's fd is non-blocking, as the
    library OS keeps it). So asyncio's ``sock_sendfile``/``loop.sendfile`` take their native
    path (which stops bare writes during a transfer). Anything else goes to the kernel."""
    rt = runtime.current()
    if rt is not None and isinstance(out_fd, int):
        st = rt.by_fd.get(out_fd)
        if st is not None and not st.closed:
            if args or kw or not st.stream:
                raise OSError(errno.EINVAL, f"{os.strerror(errno.EINVAL)} (demishim: "
                              "os.sendfile() to a library-OS datagram socket, or with "
                              "headers/trailers; send the data instead)")
            return _sendfile_to(st, in_fd, offset, count)
    return _orig_os_sendfile(out_fd, in_fd, offset, count, *args, **kw)  # type: ignore[misc]


def _sendfile_to(st: SocketState, in_fd: int, offset: Any, count: int) -> int:
    count = _index(count)
    if count < 0:
        raise OverflowError("count must be non-negative")
    rt = st.rt
    with rt.lock:
        if st.werr:
            code, st.werr = st.werr, 0
            raise _oserror(code)
        if st.shut_wr:
            raise _oserror(errno.EPIPE)
        if st.status != CONNECTED:
            raise _oserror(errno.ENOTCONN)
        if not count:
            return 0
        if not st.has_room():
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        k = min(count, MAX_PUSH, st.inflight_limit - st.push_bytes)
    from shim.files import file_of
    raw = file_of(in_fd)
    if raw is None:
        data = os.read(in_fd, k) if offset is None else os.pread(in_fd, k, _index(offset))
    elif offset is None:  # at the shim file's own position, which then moves
        data = raw.read(k) or b""
    else:  # the qd is the file's own fd (or a kernel fd of it after a seek)
        data = os.pread(raw._kfd if raw._kfd >= 0 else in_fd, k, _index(offset))
    if not data:
        return 0  # end of file
    n = len(data)
    with rt.lock:
        if st.closed:
            raise _oserror(errno.EBADF)
        st.reap_push(st.los.push(st.qd, data), n)
    return n


_orig_set_wakeup_fd = None


def set_wakeup_fd(fd: Any, /, *, warn_on_full_buffer: bool = True) -> int:
    """``signal.set_wakeup_fd``: the C signal handler writes a byte to ``fd`` itself, so a
    library-OS socket whose fd does not carry its connection (a shm connection) would lose
    every wakeup: refused with EOPNOTSUPP. ``socket.socketpair()`` (asyncio's self-pipe)
    makes kernel connections, which work."""
    rt = runtime.current()
    if rt is not None and isinstance(fd, int) and fd >= 0:
        st = rt.by_fd.get(fd)
        if st is not None and not st.closed and st.stream and st.status == CONNECTED \
                and not kernel_backed(st):
            raise _oserror(errno.EOPNOTSUPP,
                           f"demishim: signal.set_wakeup_fd({fd}): the fd of a library-OS "
                           f"connection whose data does not go through the kernel socket "
                           f"({st.los.name}); bytes the signal handler writes to it would "
                           "never reach the peer. Use socket.socketpair() (a kernel "
                           "connection under demishim)")
    return _orig_set_wakeup_fd(fd, warn_on_full_buffer=warn_on_full_buffer)  # type: ignore[misc]
