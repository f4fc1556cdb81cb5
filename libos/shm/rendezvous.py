"""The control path of the shm library OS: rendezvous by address over AF_UNIX, and the
handshake that hands the two rings' memfds and the doorbell eventfds to the peer.

Rendezvous names live in the abstract AF_UNIX namespace, one per user and address
(``\\0pydemikernel-shm.<uid>.<key>``), so only processes that can connect to that socket
take part, and the rings are memfds passed with SCM_RIGHTS: no other process can map them.

Handshake (SOCK_SEQPACKET, one message each way):
  client -> server  JSON {"v": 1, "to": address asked for, "from": client address}
                    + fds [client-to-server ring, server-to-client ring, client doorbell]
  server -> client  JSON {"v": 1, "ok": true, "local": server address}
                    + fds [server doorbell]     (or {"ok": false} and no fds)
Everything received is validated; a malformed message closes the connection and every fd
that came with it.
"""
from __future__ import annotations

import array
import errno
import ipaddress
import json
import os
import socket as _socket
from typing import Any

from libos.shm.ring import Ring

VERSION = 1
MAX_MSG = 4096
_FD_SPACE = _socket.CMSG_SPACE(4 * 4)


class HandshakeError(OSError):
    """The peer sent something that is not a valid handshake."""


def name_for(key: str) -> str:
    return f"\0pydemikernel-shm.{os.getuid()}.{key}"


def key_for_address(family: int, addr: Any) -> str | None:
    """The rendezvous key of a stream address, or None if it cannot be on this host."""
    if family == _socket.AF_UNIX:
        if isinstance(addr, bytes):
            addr = addr.decode("utf-8", "surrogateescape")
        return f"unix:{addr}" if isinstance(addr, str) and addr else None
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    port = addr[1]
    if not isinstance(port, int) or not 0 < port <= 65535:
        return None
    if family == _socket.AF_INET:
        return f"inet:{port}"
    if family == _socket.AF_INET6:
        return f"inet6:{port}"
    return None


def is_local_host(host: Any) -> bool:
    """True for a loopback address or ``localhost`` (a peer that must be on this host)."""
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def listener(key: str) -> _socket.socket | None:
    """A listening rendezvous socket for ``key``; None if another process holds the name."""
    s = _socket.socket(_socket.AF_UNIX,
                       _socket.SOCK_SEQPACKET | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
    try:
        s.bind(name_for(key))
        s.listen(128)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            return None
        raise
    return s


def dial(key: str) -> _socket.socket | None:
    """A control socket connected to the rendezvous ``key``, or None if nobody listens."""
    s = _socket.socket(_socket.AF_UNIX,
                       _socket.SOCK_SEQPACKET | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
    err = s.connect_ex(name_for(key))
    if err:
        s.close()
        return None
    return s


def _send(sock: _socket.socket, msg: dict[str, Any], fds: list[int]) -> None:
    data = json.dumps(msg).encode()
    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def _recv(sock: _socket.socket, nfds: int) -> tuple[dict[str, Any], list[int]]:
    """One message and exactly ``nfds`` fds; raises BlockingIOError if none has arrived,
    HandshakeError (closing any fds received) if it is malformed, EOFError on hang-up."""
    data, anc, flags, _ = sock.recvmsg(MAX_MSG, _FD_SPACE)
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[:len(payload) - len(payload) % a.itemsize])
            fds.extend(a)
    try:
        if not data and not fds:
            raise EOFError("the peer hung up during the handshake")
        if flags & (_socket.MSG_CTRUNC | _socket.MSG_TRUNC):
            raise HandshakeError(errno.EPROTO, "handshake message truncated")
        try:
            msg = json.loads(data)
        except ValueError:
            raise HandshakeError(errno.EPROTO, "handshake message is not JSON") from None
        if not isinstance(msg, dict) or msg.get("v") != VERSION:
            raise HandshakeError(errno.EPROTO, "unknown handshake version")
        if msg.get("ok", True) and len(fds) != nfds:
            raise HandshakeError(errno.EPROTO, f"expected {nfds} fds, got {len(fds)}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return msg, fds


def send_hello(ctrl: _socket.socket, to: Any, frm: Any, capacity: int,
               doorbell: int) -> tuple[Ring, Ring]:
    """Client: create both rings, send them with our doorbell; returns (tx, rx)."""
    tx, txfd = Ring.create(capacity, "pydemikernel-c2s")
    try:
        rx, rxfd = Ring.create(capacity, "pydemikernel-s2c")
    except BaseException:
        tx.close()
        os.close(txfd)
        raise
    try:
        _send(ctrl, {"v": VERSION, "to": _jsonable(to), "from": _jsonable(frm)},
              [txfd, rxfd, doorbell])
    except BaseException:
        tx.close()
        rx.close()
        raise
    finally:
        os.close(txfd)
        os.close(rxfd)
    return tx, rx


def read_reply(ctrl: _socket.socket) -> tuple[dict[str, Any], int | None]:
    """Client: the server's answer and its doorbell fd (None if it refused)."""
    msg, fds = _recv(ctrl, 1)
    if not msg.get("ok"):
        for fd in fds:
            os.close(fd)
        return msg, None
    return msg, fds[0]


def read_hello(conn: _socket.socket) -> tuple[dict[str, Any], Ring, Ring, int]:
    """Server: the client's hello; returns (msg, tx, rx, client doorbell fd).

    The rings are attached (validated: sealed memfds with sane headers)."""
    msg, fds = _recv(conn, 3)
    c2s, s2c, doorbell = fds
    try:
        rx = Ring.attach(c2s)
        try:
            tx = Ring.attach(s2c)
        except BaseException:
            rx.close()
            raise
    except (ValueError, OSError) as e:
        os.close(doorbell)
        raise HandshakeError(errno.EPROTO, f"bad rings from the peer: {e}") from None
    finally:
        os.close(c2s)
        os.close(s2c)
    return msg, tx, rx, doorbell


def reply(conn: _socket.socket, ok: bool, local: Any, doorbell: int) -> None:
    _send(conn, {"v": VERSION, "ok": ok, "local": _jsonable(local)}, [doorbell] if ok else [])


def _jsonable(addr: Any) -> Any:
    if isinstance(addr, bytes):
        return addr.decode("utf-8", "surrogateescape")
    if isinstance(addr, tuple):
        return list(addr)
    return addr


def address_from_json(v: Any) -> Any:
    """An address as socket methods return it (tuples for AF_INET/AF_INET6)."""
    return tuple(v) if isinstance(v, list) else v
