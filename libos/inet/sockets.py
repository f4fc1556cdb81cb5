"""Socket queues of the inet library OS: TCP and UDP over the user-space :class:`Stack`.

They behave like the posix library OS's sockets to the application (docs/semantics.md):
the same errors at call time, end of stream as a zero-length POP (repeated on later pops),
a reset as ``FAILED`` ``ECONNRESET``, pending tokens ``ECANCELED`` on close, pushes on one
queue completed in order.  What differs underneath: a push completes once every byte sits
in the connection's send buffer (``TcpConfig.send_buffer_size``); while the buffer is full
it stays pending (backpressure) and continues as ACKs free room.

Each queue owns an eventfd as its qd (the API's "a qd is a real fd the process owns").
The backend calls :meth:`on_event` for a queue whose connection, listener or endpoint the
stack reported as touched; every method runs with the LibOS lock held.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket as _socket
import struct
from collections import deque
from dataclasses import replace
from typing import Any

from libos.base import Op, Queue, failed, oserror
from queueapi.framing import FrameDecoder, FramingError, encode_iovecs
from queueapi.types import Opcode, QResult, SGArray, popped, popped_sga, pushed

from .tcp import TcpConfig, TcpConnection, TcpListener, TcpState

DEFAULT_POP = 8192
DGRAM_POP = 65535
_EMPTY = b""
_SYN_SENT = TcpState.SYN_SENT
_CLOSED = TcpState.CLOSED


def _c_send() -> Any:
    """``_send(conn, data)``: ``conn.send(data)`` with its common case (ESTABLISHED, bytes or a
    byte memoryview) in C (libos/inet/_tcpfast.c: send; anything else is ``conn.send``),
    used by :meth:`TcpSocket.push`; None without the C fast paths (DEMI_INET_NO_C=1) or
    under DEMI_INET_NO_C_TX=1 (tests/test_inet_txfast.py)."""
    from . import stack as _stack   # (its import sets the C module up: setup_stack)
    from .tcp import connection as _connection
    if not _connection.C_FAST_PATHS or _stack._tx_fast is None or os.environ.get("DEMI_INET_NO_C_TX"):
        return None
    try:
        from . import _tcpfast
        return _tcpfast.send
    except (ImportError, AttributeError):
        return None


_send = _c_send()

NEW, BOUND, LISTENING, CONNECTING, CONNECTED, FAILED_CONNECT, CLOSED = (
    "new", "bound", "listening", "connecting", "connected", "failed", "closed")

_SOL_SOCKET, _IPPROTO_TCP = _socket.SOL_SOCKET, _socket.IPPROTO_TCP


def parse_address(addr: Any, our_ip: int, *, for_bind: bool) -> tuple[int, int]:
    """``(host, port)`` -> ``(ip_int, port)``; the host must be a dotted IPv4 literal
    (``""``/``0.0.0.0`` allowed for bind).  TypeError for a wrong shape, EINVAL for a bad port,
    EADDRNOTAVAIL for a bind address that is not ours."""
    if not isinstance(addr, tuple) or len(addr) != 2 or not isinstance(addr[1], int) \
            or not isinstance(addr[0], (str, bytes)):
        raise TypeError(f"an AF_INET address is a (host, port) tuple, not {addr!r}")
    host, port = addr
    if not 0 <= port <= 65535:
        raise oserror(errno.EINVAL, f"port must be 0-65535, got {port}")
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host in ("", "0.0.0.0") and for_bind:
        return 0, port
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = int(ipaddress.IPv4Address(host))
    except ValueError:
        raise oserror(errno.EINVAL, f"the inet library OS takes dotted IPv4 addresses, not {host!r} "
                      "(resolve names before calling)") from None
    if for_bind and ip != our_ip:
        raise oserror(errno.EADDRNOTAVAIL, f"{host} is not this stack's address "
                      f"({ipaddress.IPv4Address(our_ip)})")
    return ip, port


def _ip_str(ip: int) -> str:
    return f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}"


class _InetSocket(Queue):
    kind = "socket"

    def __init__(self, backend: Any, state: str = NEW) -> None:
        super().__init__(backend.core, os.eventfd(0, os.EFD_CLOEXEC))
        self.backend = backend
        self.stack = backend.stack
        self.state = state
        self.port = 0
        self.opts: dict[tuple[int, int], Any] = {}
        self._pops: deque[tuple[Op, int | None]] = deque()
        self._pushback: deque[QResult] = deque()

    def _check_open(self) -> None:
        if self.state == CLOSED:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def getsockname(self) -> Any:
        self._check_open()
        return (_ip_str(int(self.stack.ip)) if self.port else "0.0.0.0", self.port)

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self._check_open()
        if not isinstance(value, (int, bytes, bytearray)) and value is not None:
            raise TypeError(f"setsockopt value must be an int or bytes, not {type(value).__name__}")
        self.opts[(level, option)] = bytes(value) if isinstance(value, (bytes, bytearray)) else value
        self._applied_option(level, option)

    def _applied_option(self, level: int, option: int) -> None:
        """Hook: an option changed (TCP applies some to its connection)."""

    def _default_option(self, level: int, option: int) -> int:
        if (level, option) == (_SOL_SOCKET, _socket.SO_TYPE):
            return self._sock_type
        if (level, option) == (_SOL_SOCKET, _socket.SO_ERROR):
            return 0
        if (level, option) == (_SOL_SOCKET, _socket.SO_ACCEPTCONN):
            return int(self.state == LISTENING)
        if level == _SOL_SOCKET and option == _socket.SO_DOMAIN:
            return _socket.AF_INET
        return 0

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        self._check_open()
        value = self.opts.get((level, option))
        if value is None:
            value = self._default_option(level, option)
        if buflen is None:
            if isinstance(value, bytes):
                return struct.unpack("i", value[:4].ljust(4, b"\0"))[0]
            return value
        if not isinstance(buflen, int) or not 0 < buflen <= 1024:
            raise oserror(errno.EINVAL, f"getsockopt buflen must be 1..1024, got {buflen!r}")
        raw = value if isinstance(value, bytes) else struct.pack("i", int(value))
        return raw[:buflen]

    def cancel(self, op: Op) -> bool:
        for item in self._pops:
            if item[0] is op:
                self._pops.remove(item)
                return True
        return False

    def unpop(self, result: QResult) -> bool:
        self._pushback.appendleft(result)
        if self._pops:
            self._serve_pops()
        return True

    def _serve_pops(self) -> None:
        pops = self._pops
        while pops:
            op, size = pops[0]
            if not self._try_pop(op, size):
                return
            pops.popleft()

    def _try_pop(self, op: Op, size: int | None) -> bool:
        raise NotImplementedError

    def _cancel_pops(self) -> None:
        core = self.core
        for op, _ in self._pops:
            core.complete(op, failed(op, errno.ECANCELED))
        self._pops.clear()

    def _release_qd(self) -> None:
        try:
            os.close(self.qd)
        except OSError:
            pass


class TcpSocket(_InetSocket):
    """A TCP socket queue: listener (``listener``) or connection (``conn``)."""

    _sock_type = _socket.SOCK_STREAM

    def __init__(self, backend: Any, framing: bool, conn: TcpConnection | None = None,
                 state: str = NEW) -> None:
        super().__init__(backend, state)
        self.framing = framing
        self.element_preserving = framing
        self.conn = conn
        self.listener: TcpListener | None = None
        self._reserved = False
        self.shut_wr = False
        self._shut_after_pushes = False
        self._rd_shut = False
        self._pushes: deque[list[Any]] = deque()     # [op, deque of memoryviews]
        self._accepts: deque[Op] = deque()
        self._connect_op: Op | None = None
        self._decoder = FrameDecoder() if framing else None
        self._frames: deque[list[bytes]] = deque()
        self._frame_error = 0
        if conn is not None:
            self.port = conn.local_port
            backend.own(conn, self)

    # ------------------------------------------------------------------ control path
    def bind(self, addr: Any) -> None:
        self._check_open()
        _, port = parse_address(addr, int(self.stack.ip), for_bind=True)
        if self.state != NEW or self.port:
            raise oserror(errno.EINVAL, "the socket is already bound")
        self.port = self.stack.tcp_reserve(port)
        self._reserved = True
        self.state = BOUND

    def listen(self, backlog: int) -> None:
        self._check_open()
        if backlog < 0:
            raise oserror(errno.EINVAL, f"backlog must not be negative, got {backlog}")
        if self.state in (CONNECTED, CONNECTING):
            raise oserror(errno.EISCONN, "listen on a connected socket")
        if self.state == LISTENING:
            self.listener.backlog = max(1, backlog)
            return
        if self.state == FAILED_CONNECT:
            raise oserror(errno.EINVAL, "listen after a failed connect; make a new socket")
        if not self.port:
            self.port = self.stack.tcp_reserve(0)
            self._reserved = True
        self.listener = self.stack.tcp_listen(self.port, backlog or 1, self._config())
        self.backend.own(self.listener, self)
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
        if self.state == CONNECTED:
            raise oserror(errno.EISCONN, "socket is already connected")
        if self.state == CONNECTING:
            raise oserror(errno.EINPROGRESS, "a connect is already in progress")
        if self.state == FAILED_CONNECT:
            raise oserror(errno.EINVAL, "a connect failed on this socket; make a new one")
        ip, port = parse_address(addr, int(self.stack.ip), for_bind=False)
        try:
            if port == 0:
                raise oserror(errno.ECONNREFUSED, "port 0")
            conn = self.stack.tcp_connect(ip, port, self.backend.now(), self.port, self._config())
        except OSError as e:
            self.state = FAILED_CONNECT
            self.core.complete(op, failed(op, e.errno or errno.EIO))
            return
        self.conn = conn
        self.port = conn.local_port
        self.backend.own(conn, self)
        self.state = CONNECTING
        self._connect_op = op
        self.backend.kick(flush=True)

    def getpeername(self) -> Any:
        self._check_open()
        if self.conn is None or self.state != CONNECTED:
            raise oserror(errno.ENOTCONN, "the socket is not connected")
        return (_ip_str(self.conn.remote_addr), self.conn.remote_port)

    def _default_option(self, level: int, option: int) -> int:
        cfg = self.conn.config if self.conn is not None else self.stack.tcp_config
        if (level, option) == (_IPPROTO_TCP, _socket.TCP_NODELAY):
            return int(not cfg.nagle)
        if (level, option) == (_SOL_SOCKET, _socket.SO_RCVBUF):
            return cfg.recv_buffer_size
        if (level, option) == (_SOL_SOCKET, _socket.SO_SNDBUF):
            return cfg.send_buffer_size
        if (level, option) == (_SOL_SOCKET, _socket.SO_ERROR):
            return (self.conn.error or 0) if self.conn is not None else 0
        return super()._default_option(level, option)

    def _config(self) -> TcpConfig:
        """The stack's TcpConfig with this socket's options applied."""
        cfg = self.stack.tcp_config
        kw: dict[str, Any] = {}
        nodelay = self.opts.get((_IPPROTO_TCP, _socket.TCP_NODELAY))
        if nodelay is not None:
            kw["nagle"] = not _truthy(nodelay)
        rcv = self.opts.get((_SOL_SOCKET, _socket.SO_RCVBUF))
        if isinstance(rcv, int) and rcv > 0:
            kw["recv_buffer_size"] = max(cfg.mss, min(rcv, 16 << 20))
        snd = self.opts.get((_SOL_SOCKET, _socket.SO_SNDBUF))
        if isinstance(snd, int) and snd > 0:
            kw["send_buffer_size"] = max(2048, min(snd, 16 << 20))
        return replace(cfg, **kw) if kw else cfg

    def _applied_option(self, level: int, option: int) -> None:
        if self.conn is not None and (level, option) == (_IPPROTO_TCP, _socket.TCP_NODELAY):
            self.conn.config = replace(self.conn.config, nagle=not _truthy(self.opts[(level, option)]))

    def shutdown(self, how: int) -> None:
        self._check_open()
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise oserror(errno.EINVAL, f"shutdown how must be SHUT_RD, SHUT_WR or SHUT_RDWR, not {how}")
        if self.state != CONNECTED or self.conn is None:
            raise oserror(errno.ENOTCONN, "shutdown on a socket that is not connected")
        if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
            self._rd_shut = True
            if self._pops:
                self._serve_pops()
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR) and not self.shut_wr:
            self.shut_wr = True
            if self._pushes:
                self._shut_after_pushes = True
            else:
                self.conn.close()
                self.backend.kick(flush=True)

    def close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        core = self.core
        self._cancel_pops()
        for item in self._pushes:
            core.complete(item[0], failed(item[0], errno.ECANCELED))
        for op in self._accepts:
            core.complete(op, failed(op, errno.ECANCELED))
        if self._connect_op is not None:
            core.complete(self._connect_op, failed(self._connect_op, errno.ECANCELED))
        self._pushes.clear()
        self._accepts.clear()
        self._connect_op = None
        backend = self.backend
        if self.listener is not None:
            backend.disown(self.listener)
            self.stack.tcp_unlisten(self.listener)
            self.listener = None
        conn = self.conn
        if conn is not None:
            backend.disown(conn)
            linger = self.opts.get((_SOL_SOCKET, _socket.SO_LINGER))
            zero_linger = False
            if isinstance(linger, bytes) and len(linger) >= 8:
                onoff, secs = struct.unpack("ii", linger[:8])
                zero_linger = bool(onoff) and secs == 0
            if conn.readable or zero_linger:
                conn.abort()  # unread data (or SO_LINGER 0): reset, as Linux does
            else:
                conn.close()
        if self._reserved:
            self.stack.tcp_release(self.port)
            self._reserved = False
        self._release_qd()
        backend.kick(flush=True)

    # ------------------------------------------------------------------ events
    def on_event(self) -> None:
        if self.state == CLOSED:
            return
        if self._connect_op is not None:
            self._check_connect()
        if self._accepts:
            self._serve_accepts()
        if self._pushes:
            self._serve_pushes()
        if self._pops:
            self._serve_pops()

    def _check_connect(self) -> None:
        conn = self.conn
        st = conn.state
        if st is _SYN_SENT:
            return
        op, self._connect_op = self._connect_op, None
        if st is _CLOSED and conn.error:
            self.state = FAILED_CONNECT
            self.core.complete(op, failed(op, conn.error))
        elif st is _CLOSED and not conn.eof:
            self.state = FAILED_CONNECT
            self.core.complete(op, failed(op, errno.ECONNREFUSED))
        else:
            self.state = CONNECTED
            self.core.complete(op, QResult(Opcode.CONNECT, op.qd, op.qt))

    def _serve_accepts(self) -> None:
        lst = self.listener
        while self._accepts:
            conn = self.stack.tcp_accept(lst)
            if conn is None:
                return
            q = TcpSocket(self.backend, self.framing, conn, CONNECTED)
            for key, value in self.opts.items():   # accepted sockets inherit the options
                if key != (_SOL_SOCKET, _socket.SO_LINGER):
                    q.opts[key] = value
            self.core.register(q)
            op = self._accepts.popleft()
            self.core.complete(op, QResult(Opcode.ACCEPT, op.qd, op.qt, 0, None, q.qd,
                                           (_ip_str(conn.remote_addr), conn.remote_port)))

    # ------------------------------------------------------------------ push
    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        if self.state == CLOSED:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")
        if self.shut_wr:
            raise oserror(errno.EPIPE, "the write side was shut down")
        if self.state != CONNECTED:
            raise oserror(errno.ENOTCONN, "push on a stream socket that is not connected")
        if not self._pushes and not self.framing and len(segs) == 1:
            b = segs[0]   # the common case: one buffer, and it fits the send buffer
            if type(b) is not bytes:
                b = memoryview(b).cast("B")
            try:
                n = self.conn.send(b) if _send is None else _send(self.conn, b)
            except OSError as e:
                self.core.complete(op, failed(op, e.errno or errno.EPIPE))
                return
            if n == len(b):
                self.core.complete(op, pushed(op.qd, op.qt))
                self.backend.kick_connection(self.conn)
                return
            self._push_partial(op, b, n)
            return
        bufs = encode_iovecs(segs) if self.framing else segs
        views = deque(b if type(b) is bytes else memoryview(b).cast("B") for b in bufs)
        self._pushes.append([op, views])
        if len(self._pushes) == 1:
            self._serve_pushes()
        self.backend.kick()

    def _push_partial(self, op: Op, b: Any, n: int) -> None:
        """:meth:`push` of one buffer whose first ``n`` bytes the send buffer took: the rest
        waits in ``_pushes`` (backpressure) and continues as ACKs free room."""
        self._pushes.append([op, deque((memoryview(b)[n:],))])
        self.backend.kick()

    def pushto(self, op: Op, segs: tuple[Any, ...], addr: Any) -> None:
        self._check_open()
        if self.shut_wr:
            raise oserror(errno.EPIPE, "the write side was shut down")
        raise oserror(errno.EISCONN if self.state == CONNECTED else errno.ENOTCONN,
                      "pushto is for datagram sockets; use push on a stream")

    def _serve_pushes(self) -> None:
        conn = self.conn
        pushes = self._pushes
        core = self.core
        while pushes:
            item = pushes[0]
            views = item[1]
            while views:
                b = views[0]
                try:
                    n = conn.send(b)
                except OSError as e:
                    code = e.errno or errno.EPIPE
                    for it in pushes:
                        core.complete(it[0], failed(it[0], code))
                    pushes.clear()
                    return
                if n == len(b):
                    views.popleft()
                else:
                    if n:
                        views[0] = memoryview(b)[n:]
                    return  # the send buffer is full: continue when ACKs free room
            pushes.popleft()
            core.complete(item[0], pushed(item[0].qd, item[0].qt))
        if self._shut_after_pushes:
            self._shut_after_pushes = False
            conn.close()

    # ------------------------------------------------------------------ pop
    def pop(self, op: Op, size: int | None) -> None:
        if self.state == CLOSED:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")
        if self.state != CONNECTED:
            raise oserror(errno.ENOTCONN, "pop on a stream socket that is not connected")
        if self._pops or not self._try_pop(op, size):
            self._pops.append((op, size))
        else:
            self.backend.kick()  # reading may open the window: a window update goes out now

    def _try_pop(self, op: Op, size: int | None) -> bool:
        if self._pushback:
            r = self._pushback.popleft()
            self.core.complete(op, r._replace(qd=op.qd, qt=op.qt))
            return True
        if self.framing:
            return self._try_pop_framed(op)
        conn = self.conn
        if self._rd_shut:
            self.core.complete(op, popped(op.qd, op.qt, _EMPTY))
            return True
        if conn._rcvbuf:   # conn.readable, without the property call (this runs per pop)
            self.core.complete(op, popped(op.qd, op.qt, conn.recv(size or DEFAULT_POP)))
            return True
        if conn.error:
            self.core.complete(op, failed(op, conn.error))
            return True
        if conn._fin_received or conn._state is _CLOSED:   # conn.eof (nothing is queued here)
            self.core.complete(op, popped(op.qd, op.qt, _EMPTY))
            return True
        return False

    def _try_pop_framed(self, op: Op) -> bool:
        conn = self.conn
        dec = self._decoder
        while True:
            if self._frames:
                self.core.complete(op, popped_sga(op.qd, op.qt, SGArray(self._frames.popleft())))
                return True
            if self._frame_error:
                self.core.complete(op, failed(op, self._frame_error))
                return True
            if conn.readable:
                dec.feed(conn.recv())
                try:
                    while (el := dec.next_element()) is not None:
                        self._frames.append(el)
                except FramingError as e:
                    self._frame_error = e.errno
                continue
            if conn.error:
                self._frame_error = conn.error
                continue
            if conn.eof or conn.state is _CLOSED or self._rd_shut:
                if dec.buffered:
                    self._frame_error = errno.ECONNABORTED  # the stream ended inside an element
                    continue
                self.core.complete(op, popped(op.qd, op.qt, _EMPTY))
                return True
            return False

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(path="inet", state=self.state, framing=self.framing, family="AF_INET",
                 pending_pops=len(self._pops), pending_pushes=len(self._pushes), local_port=self.port)
        conn = self.conn
        if conn is not None:
            s["tcp"] = dict(conn.counters.as_dict(), state=conn.state.name, cwnd=conn.cwnd,
                            ssthresh=conn.ssthresh, srtt=conn.srtt, rto=conn.rto, snd_wnd=conn.snd_wnd,
                            rcv_wnd=conn.rcv_wnd, mss=conn.snd_mss, send_queued=conn.send_queued,
                            readable=conn.readable, sack=conn.sack_permitted,
                            window_scales=conn.window_scales)
        if self.listener is not None:
            lst = self.listener
            s["tcp_listener"] = {"half_open": lst.half_open, "pending": lst.pending,
                                 "syn_backlog_drops": lst.syn_backlog_drops,
                                 "accept_queue_drops": lst.accept_queue_drops}
        return s


class UdpSocket(_InetSocket):
    """A UDP socket queue: one element per datagram; pops set ``addr`` to the source."""

    _sock_type = _socket.SOCK_DGRAM

    def __init__(self, backend: Any) -> None:
        super().__init__(backend)
        self.ep = None
        self.peer: tuple[int, int] | None = None

    def _bind_ephemeral(self) -> None:
        if self.ep is None:
            self.ep = self.stack.udp_bind(0)
            self.port = self.ep.port
            self.backend.own(self.ep, self)
            if self.state == NEW:
                self.state = BOUND

    def bind(self, addr: Any) -> None:
        self._check_open()
        _, port = parse_address(addr, int(self.stack.ip), for_bind=True)
        if self.ep is not None:
            raise oserror(errno.EINVAL, "the socket is already bound")
        self.ep = self.stack.udp_bind(port)
        self.port = self.ep.port
        self.backend.own(self.ep, self)
        self.state = BOUND

    def listen(self, backlog: int) -> None:
        self._check_open()
        raise oserror(errno.EOPNOTSUPP, "listen on a datagram socket")

    def accept(self, op: Op) -> None:
        self._check_open()
        raise oserror(errno.EOPNOTSUPP, "accept on a datagram socket")

    def connect(self, op: Op, addr: Any) -> None:
        self._check_open()
        ip, port = parse_address(addr, int(self.stack.ip), for_bind=False)
        self._bind_ephemeral()
        self.peer = (ip, port)
        self.ep.peer = self.peer
        self.ep.error = 0
        self.state = CONNECTED
        self.core.complete(op, QResult(Opcode.CONNECT, op.qd, op.qt))

    def getpeername(self) -> Any:
        self._check_open()
        if self.peer is None:
            raise oserror(errno.ENOTCONN, "the socket is not connected")
        return (_ip_str(self.peer[0]), self.peer[1])

    def shutdown(self, how: int) -> None:
        self._check_open()
        if self.peer is None:
            raise oserror(errno.ENOTCONN, "shutdown on a datagram socket that is not connected")

    def push(self, op: Op, segs: tuple[Any, ...]) -> None:
        self._check_open()
        if self.peer is None:
            raise oserror(errno.EDESTADDRREQ, "push on an unconnected datagram socket; use pushto")
        self._send(op, segs, self.peer)

    def pushto(self, op: Op, segs: tuple[Any, ...], addr: Any) -> None:
        self._check_open()
        self._send(op, segs, parse_address(addr, int(self.stack.ip), for_bind=False))

    def _send(self, op: Op, segs: tuple[Any, ...], dst: tuple[int, int]) -> None:
        self._bind_ephemeral()
        data = segs[0] if len(segs) == 1 else b"".join(segs)
        try:
            if dst[1] == 0:
                raise oserror(errno.EINVAL, "cannot send to port 0")
            self.stack.udp_send(self.ep, data, dst[0], dst[1], self.backend.now())
        except OSError as e:
            self.core.complete(op, failed(op, e.errno or errno.EIO))
            return
        self.core.complete(op, pushed(op.qd, op.qt))
        self.backend.kick(flush=True)  # a datagram may be the last thing a program does

    def pop(self, op: Op, size: int | None) -> None:
        if self.state == CLOSED:
            raise oserror(errno.EBADF, f"qd {self.qd} is closed")
        if self.ep is None:
            raise oserror(errno.EDESTADDRREQ, "pop on an unbound datagram socket; bind it first")
        if self._pops or not self._try_pop(op, size):
            self._pops.append((op, size))

    def _try_pop(self, op: Op, size: int | None) -> bool:
        if self._pushback:
            r = self._pushback.popleft()
            self.core.complete(op, r._replace(qd=op.qd, qt=op.qt))
            return True
        ep = self.ep
        if ep.error:
            code, ep.error = ep.error, 0
            self.core.complete(op, failed(op, code))
            return True
        item = ep.take()
        if item is None:
            return False
        data, addr = item
        limit = size or DGRAM_POP
        if len(data) > limit:
            data = data[:limit]  # as recvfrom: the rest of the datagram is discarded
        self.core.complete(op, popped(op.qd, op.qt, data, addr))
        return True

    def on_event(self) -> None:
        if self.state != CLOSED and self._pops:
            self._serve_pops()

    def offload_filter(self, flt: Any, pred: Any) -> Any:
        """``filter`` hook: a bound ``queueapi.Match`` (offload=True) on a bound socket runs as
        classic BPF on the device (see libos/inet/bpf.py); None keeps it on the CPU."""
        m = getattr(pred, "match", None)
        if m is None or not getattr(m, "offload", False) or self.ep is None or self.state == CLOSED:
            return None
        return self.backend.offload_udp(self, m)

    def close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self._cancel_pops()
        if self.ep is not None:
            self.backend.drop_offloads(self)
            self.backend.disown(self.ep)
            self.stack.udp_close(self.ep)
            self.ep = None
        self._release_qd()

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(path="inet", state=self.state, framing=False, family="AF_INET",
                 pending_pops=len(self._pops), pending_pushes=0, local_port=self.port)
        if self.ep is not None:
            s["udp"] = {"queued": len(self.ep.rx), "queued_bytes": self.ep.rx_bytes,
                        "drops": self.ep.drops, "datagrams_in": self.ep.datagrams_in,
                        "datagrams_out": self.ep.datagrams_out, "filtered": self.ep.filtered}
        return s


# ------------------------------------------------------------------ C fast paths

#: The Python methods under their own names: when the C versions (libos/inet/_tcpfast.c:
#: sock_push, sock_pop, sock_on_event) replace them, they take every call the C code does
#: not handle.
TcpSocket._push_py = TcpSocket.push  # type: ignore[attr-defined]
TcpSocket._pop_py = TcpSocket.pop  # type: ignore[attr-defined]
TcpSocket._on_event_py = TcpSocket.on_event  # type: ignore[attr-defined]


def _install_c_socket_paths() -> bool:
    """Replace :meth:`TcpSocket.push`, :meth:`TcpSocket.pop` and :meth:`TcpSocket.on_event`
    by their C versions (the common case of an unframed connected stream: one bytes buffer
    pushed that the send buffer takes, a pop with data queued or nothing yet; anything else
    is the Python method, tests/test_inet_sockfast.py compares both).  Only with the C send
    (``_send``: not under DEMI_INET_NO_C or DEMI_INET_NO_C_TX); ``DEMI_INET_NO_C_SOCK=1``
    turns these alone off (to measure them)."""
    if _send is None or os.environ.get("DEMI_INET_NO_C_SOCK"):
        return False
    try:
        from . import _tcpfast
        push, pop, on_event = _tcpfast.setup_sockets(
            TcpSocket, QResult, SGArray, deque, Opcode.PUSH, Opcode.POP, CONNECTED, CLOSED, _CLOSED,
            TcpSocket._push_py, TcpSocket._pop_py, TcpSocket._on_event_py, Op)  # type: ignore[attr-defined]
    except (ImportError, AttributeError, TypeError):
        return False
    TcpSocket.push = push  # type: ignore[method-assign]
    TcpSocket.pop = pop  # type: ignore[method-assign]
    TcpSocket.on_event = on_event  # type: ignore[method-assign]
    return True


#: True when TcpSocket.push, pop and on_event are the C versions.
C_SOCKET_PATHS = _install_c_socket_paths()


def _truthy(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return any(value)
    return bool(value)
