"""A Redis-protocol server on the queue API (``queueapi``: push, pop, wait_any).

Run as ``python apps/redis_server_queue.py [--host H] [--port N] [--libos NAME]``
or ``python -m apps.redis_server_queue ...``. Once listening it prints one line,
``ready on HOST:PORT`` (``--port 0`` picks a free port and prints it), and it
exits cleanly on SIGTERM or SIGINT. ``--libos`` takes a queueapi library OS
name or its Demikernel alias (``posix``/``catnap`` by default).

It is apps/redis_server.py ported to the queue API, and it reuses that file's
:class:`Connection` and :func:`make_store`: only the I/O loop differs. Read
``diff -u apps/redis_server.py apps/redis_server_queue.py`` as a porting guide:

    socket + selectors                     queue API
    ------------------------------------   ----------------------------------------
    socket.create_server(...)              los.socket / setsockopt / bind / listen
    register the listener for EVENT_READ   one accept token, ``los.accept(qd)``
    register each client for EVENT_READ    one pop token per client, ``los.pop(qd)``
    select() -> ready sockets, then recv   wait_any(tokens) -> (index, QResult); a
                                           POP result already holds the data (sga):
                                           no second call, and the slot ``index`` is
                                           re-armed in place with the next pop
    send; queue the rest; EVENT_WRITE;     push(qd, replies) without waiting: the
    flush on writability                   libOS finishes partial sends itself. A
                                           push that completed at once is reaped
                                           with wait(qt, 0); one still pending joins
                                           the wait_any list and is reaped there
    bytes queued in ``client.out``         bytes of pushes not yet completed
    recv() == b"" or an OSError            POP of zero bytes, or a FAILED result
    sel.unregister + sock.close            los.close(qd): its pending tokens complete
                                           FAILED (ECANCELED) and are dropped from
                                           the wait_any list when they come back
    set_wakeup_fd + a socketpair           nothing: a blocked wait runs signal
                                           handlers, and wait_any has a timeout
    the clock after each select()          the clock after every CLOCK_EVERY completions
                                           and after a wait that timed out (wait_any
                                           returns one completion, select many)

Every reply of one received chunk (a pipeline) goes out in one push, as the
plain server sends it in one write. QUIT and protocol errors close the
connection once the push of the last reply has completed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time

if __package__ in (None, ""):  # run as a script: make `apps` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import queueapi
from apps.redis_server import Connection, make_store
from queueapi import Opcode

__all__ = ["Connection", "main", "make_store", "serve"]

RECV_SIZE = 64 * 1024
#: Stop reading from a client while this much output waits for it.
OUTPUT_HIGH_WATER = 4 * 1024 * 1024
EXPIRE_INTERVAL = 0.1  # seconds between active expiry cycles
#: The clock is read for the expiry cycle once per this many completions (and after a wait
#: that timed out), as the plain server reads it once per select() of many ready sockets.
CLOCK_EVERY = 16

_POP, _PUSH, _FAILED = Opcode.POP, Opcode.PUSH, Opcode.FAILED


class _Client:
    """A connected queue, its protocol state and its pending pushes."""

    __slots__ = ("closing", "conn", "out", "pushes", "qd", "reading")

    def __init__(self, qd: int, conn: Connection) -> None:
        self.qd = qd
        self.conn = conn
        self.out = 0  # bytes pushed and not yet completed
        self.pushes: dict[int, int] = {}  # pending push token -> its byte count
        self.closing = False
        self.reading = False  # a pop token of this client is in the wait list


class _Server:
    """The wait_any loop: accept, pop, execute, push; nothing else."""

    def __init__(self, host: str, port: int, libos: str = "posix") -> None:
        self.los = los = queueapi.LibOS(libos)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = los.socket(family, socket.SOCK_STREAM)
        try:
            los.setsockopt(self.listener, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            los.bind(self.listener, (host, port))
            los.listen(self.listener, 1024)
        except BaseException:
            los.shutdown_libos()
            raise
        self.host, self.port = los.getsockname(self.listener)[:2]
        self.store = make_store(self.host, self.port)
        # The wait_any list: one accept token, one pop token per reading client, one token
        # per push still pending. ``owners[i]`` is the client of ``qts[i]`` (None: accept).
        self.qts = [los.accept(self.listener)]
        self.owners: list[_Client | None] = [None]
        self.running = True

    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop the loop (a blocked wait runs handlers). Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: object) -> None:
            self.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> None:
        next_expire = time.monotonic() + EXPIRE_INTERVAL
        wait_any = self.los.wait_any
        qts, owners = self.qts, self.owners
        since_clock = 0
        # `while True` and a test at the end rather than `while self.running`: CPython 3.11
        # specialises a loop's code only once it has jumped back unconditionally, and a
        # function called once (this one) is otherwise never specialised
        while True:
            try:
                i, r = wait_any(qts, EXPIRE_INTERVAL)
            except TimeoutError:
                since_clock = CLOCK_EVERY  # idle for a while: look at the clock now
            else:
                client = owners[i]
                if client is None:
                    self._accept(i, r)
                elif client.conn.closed:
                    self._forget(i)  # a token of a connection dropped since
                elif r.opcode is _POP:
                    self._read(i, client, r.sga)
                elif r.opcode is _PUSH:
                    self._pushed(i, client, r.qt)
                else:  # FAILED pop or push: reset by peer...
                    self._drop(client)
                    self._forget(i)
            since_clock += 1
            if since_clock >= CLOCK_EVERY:
                since_clock = 0
                now = time.monotonic()
                if now >= next_expire:
                    self.store.expire_cycle()
                    next_expire = now + EXPIRE_INTERVAL
            if not self.running:
                break

    def _forget(self, i: int) -> None:
        """Remove slot ``i`` of the wait list (the last slot takes its place)."""
        qts, owners = self.qts, self.owners
        qts[i] = qts[-1]
        owners[i] = owners[-1]
        qts.pop()
        owners.pop()

    def _accept(self, i: int, r: queueapi.QResult) -> None:
        self.qts[i] = self.los.accept(self.listener)  # re-arm first: the slot stays the listener's
        if r.opcode is _FAILED:  # e.g. EMFILE: try again with the new token
            return
        qd = r.new_qd
        with contextlib.suppress(OSError):  # a libOS without TCP_NODELAY
            self.los.setsockopt(qd, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(qd, Connection(self.store))
        self._start_reading(client)

    def _read(self, i: int, client: _Client, sga: queueapi.SGArray) -> None:
        data = sga.tobytes()
        sga.free()
        if not data:
            self._drop(client)
            self._forget(i)
            return
        replies, close = client.conn.feed(data)
        if close:
            client.closing = True
        if replies:
            self._send(client, replies)
        elif close:
            self._drop(client)
        if client.closing or client.out >= OUTPUT_HIGH_WATER:
            client.reading = False
            self._forget(i)
            return
        try:
            self.qts[i] = self.los.pop(client.qd, RECV_SIZE)  # the same slot, re-armed
        except OSError:  # the libOS knows the connection is gone
            self._drop(client)
            self._forget(i)

    def _start_reading(self, client: _Client) -> None:
        """Add a pop token of ``client`` to the wait list."""
        try:
            self.qts.append(self.los.pop(client.qd, RECV_SIZE))
        except OSError:
            self._drop(client)
            return
        self.owners.append(client)
        client.reading = True

    def _send(self, client: _Client, data: bytes) -> None:
        """Push without waiting; reap the token now if the libOS completed it at once."""
        try:
            qt = self.los.push(client.qd, data)
            r = self.los.wait(qt, 0)
        except TimeoutError:  # pending: wait_any reaps it
            client.out += len(data)
            client.pushes[qt] = len(data)
            self.qts.append(qt)
            self.owners.append(client)
            return
        except OSError:
            self._drop(client)
            return
        if r.opcode is _FAILED or client.closing and not client.out:
            self._drop(client)

    def _pushed(self, i: int, client: _Client, qt: int) -> None:
        """A pending push completed: close after the last reply, or resume reading."""
        self._forget(i)
        client.out -= client.pushes.pop(qt)
        if client.closing:
            if not client.out:
                self._drop(client)
        elif not client.reading and client.out < OUTPUT_HIGH_WATER:
            self._start_reading(client)

    def _drop(self, client: _Client) -> None:
        if client.conn.closed:
            return
        client.closing = True  # its tokens still in the wait list are forgotten when they complete
        client.conn.close()
        with contextlib.suppress(OSError):
            self.los.close(client.qd)

    def close(self) -> None:
        """Close every client, the listening queue and the library OS."""
        for client in list(self.owners):
            if client is not None:
                self._drop(client)
        self.los.shutdown_libos()


def serve(host: str = "127.0.0.1", port: int = 6379, libos: str = "posix") -> None:
    """Listen on host:port, print ``ready on HOST:PORT``, serve until SIGTERM/SIGINT."""
    server = _Server(host, port, libos)
    server.install_signals()
    print(f"ready on {server.host}:{server.port}", flush=True)
    try:
        server.run()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description="Redis-protocol server on the queue API")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=6379, help="TCP port (default 6379; 0 = any free port)")
    ap.add_argument("--libos", default="posix", help="library OS or Demikernel alias (default posix)")
    args = ap.parse_args(argv)
    try:
        serve(args.host, args.port, args.libos)
    except ValueError as err:  # unknown library OS name
        print(err, file=sys.stderr)
        return 2
    except OSError as err:
        print(f"cannot listen on {args.host}:{args.port} with {args.libos}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
