"""The shm library OS (Demikernel's catmem/catloop): shared-memory rings between processes,
with the kernel as the control path and as the fallback.

* A stream socket that listens also listens on the kernel at the same address, so clients not
  on shm (redis-cli, curl, another host) still connect; and it listens on a rendezvous name
  for that address, where shm clients connect and hand over their rings.
* A connect to a loopback address with a shm listener becomes a shm connection; otherwise it
  is an ordinary kernel connection. ``stats(qd)['path']`` says which (``shm`` or ``kernel``).
* ``kernel_path()`` on a new socket (``LibOS.lookup(qd).kernel_path()``) opts it out of shm:
  its listener publishes no rendezvous name and its connect does not dial one, so every
  connection it makes or accepts is a kernel connection. For sockets whose fd other code
  writes to directly (a ``signal.set_wakeup_fd`` self-pipe, a socketpair handed to C code or
  to ``os.read``/``os.write``): demishim's ``socketpair()`` uses it.
* Datagram sockets and files are the posix library OS's.
* ``create_pipe``/``open_pipe`` are shm rings too.

Waiting: ``poll`` first serves the rings, then spins for ``spin_us`` (config, default 200 µs)
checking the rings it waits on, then announces that it dozes in each of them and sleeps in
epoll, where the peer's push rings its doorbell (an eventfd) and kernel sockets and control
sockets (peer death) are watched as well. When both sides are busy no system call is made.
A wait for kernel sockets alone (no ring awaited) spins on the epoll as the posix library
OS does, for the same ``spin_us``.

A spin that lasts longer than ``spin_yield_us`` (config, default 20 µs) yields the CPU
at each check of the clock (``sched_yield``): when more threads are runnable than there are
CPUs, the peer being waited for may need this very CPU, and a spin that never yields makes
each hand-off wait for the end of a scheduler time slice (milliseconds). A negative
``spin_yield_us`` never yields: the spinning mode of dedicated cores, with no system call
at all while both sides are busy.

Config (``[shm]`` in ``$DEMI_CONFIG``): ``ring_capacity`` (bytes per direction, default 4 MiB),
``spin_us``, ``spin_yield_us``, ``zero_copy_min`` (bytes; default 0, off): a popped element at least this big
is a read-only view into the ring instead of a copy, and the ring's next element waits until
that sga is freed (``sga.free()``, or dropped): pops of one connection then complete one at a
time, in order, as the application frees them.
"""
from __future__ import annotations

import errno
import os
import socket as _socket
import struct
import time
from collections import deque
from typing import Any

from libos import base
from libos.posix import backend as posix
from libos.posix.sockets import CONNECTED, CONNECTING, LISTENING, NEW, SocketQueue
from libos.shm import rendezvous as rdv
from libos.shm.channel import Channel
from queueapi.types import Opcode, QResult

DEFAULT_RING = 4 * 1024 * 1024
_STREAM_FAMILIES = (_socket.AF_INET, _socket.AF_INET6, _socket.AF_UNIX)
_monotonic = time.monotonic
_sched_yield = os.sched_yield


class ShmSocket(SocketQueue):
    """A stream socket that is a shm connection when both ends are on shm, else a kernel one."""

    def __init__(self, backend: Any, sock: _socket.socket, framing: bool, state: str = NEW,
                 chan: Channel | None = None, peer: Any = None) -> None:
        self.chan = chan
        self._peer = peer
        self._rdv: _socket.socket | None = None
        self._shm_backlog: deque[ShmSocket] = deque()
        self._handshake: Any = None
        super().__init__(backend, sock, framing, state)
        if chan is not None:
            self.element_preserving = True

    #: set by ``kernel_path()``: no shm rendezvous for this socket (see the module docstring)
    kernel_only = False

    def kernel_path(self) -> bool:
        """Make this socket's connections kernel connections (before ``listen``/``connect``;
        an accepted connection of a kernel-only listener is a kernel one anyway). Returns
        True; EISCONN/EINVAL if it is already connected, connecting or listening on shm."""
        self._check_open()
        if self.chan is not None or self._handshake is not None or self._rdv is not None:
            raise base.oserror(errno.EISCONN if self.chan is not None else errno.EINVAL,
                               "kernel_path() after the socket took the shm path")
        self.kernel_only = True
        return True

    def _lane_allowed(self) -> bool:
        return self.chan is None  # a kernel connection: the posix C lane; shm has its own

    def sgaalloc_on(self, size: int) -> Any:
        """``sgaalloc(size, qd)``: space in the transmit ring of a shm connection."""
        if self.chan is None or self.state != CONNECTED or self.shut_wr:
            return None
        return self.chan.sgaalloc_on(size)

    # ---------------------------------------------------------------- control path
    def listen(self, backlog: int) -> None:
        super().listen(backlog)
        if self._rdv is None and not self.kernel_only:
            key = rdv.key_for_address(self.sock.family, self.sock.getsockname())
            self._rdv = rdv.listener(key) if key else None
            if self._rdv is not None:
                self.backend.watch_fd(self._rdv.fileno(), _RendezvousListener(self))

    def accept(self, op: base.Op) -> None:
        self._check_open()
        if self.state != LISTENING:
            raise base.oserror(errno.EINVAL, "accept on a socket that is not listening")
        if self._shm_backlog:
            self._complete_accept(op, self._shm_backlog.popleft())
            return
        super().accept(op)
        if self._accepts and self._rdv is not None:
            _RendezvousListener(self).take()  # shm clients that waited for an accept

    def _complete_accept(self, op: base.Op, q: "ShmSocket") -> None:
        self.core.register(q)
        self.core.complete(op, QResult(Opcode.ACCEPT, op.qd, op.qt, 0, None, q.qd, q._peer))

    def shm_arrived(self, q: "ShmSocket") -> None:
        """A shm client finished its handshake with this listener."""
        if self.state != LISTENING:
            q.close()
            return
        if self._accepts:
            self._complete_accept(self._accepts.popleft(), q)
        else:
            self._shm_backlog.append(q)

    def connect(self, op: base.Op, addr: Any) -> None:
        self._check_open()
        family = self.sock.family
        key = rdv.key_for_address(family, addr)
        host_ok = family == _socket.AF_UNIX or (isinstance(addr, tuple) and rdv.is_local_host(addr[0]))
        if self.state != NEW or not key or not host_ok or self.kernel_only:
            super().connect(op, addr)
            return
        ctrl = rdv.dial(key)
        if ctrl is None:
            super().connect(op, addr)
            return
        if family != _socket.AF_UNIX:  # a real local address for getsockname()
            self.sock.bind(("::1" if family == _socket.AF_INET6 else "127.0.0.1", 0))
        try:
            tx, rx = rdv.send_hello(ctrl, addr, self.sock.getsockname(),
                                    self.backend.ring_capacity, self.backend.doorbell)
        except OSError:
            ctrl.close()
            super().connect(op, addr)
            return
        self.state = CONNECTING
        self._connect_op = op
        self._handshake = _ClientHandshake(self, ctrl, tx, rx, addr)
        self.backend.watch_fd(ctrl.fileno(), self._handshake)

    def handshake_done(self, hs: "_ClientHandshake", peer_doorbell: int | None,
                       local: Any) -> None:
        op, self._connect_op = self._connect_op, None
        self._handshake = None
        if peer_doorbell is None:  # refused: an ordinary kernel connection instead
            self.state = NEW if self.sock.family == _socket.AF_UNIX else "bound"
            super().connect(op, hs.addr)
            return
        self.chan = Channel(self.backend, self.qd)
        self.chan.attach(hs.tx, hs.rx, hs.ctrl, peer_doorbell)
        self._peer = hs.addr
        self.element_preserving = True
        self.state = CONNECTED
        self.core.complete(op, QResult(Opcode.CONNECT, op.qd, op.qt))

    def getpeername(self) -> Any:
        self._check_open()
        if self.chan is not None:
            if self.chan.reset_by_peer():  # as the kernel after a TCP reset
                raise base.oserror(errno.ENOTCONN, "the peer reset the connection")
            return self._peer
        return super().getpeername()

    def getsockname(self) -> Any:
        self._check_open()
        if self.chan is not None and self._listener_addr is not None:
            return self._listener_addr  # a server-side shm connection: the listener's address
        return super().getsockname()

    _listener_addr: Any = None

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        if self.chan is None:
            super().setsockopt(level, option, value)
        # a shm connection has no kernel socket options to honour: accepted and ignored,
        # but SO_LINGER on with a zero timeout makes close() abortive (see Channel.abort)
        if (level, option) == (_socket.SOL_SOCKET, _socket.SO_LINGER) \
                and isinstance(value, (bytes, bytearray)) and len(value) >= 8:
            onoff, linger = struct.unpack_from("ii", value)
            self._abort_on_close = bool(onoff) and linger == 0

    _abort_on_close = False

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        if self.chan is None:
            return super().getsockopt(level, option, buflen)
        if (level, option) == (_socket.SOL_SOCKET, _socket.SO_ERROR):
            return 0
        if (level, option) == (_socket.SOL_SOCKET, _socket.SO_TYPE):
            return _socket.SOCK_STREAM
        return super().getsockopt(level, option, buflen)

    def shutdown(self, how: int) -> None:
        if self.chan is None:
            super().shutdown(how)
            return
        self._check_open()
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
            self.shut_wr = True
            self.chan.shutdown_write()

    # ---------------------------------------------------------------- data path
    def push(self, op: base.Op, segs: tuple[Any, ...]) -> None:
        chan = self.chan
        if chan is None:
            super().push(op, segs)
            return
        if self.state != CONNECTED:
            raise base.oserror(errno.EBADF if self.closed else errno.ENOTCONN)
        if self.shut_wr:
            raise base.oserror(errno.EPIPE, "the write side was shut down")
        chan.push(op, segs)

    def pop(self, op: base.Op, size: int | None) -> None:
        chan = self.chan
        if chan is None:
            super().pop(op, size)
            return
        if self.state != CONNECTED:
            raise base.oserror(errno.EBADF if self.closed else errno.ENOTCONN)
        chan.pop(op, size)

    def cancel(self, op: base.Op) -> bool:
        return self.chan.cancel(op) if self.chan is not None else super().cancel(op)

    def unpop(self, result: QResult) -> bool:
        return self.chan.unpop(result) if self.chan is not None else super().unpop(result)

    def on_events(self, ev: int) -> None:
        if self.chan is not None and self.chan.ctrl is self.sock:
            self.chan.on_events(ev)  # a server-side shm connection: the qd is its control socket
            return
        super().on_events(ev)

    def close(self) -> None:
        if self.closed:
            return
        if self._rdv is not None:
            self.backend.unwatch_fd(self._rdv.fileno(), None)
            self._rdv.close()
            self._rdv = None
        while self._shm_backlog:
            self._shm_backlog.popleft().close()
        if self._handshake is not None:
            self._handshake.abandon()
            self._handshake = None
        chan = self.chan
        close = None if chan is None else chan.abort if self._abort_on_close else chan.close
        if chan is not None and chan.ctrl is self.sock:
            # the qd is the control socket: the channel closes it; the base class must not
            self.backend.unwatch(self)
            self.state = "closed"
            close()
            return
        super().close()
        if chan is not None:
            close()

    def stats(self) -> dict[str, Any]:
        if self.chan is None:
            s = super().stats()
            s["path"] = "kernel"
            return s
        s = base.Queue.stats(self)
        s.update(state=self.state, framing=self.framing, **self.chan.stats())
        self.chan.add_lane_counts(s)
        return s


class _RendezvousListener:
    """Accepts shm clients on a listener's rendezvous name and runs their handshakes."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def on_events(self, ev: int) -> None:
        owner = self.owner
        if getattr(owner, "_inherited", False) and not owner._accepts:
            # a listener inherited through fork: only a process that accepts takes its shm
            # clients (the child of a forking server must not take the parent's); the next
            # accept() looks again
            return
        self.take()

    def take(self) -> None:
        rsock = self.owner._rdv
        while rsock is not None:
            try:
                conn, _ = rsock.accept()
            except BlockingIOError:
                return
            except OSError:
                return
            conn.setblocking(False)
            _ServerHandshake(self.owner, conn).start()


class _ServerHandshake:
    """Reads one client hello on ``conn`` (now or when it arrives) and answers it."""

    def __init__(self, owner: Any, conn: _socket.socket) -> None:
        self.owner = owner
        self.conn = conn
        self.backend = owner.backend
        self.watching = False

    def start(self) -> None:
        if not self._try():
            self.backend.watch_fd(self.conn.fileno(), self)
            self.watching = True

    def on_events(self, ev: int) -> None:
        self._try()

    def _try(self) -> bool:
        conn = self.conn
        try:
            msg, tx, rx, doorbell = rdv.read_hello(conn)
        except BlockingIOError:
            return False
        except (OSError, EOFError):
            self._drop()
            return True
        if self.watching:
            self.backend.unwatch_fd(conn.fileno(), self)
            self.watching = False
        try:
            self.owner.shm_accept(conn, tx, rx, doorbell, rdv.address_from_json(msg.get("from")))
        except OSError:
            tx.close()
            rx.close()
            os.close(doorbell)
            conn.close()
        return True

    def _drop(self) -> None:
        if self.watching:
            self.backend.unwatch_fd(self.conn.fileno(), self)
            self.watching = False
        self.conn.close()


def _listener_shm_accept(self: ShmSocket, conn: _socket.socket, tx: Any, rx: Any,
                         doorbell: int, peer: Any) -> None:
    """A listener's side of a finished handshake: a new shm connection on ``conn``."""
    rdv.reply(conn, True, self.sock.getsockname(), self.backend.doorbell)
    chan = Channel(self.backend, conn.fileno())
    q = ShmSocket(self.backend, conn, self.framing, CONNECTED, chan=chan, peer=peer)
    q._listener_addr = self.sock.getsockname()
    chan.attach(tx, rx, conn, doorbell, watch=False)  # conn is q's own fd: q forwards events
    self.shm_arrived(q)


ShmSocket.shm_accept = _listener_shm_accept  # type: ignore[attr-defined]


class _ClientHandshake:
    """Waits for the server's answer to our hello."""

    def __init__(self, owner: ShmSocket, ctrl: _socket.socket, tx: Any, rx: Any, addr: Any) -> None:
        self.owner, self.ctrl, self.tx, self.rx, self.addr = owner, ctrl, tx, rx, addr
        self.backend = owner.backend

    def on_events(self, ev: int) -> None:
        try:
            msg, doorbell = rdv.read_reply(self.ctrl)
        except BlockingIOError:
            return
        except (OSError, EOFError):
            msg, doorbell = {}, None
        self.backend.unwatch_fd(self.ctrl.fileno(), self)
        if doorbell is None:
            self.abandon()
            self.owner.handshake_done(self, None, None)
        else:
            self.owner.handshake_done(self, doorbell, rdv.address_from_json(msg.get("local")))

    def abandon(self) -> None:
        self.backend.unwatch_fd(self.ctrl.fileno(), self)
        self.ctrl.close()
        self.tx.close()
        self.rx.close()


class ShmPipe(base.Queue):
    """A named pipe over two rings. The creator waits on a rendezvous name for one opener;
    pushes and pops made before the handshake completes pend."""

    kind = "pipe"

    def __init__(self, backend: Any, name: str, create: bool) -> None:
        qd = os.eventfd(0, os.EFD_CLOEXEC)  # the qd: a real fd this queue owns
        super().__init__(backend.core, qd)
        self.backend = backend
        self.name = name
        self.chan = Channel(backend, qd)
        self.closed = False
        self._rdv: _socket.socket | None = None
        self._handshake: Any = None
        key = f"pipe:{name}"
        if create:
            self._rdv = rdv.listener(key)
            if self._rdv is None:
                os.close(qd)
                raise base.oserror(errno.EEXIST, f"a pipe named {name!r} exists")
            backend.watch_fd(self._rdv.fileno(), _RendezvousListener(self))
        else:
            ctrl = rdv.dial(key)
            if ctrl is None:
                os.close(qd)
                raise base.oserror(errno.ENOENT, f"no pipe named {name!r} is waiting to be opened")
            try:
                tx, rx = rdv.send_hello(ctrl, name, "", backend.ring_capacity, backend.doorbell)
            except OSError:
                ctrl.close()
                os.close(qd)
                raise
            self._handshake = _ClientHandshake(self, ctrl, tx, rx, name)  # type: ignore[arg-type]
            backend.watch_fd(ctrl.fileno(), self._handshake)

    def shm_accept(self, conn: _socket.socket, tx: Any, rx: Any, doorbell: int, peer: Any) -> None:
        if self._rdv is None or self.chan.attached:
            raise base.oserror(errno.EBUSY)
        rdv.reply(conn, True, self.name, self.backend.doorbell)
        self.backend.unwatch_fd(self._rdv.fileno(), None)
        self._rdv.close()  # one opener per pipe
        self._rdv = None
        self.chan.attach(tx, rx, conn, doorbell)

    def handshake_done(self, hs: _ClientHandshake, doorbell: int | None, local: Any) -> None:
        self._handshake = None
        if doorbell is None:
            self.chan._fail(errno.ECONNREFUSED)
            return
        self.chan.attach(hs.tx, hs.rx, hs.ctrl, doorbell)

    @property
    def state(self) -> str:
        return LISTENING

    def push(self, op: base.Op, segs: tuple[Any, ...]) -> None:
        if self.closed:
            raise base.oserror(errno.EBADF)
        self.chan.push(op, segs)

    def pop(self, op: base.Op, size: int | None) -> None:
        if self.closed:
            raise base.oserror(errno.EBADF)
        self.chan.pop(op, size)

    def cancel(self, op: base.Op) -> bool:
        return self.chan.cancel(op)

    def unpop(self, result: QResult) -> bool:
        return self.chan.unpop(result)

    def sgaalloc_on(self, size: int) -> Any:
        return None if self.closed else self.chan.sgaalloc_on(size)

    def shutdown(self, how: int) -> None:
        if how in (_socket.SHUT_WR, _socket.SHUT_RDWR):
            self.chan.shutdown_write()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._rdv is not None:
            self.backend.unwatch_fd(self._rdv.fileno(), None)
            self._rdv.close()
        if self._handshake is not None:
            self._handshake.abandon()
        self.chan.close()
        os.close(self.qd)

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(name=self.name, **self.chan.stats())
        self.chan.add_lane_counts(s)
        return s


class Backend(posix.Backend):
    name = "shm"

    def __init__(self, core: Any, config: dict[str, Any]) -> None:
        self._want: dict[Channel, None] = {}  # channels with pending ops, in order
        super().__init__(core, config)  # (spin_us, spin_yield_us: also for the kernel's fds)
        self.ring_capacity = int(config.get("ring_capacity", DEFAULT_RING))
        self.spin_ns = self.epoll_spin_ns  # wait() on a fast lane spins this long
        self.spin = self.spin_ns / 1e9
        self.zero_copy_min = int(config.get("zero_copy_min", 0))
        if self.zero_copy_min < 0:
            raise ValueError(f"[shm] zero_copy_min must be >= 0, got {self.zero_copy_min}")
        self.spins = 0
        self.dozes = 0
        self._sleeping = False  # the poller sleeps in epoll (see before_sleep)
        self._busy_polls = 0

    @property
    def doorbell(self) -> int:
        """Our eventfd: the peers write it when they find us dozing."""
        return self._wake_fd

    def c_poll_busy(self) -> dict[Channel, None]:
        """``poll`` is the posix poll while no channel waits for its rings: then a
        single-threaded wait polls in C (kernel connections and control sockets)."""
        return self._want

    def want(self, chan: Channel) -> None:
        self._want[chan] = None

    def unwant(self, chan: Channel) -> None:
        self._want.pop(chan, None)
        lane = chan.lane
        if lane is not None:
            lane.wanted = 0  # the next pop that pends calls want() again

    # ---------------------------------------------------------------- queues
    def socket(self, domain: int, type: int, proto: int, framing: bool) -> base.Queue:
        if domain in _STREAM_FAMILIES and type == _socket.SOCK_STREAM:
            sock = _socket.socket(domain, type | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC, proto)
            return ShmSocket(self, sock, framing)
        return super().socket(domain, type, proto, framing)

    def create_pipe(self, name: str) -> base.Queue:
        return ShmPipe(self, name, create=True)

    def open_pipe(self, name: str) -> base.Queue:
        return ShmPipe(self, name, create=False)

    def after_fork_in_child(self) -> None:
        """Handshakes in progress at the fork (a connect or an accept that another thread of
        the parent was making) stay the parent's: the child does not watch their control
        sockets, which the two processes share, so it never reads the parent's hello or reply
        (that left the parent's connect waiting for ever). Then the posix part: a new epoll
        for what the child still watches."""
        for fd, handler in list(self._watched.items()):
            if isinstance(handler, (_ClientHandshake, _ServerHandshake)):
                del self._watched[fd]  # (before the new epoll is made: the old one is shared)
                if isinstance(handler, _ServerHandshake):
                    handler.watching = False
        self._sleeping = False  # (a parent's thread was the poller)
        super().after_fork_in_child()

    # ---------------------------------------------------------------- waiting
    def _serve(self, chans: tuple[Any, ...], wake: bool = False) -> None:
        """Serve the rings of ``chans`` (first ending their doze, with ``wake``) and run the
        completions' callbacks, under the core's lock."""
        core = self.core
        with core.lock:
            for ch in chans:
                if wake:
                    ch.wake_up()
                ch.service()
            if core._deferred:
                core.drain()

    def poll(self, timeout: float) -> None:
        core = self.core
        if not self._want:
            with core.lock:  # (the check and the flag together: see before_sleep)
                self._sleeping = not self._want
            if self._sleeping:
                try:
                    super().poll(timeout)
                finally:
                    self._sleeping = False
                return
        if self._want:
            with core.lock:
                chans = tuple(self._want)
                progress = False
                for ch in chans:
                    progress |= ch.service()
                if core._deferred:
                    core.drain()
            if progress:
                self._busy_polls += 1
                if self._busy_polls & 31 == 0:
                    super().poll(0)  # now and then, let kernel and control sockets move too
                return
            if timeout <= 0:  # one look, no sleep: so no doze handshake with the peers
                super().poll(0)
                self._serve(chans)
                return
            if self.spin > 0:
                now = _monotonic()
                end = now + min(self.spin, timeout)
                yield_at = now + self.spin_yield_ns / 1e9 if self.spin_yield_ns >= 0 else end
                self.spins += 1
                while now < end:
                    if now >= yield_at:
                        _sched_yield()  # as the C spin does (spin_yield_us)
                    now = _monotonic()
                    for ch in chans:
                        if ch.ready_hint():
                            self._serve(chans)
                            return
            with core.lock:
                chans = tuple(self._want)
                if not all([ch.doze() for ch in chans]):
                    self._serve(chans, wake=True)  # (the lock is re-entrant)
                    return
                self._sleeping = True  # (under the lock: see before_sleep)
            self.dozes += 1
            try:
                super().poll(timeout)
            finally:
                self._sleeping = False
                self._serve(chans, wake=True)
            return
        self.poll(timeout)  # (emptied by another thread since the first look: look again)

    def before_sleep(self) -> None:
        """A thread goes to sleep while another polls (the lock held). A poller asleep in
        epoll watches only the rings it announced when it went to sleep, not those of ops
        that pended since (this thread's, say), so wake it to look again."""
        if self._sleeping:
            self.wake()

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(spins=self.spins, dozes=self.dozes, waiting_channels=len(self._want))
        return s


def _before_fork() -> None:
    """Before ``os.fork``: give every shm connection a holders pair (see
    ``Channel._last_holder``), so that a close in one process (a forking server's parent
    closing its copy of the accepted connection) does not end the stream for the others."""
    import _socket as _csocket

    from queueapi.core import _instances
    for los in list(_instances):
        if not isinstance(los.backend, Backend):
            continue
        for q in list(los._queues.values()):
            chan = getattr(q, "chan", None)
            if chan is not None and chan.rx is not None and not chan.closed \
                    and chan.holders is None:
                try:
                    chan.holders = _csocket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
                except OSError:
                    pass


def _after_fork_in_child() -> None:
    """In a forked child: inherited listeners take shm clients only once the child accepts
    (see also ``Backend.after_fork_in_child``)."""
    from queueapi.core import _instances
    for los in list(_instances):
        if isinstance(los.backend, Backend):
            for q in list(los._queues.values()):
                if isinstance(q, ShmSocket) and q._rdv is not None:
                    q._inherited = True


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
