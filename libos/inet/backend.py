"""The inet library OS (Demikernel's catpowder): a user-space TCP/IP stack over AF_PACKET or TAP.

Configuration, the ``[inet]`` table of the TOML file named by ``$DEMI_CONFIG`` (scripts/netns.py
``up`` writes one)::

    interface = "dkstack0"      # required: the interface the stack owns (no kernel address on it)
    ipv4 = "10.77.5.1"          # required: our address
    prefix_len = 24             # on-link subnet (default 24)
    gateway = "10.77.5.2"       # next hop off the subnet (optional)
    mac = "02:d7:..:01"         # our MAC for TAP (AF_PACKET uses the interface's own MAC)
    mtu = 1500                  # default: the interface's MTU
    device = "afpacket"         # or "tap"
    netns = "P-stack"           # optional: open the device inside this namespace (root) when
                                # the process is not already in it
    # optional tuning: msl (TIME_WAIT = 2*msl, default 30 s), send_buffer / recv_buffer (bytes),
    # ephemeral_ports = [lo, hi], tpacket_version (AF_PACKET ring: 2, per-frame, the default;
    # or 3, blocks), retire_ms (the V3 block timeout, default 1), arp_ttl
    # (keys peer, peer_mac, peer_netns are read by tests and ignored here)

Errors when the device cannot be opened are ``OSError`` with the system's errno: ENODEV (no
interface configured, or it does not exist in this namespace), EPERM (not root / no
CAP_NET_RAW), each with a message that says what to do.

The loop (``poll``): take the frames the device has (the AF_PACKET ring: no system call per
frame), feed them to the sans-IO :class:`~libos.inet.stack.Stack`, transmit what it returns,
and let the socket queues whose connections changed complete their ops.  Then sleep in
``poll(2)`` on the device fd, an eventfd (``wake()``) and the watched kernel fds, for at
most the timeout and never past the stack's next timer.  Application calls (push, pop,
connect, close) run the stack at once and transmit without waiting for the poller.
"""
from __future__ import annotations

import contextlib
import errno
import os
import select
import socket as _socket
import time
from typing import Any

from libos import base
from libos.posix.files import FileQueue
from queueapi.types import Opcode, QResult

from .device.base import Device
from .sockets import TcpSocket, UdpSocket
from .stack import EPHEMERAL_PORTS, Stack
from .tcp import TcpConfig

_TYPE_FLAGS = getattr(_socket, "SOCK_NONBLOCK", 0) | getattr(_socket, "SOCK_CLOEXEC", 0)
_ALWAYS = select.POLLERR | select.POLLHUP | select.POLLNVAL
_monotonic = time.monotonic


def _config_error(detail: str) -> OSError:
    return OSError(errno.ENODEV, f"{os.strerror(errno.ENODEV)}: {detail}")


def open_device(config: dict[str, Any]) -> Device:
    """The device named by ``config`` (see the module docstring), opened in its namespace."""
    dev = config.get("device_object")
    if dev is not None:  # tests hand in a ready device (e.g. one end of a WireLink)
        return dev
    iface = config.get("interface")
    kind = str(config.get("device", "afpacket")).lower()
    if not iface:
        raise _config_error("the inet library OS has no interface configured: set "
                            "[inet] interface = \"...\" and ipv4 = \"...\" in the TOML file named by "
                            "$DEMI_CONFIG (`scripts/netns.py up --prefix P` creates a veth pair "
                            "and writes one)")
    if kind not in ("afpacket", "tap"):
        raise OSError(errno.EINVAL, f"[inet] device must be \"afpacket\" or \"tap\", not {kind!r}")
    ctx: Any = contextlib.nullcontext()
    netns = config.get("netns")
    if netns:
        from .device.netns import current_netns_id, in_netns, netns_path
        try:
            target = os.stat(netns_path(str(netns))).st_ino
        except OSError:
            target = None  # not there: assume we were started inside it (ip netns exec)
        if target is not None and target != current_netns_id():
            ctx = in_netns(str(netns))
    try:
        with ctx:
            if kind == "tap":
                from .device.tap import TapDevice
                mac = config.get("mac")
                return TapDevice(str(iface), mac=_mac_bytes(mac) if mac else None)
            from .device.afpacket import AfPacketDevice
            return AfPacketDevice(str(iface), retire_ms=int(config.get("retire_ms", 1)),
                                  tpacket_version=int(config.get("tpacket_version", 2)))
    except PermissionError as e:
        raise OSError(e.errno or errno.EPERM,
                      f"{os.strerror(e.errno or errno.EPERM)}: the inet library OS opens {kind} "
                      f"device {iface!r}, which needs root (CAP_NET_RAW/CAP_NET_ADMIN); run as root, "
                      f"e.g. inside `ip netns exec {netns or 'P-stack'} ...`") from None
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENXIO, errno.ENOENT):
            raise OSError(errno.ENODEV, f"{os.strerror(errno.ENODEV)}: interface {iface!r} does not "
                          "exist in this network namespace (run inside `ip netns exec P-stack`, or "
                          "set [inet] netns; `scripts/netns.py up` creates it)") from None
        raise


def _mac_bytes(mac: Any) -> bytes:
    from .wire import MacAddress
    return bytes(MacAddress(mac))


class Backend(base.Backend):
    """The inet library OS: one :class:`Stack` over one device, socket queues on top."""

    name = "inet"

    def __init__(self, core: Any, config: dict[str, Any]) -> None:
        super().__init__(core, config)
        if not config.get("ipv4") and config.get("device_object") is None:
            if not config.get("interface"):
                raise _config_error("the inet library OS has no interface configured: set "
                                    "[inet] interface = \"...\" and ipv4 = \"...\" in the TOML file "
                                    "named by $DEMI_CONFIG (`scripts/netns.py up --prefix P` writes one)")
            raise OSError(errno.EINVAL, "[inet] ipv4 = \"a.b.c.d\" is missing from the configuration")
        self.dev = open_device(config)
        try:
            self.stack = self._make_stack(config)
        except BaseException:
            self.dev.close()
            raise
        self._owners: dict[Any, Any] = {}
        self._kfd_watches: dict[int, list[tuple[base.Op, int]]] = {}
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._rx_frames = self._tx_frames = self._tx_dropped = 0
        self._polls = self._sleeps = 0
        self._clock = config.get("clock") or _monotonic
        self._txq: list[Any] = []       # frames of application calls, sent at the next poll
        self._offloads: list[_BpfOffload] = []
        self._defer_tx = bool(config.get("defer_tx", True))
        self._tx_batch = max(1, int(config.get("tx_batch", 64)))
        # announce ourselves (gratuitous ARP), as Linux does when an address comes up
        self._transmit([self.stack.gratuitous_arp()])

    def _make_stack(self, config: dict[str, Any]) -> Stack:
        dev = self.dev
        kind = str(config.get("device", "afpacket")).lower()
        mac = config.get("mac") if (kind == "tap" or config.get("device_object") is not None) else None
        mac = _mac_bytes(mac) if mac else dev.mac
        mtu = int(config.get("mtu", dev.mtu) or dev.mtu)
        mtu = min(mtu, dev.mtu)
        kw: dict[str, Any] = {"mss": max(64, min(1460, mtu - 40))}
        if "msl" in config:
            kw["msl"] = float(config["msl"])
        if "send_buffer" in config:
            kw["send_buffer_size"] = int(config["send_buffer"])
        if "recv_buffer" in config:
            kw["recv_buffer_size"] = int(config["recv_buffer"])
        if "delayed_ack" in config:
            kw["delayed_ack"] = float(config["delayed_ack"]) or None
        # the ACK of a PSH segment waits up to 1 ms for the application's reply to carry it
        kw["push_ack_delay"] = float(config.get("push_ack_delay", 0.001)) or None
        eph = config.get("ephemeral_ports", EPHEMERAL_PORTS)
        return Stack(mac, str(config["ipv4"]), prefix_len=int(config.get("prefix_len", 24)),
                     gateway=config.get("gateway") or None, mtu=mtu, tcp_config=TcpConfig(**kw),
                     arp_ttl=float(config.get("arp_ttl", 60.0)), ephemeral_ports=(int(eph[0]), int(eph[1])))

    # ------------------------------------------------------------------ queues
    def socket(self, domain: int, type: int, proto: int, framing: bool) -> base.Queue:
        if domain != _socket.AF_INET:
            raise base.oserror(errno.EAFNOSUPPORT, f"address family {domain}: the inet library OS "
                               "has AF_INET sockets only (use posix for AF_INET6/AF_UNIX)")
        kind = type & ~_TYPE_FLAGS
        if kind == _socket.SOCK_STREAM:
            if proto not in (0, _socket.IPPROTO_TCP):
                raise base.oserror(errno.EPROTONOSUPPORT, f"protocol {proto} on a stream socket")
            return TcpSocket(self, framing)
        if kind == _socket.SOCK_DGRAM:
            if framing:
                raise base.oserror(errno.EINVAL, "framing=True is for stream sockets "
                                   "(datagrams keep their boundaries already)")
            if proto not in (0, _socket.IPPROTO_UDP):
                raise base.oserror(errno.EPROTONOSUPPORT, f"protocol {proto} on a datagram socket")
            return UdpSocket(self)
        raise base.oserror(errno.EPROTONOSUPPORT if kind > 0 else errno.EINVAL,
                           f"socket type {type} (inet supports SOCK_STREAM and SOCK_DGRAM)")

    def open(self, path: str, flags: int, mode: int, framing: bool) -> base.Queue:
        return FileQueue(self.core, path, flags, mode, framing)

    def own(self, obj: Any, q: Any) -> None:
        """Route the stack's events for ``obj`` (connection, listener, endpoint) to queue ``q``."""
        self._owners[obj] = q

    def disown(self, obj: Any) -> None:
        self._owners.pop(obj, None)

    def now(self) -> float:
        return self._clock()

    # ------------------------------------------------------------------ the loop
    def _transmit(self, frames: list[Any]) -> None:
        n = self.dev.transmit(frames)
        self._tx_frames += n
        if n < len(frames):
            self._tx_dropped += len(frames) - n   # lost; TCP retransmits

    def _service(self) -> bool:
        events = self.stack.take_events()
        if not events:
            return False
        owners = self._owners
        for obj in events:
            q = owners.get(obj)
            if q is not None:
                q.on_event()
        return True

    def kick(self, flush: bool = False) -> None:
        """Run the stack now (the lock held) and serve what that changed.

        The frames it produces are transmitted at once when ``flush`` (close, connect,
        shutdown), when another thread is the poller (it may be asleep in poll(2)), or when
        ``tx_batch`` frames have gathered; otherwise they wait for the next :meth:`poll`, i.e.
        the application's next blocking wait, so that the replies to a batch of requests
        leave in one ``sendmmsg`` (``defer_tx = false`` in the config: always at once)."""
        stack = self.stack
        now = self._clock()
        out = stack.poll(now, False)   # timers wait for poll(): a reply may still carry the ACK
        if stack._events:
            if out:
                self._txq.extend(out)
            self._service()
            out = stack.poll(now, False)
        if out:
            self._txq.extend(out)
        txq = self._txq
        if txq and (flush or not self._defer_tx or len(txq) >= self._tx_batch
                    or self.core._poller is not None):
            self._flush()

    def kick_connection(self, conn: Any) -> None:
        """:meth:`kick` for an application call that concerns ``conn`` alone (a push)."""
        self._kick_tail(self.stack.poll_connection(conn, self._clock()))

    def _kick_tail(self, out: list[Any]) -> None:
        """:meth:`kick_connection` after its ``poll_connection`` returned ``out`` (the C
        kick_connection hands this part to Python when stack events are pending)."""
        if self.stack._events:
            if out:
                self._txq.extend(out)
            self._service()
            out = self.stack.poll(self._clock(), False)
        txq = self._txq
        if out:
            txq.extend(out)
        if txq and (not self._defer_tx or len(txq) >= self._tx_batch or self.core._poller is not None):
            self._flush()

    def _flush(self) -> None:
        txq = self._txq
        if txq:
            self._txq = []
            self._transmit(txq)

    def _run(self, now: float) -> bool:
        """One pass (the lock held); True if frames arrived or queues were served."""
        stack = self.stack
        frames = self.dev.receive()
        if frames:
            self._rx_frames += len(frames)
            if _rx_frames is not None:
                _rx_frames(stack, frames, now)   # the same loop, Stack.receive's common case in C
            else:
                receive = stack.receive
                for data, not_ready in frames:
                    receive(data, now, not not_ready)
        out = stack.poll(now)
        served = self._service()
        if served and (stack._active or stack._out):
            more = stack.poll(now, False)  # ACKs and window updates the application's pops caused
            if more:
                out.extend(more)
        txq = self._txq
        if txq:   # what pushes since the last poll produced goes first
            if out:
                txq.extend(out)
            out = txq
            self._txq = []
        if out:
            self._transmit(out)
        return bool(frames) or served

    def poll(self, timeout: float) -> None:
        self._polls += 1
        core = self.core
        now = self._clock()
        with core.lock:
            busy = self._run(now)
            if core._deferred:
                core.drain()
            deadline = self.stack.next_deadline()
        if self._kfd_watches:
            self._sleep(0.0)
        if busy:
            return
        wait = timeout
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - now))
        if wait > 0:
            release = getattr(self.dev, "release", None)
            if release is not None:
                with core.lock:
                    release()  # give the ring blocks back, or poll(2) returns at once
                    ready = self.dev.ready() if hasattr(self.dev, "ready") else False
                if ready:
                    wait = 0.0
            if wait > 0:
                self._sleeps += 1
                self._sleep(wait)
        with core.lock:
            self._run(self._clock())
            if core._deferred:
                core.drain()

    def _sleep(self, wait: float) -> None:
        p = select.poll()
        p.register(self.dev.fileno(), select.POLLIN)
        p.register(self._wake_fd, select.POLLIN)
        watches = self._kfd_watches
        with self.core.lock:
            for fd, ws in watches.items():
                mask = 0
                for _, ev in ws:
                    mask |= ev
                try:
                    p.register(fd, mask)
                except (OSError, ValueError):
                    pass
        try:
            ready = p.poll(max(0, int(wait * 1000 + 0.999)) if wait > 0 else 0)
        except InterruptedError:
            return
        for fd, ev in ready:
            if fd == self._wake_fd:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
            elif fd in watches:
                with self.core.lock:
                    self._kernel_fd_ready(fd, ev)

    def wake(self) -> None:
        os.eventfd_write(self._wake_fd, 1)

    # ------------------------------------------------------------------ kernel fd watches
    def watch_kernel_fd(self, op: base.Op, fd: int, events: int) -> None:
        """One-shot watch of a kernel fd: checked in the same poll(2) as the device."""
        if fd in (self._wake_fd, self.dev.fileno()):
            raise base.oserror(errno.EINVAL, f"fd {fd} belongs to the library OS")
        self._kfd_watches.setdefault(fd, []).append((op, events))
        self.wake()

    def unwatch_kernel_fd(self, op: base.Op) -> None:
        fd = op.qd
        ws = self._kfd_watches.get(fd)
        if not ws:
            return
        ws = [w for w in ws if w[0] is not op]
        if ws:
            self._kfd_watches[fd] = ws
        else:
            del self._kfd_watches[fd]

    def _kernel_fd_ready(self, fd: int, ev: int) -> None:
        ws = self._kfd_watches.get(fd)
        if not ws:
            return
        done, rest = [], []
        for w in ws:
            (done if ev & (w[1] | _ALWAYS) else rest).append(w)
        for op, want in done:
            self.core.complete(op, QResult(Opcode.POP, fd, op.qt, 0, None, None,
                                           ev & (want | _ALWAYS)))
        if rest:
            self._kfd_watches[fd] = rest
        else:
            del self._kfd_watches[fd]

    # ------------------------------------------------------------------ filter offload
    def offload_udp(self, sock: Any, match: Any) -> "_BpfOffload | None":
        """Run ``match`` for ``sock``'s port as classic BPF on the device; None if it cannot."""
        dev = self.dev
        if not callable(getattr(dev, "attach_filter", None)):
            return None   # TAP, the in-process wire: the filter stays on the CPU
        handle = _BpfOffload(self, sock, match)
        self._offloads.append(handle)
        try:
            self._attach_bpf()
        except (OSError, ValueError):
            self._offloads.remove(handle)
            with contextlib.suppress(OSError, ValueError):
                self._attach_bpf()
            return None
        sock.ep.filters.append(match)
        return handle

    def drop_offloads(self, sock: Any) -> None:
        """``sock`` is closing: its port's rules leave the kernel program."""
        mine = [h for h in self._offloads if h.sock is sock]
        for h in mine:
            h.release()

    def _attach_bpf(self) -> None:
        from .bpf import compile_udp_filters
        rules: dict[int, list[Any]] = {}
        for h in self._offloads:
            rules.setdefault(h.port, []).append(h.match)
        self.dev.attach_filter(compile_udp_filters(sorted(rules.items())) if rules else None)

    # ------------------------------------------------------------------ lifetime
    def after_fork_in_child(self) -> None:
        old = self._wake_fd
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        os.close(old)

    def shutdown_backend(self) -> None:
        with contextlib.suppress(Exception):
            self.kick(flush=True)  # FINs and RSTs of the sockets just closed
        self.dev.close()
        os.close(self._wake_fd)

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = {"polls": self._polls, "sleeps": self._sleeps, "rx_frames": self._rx_frames,
                             "tx_frames": self._tx_frames, "tx_dropped": self._tx_dropped,
                             "kernel_fd_watches": len(self._kfd_watches)}
        s["stack"] = self.stack.stats()
        dev_stats = getattr(self.dev, "stats", None)
        if callable(dev_stats):
            s["device"] = dev_stats()
        return s


class _BpfOffload:
    """One filter (a ``queueapi.Match`` on a bound UDP socket) running as classic BPF."""

    kind = "bpf"

    def __init__(self, backend: Backend, sock: Any, match: Any) -> None:
        self.backend = backend
        self.sock = sock
        self.match = match
        self.port = sock.port
        self.ep = sock.ep
        self.released = False

    def stats(self) -> dict[str, Any]:
        dev = self.backend.dev
        return {"bpf_insns": getattr(dev, "bpf_insns", 0),
                "kernel_filtered": dev.kernel_filtered() if hasattr(dev, "kernel_filtered") else None,
                "cpu_filtered": self.ep.filtered}

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        b = self.backend
        with contextlib.suppress(ValueError):
            b._offloads.remove(self)
        with contextlib.suppress(ValueError):
            self.ep.filters.remove(self.match)
        with contextlib.suppress(OSError, ValueError):
            b._attach_bpf()


# ------------------------------------------------------------------ C fast path

Backend._kick_connection_py = Backend.kick_connection  # type: ignore[attr-defined]


def _install_c_kick() -> bool:
    """Replace :meth:`Backend.kick_connection` by its C version (libos/inet/_tcpfast.c:
    be_kick_connection; the Python method takes what it does not handle), together with the
    C socket methods (libos.inet.sockets.C_SOCKET_PATHS: not under DEMI_INET_NO_C,
    DEMI_INET_NO_C_TX or DEMI_INET_NO_C_SOCK)."""
    from . import sockets as _sockets
    from . import stack as _stack
    if not _sockets.C_SOCKET_PATHS:
        return False
    try:
        from queueapi.core import LibOS
        poller = LibOS.__dict__.get("_poller")
    except ImportError:
        poller = None
    try:
        from . import _tcpfast
        kick_connection = _tcpfast.setup_backend(
            Backend, Backend._kick_connection_py, poller if isinstance(poller, property) else None,  # type: ignore[attr-defined]
            _stack._tx_fast is not None)
    except (ImportError, AttributeError, TypeError):
        return False
    Backend.kick_connection = kick_connection  # type: ignore[method-assign]
    return True


#: True when Backend.kick_connection is the C version.
C_KICK = _install_c_kick()


def _c_rx_frames() -> Any:
    """``_rx_frames(stack, frames, now)``: :meth:`Backend._run`'s loop ``for data, not_ready in
    frames: stack.receive(data, now, not not_ready)`` in C, with Stack.receive's common case
    (tcp_rx's checks and rx_established) there too (libos/inet/_tcpfast.c: rx_frames; the
    same effects: tests/test_inet_sockfast.py); None (the Python loop) without the C socket
    paths (C_KICK) or the stack's C receive path (DEMI_INET_NO_C_RX)."""
    from . import stack as _stack
    if not C_KICK:
        return None
    try:
        from . import _tcpfast
        return _tcpfast.setup_rx(_stack._rx_fast is not None and _stack._tcp_rx is not None)
    except (ImportError, AttributeError, TypeError):
        return None


_rx_frames = _c_rx_frames()
