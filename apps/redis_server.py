"""A Redis-protocol server on plain kernel sockets (``socket`` + ``selectors``).

Run as ``python apps/redis_server.py [--host H] [--port N]`` or
``python -m apps.redis_server ...``. Once listening it prints one line,
``ready on HOST:PORT`` (``--port 0`` picks a free port and prints it), and it
exits cleanly on SIGTERM or SIGINT.

The protocol work is in :class:`Connection` (bytes in -> reply bytes out,
plus "close now"), so another I/O loop (for instance one written on the queue
API) can reuse everything here except :func:`serve`:

    store = make_store(host, port)
    conn = Connection(store)              # per accepted client
    replies, close = conn.feed(data)      # for every chunk received
    ...send replies (one write), close the socket if asked...
    conn.close()                          # when the client is gone
    store.expire_cycle()                  # about ten times a second
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback

if __package__ in (None, ""):  # run as a script: make `apps` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apps.commands import Store, execute
from apps.resp import Parser, ProtocolError

__all__ = ["Connection", "main", "make_store", "serve"]

RECV_SIZE = 64 * 1024
#: Stop reading from a client while this much output waits for it.
OUTPUT_HIGH_WATER = 4 * 1024 * 1024
EXPIRE_INTERVAL = 0.1  # seconds between active expiry cycles


class Connection:
    """Protocol state of one client: a parser, a session, and the command layer.

    ``feed(data)`` returns ``(replies, close)``: the concatenated replies to the
    commands that ``data`` completed (possibly ``b""``), and whether the
    connection must be closed once they are sent (QUIT, protocol error).
    After ``close`` is true, further input must be ignored.
    """

    __slots__ = ("closed", "parser", "session", "store")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.parser = Parser()
        self.session = store.new_session()
        self.closed = False
        store.connected_clients += 1
        store.total_connections += 1

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Handle received bytes; return (replies to send, close after sending)."""
        if self.session.closing:
            return b"", True
        error = None
        try:
            commands = self.parser.feed(data)
        except ProtocolError as err:
            commands, error = err.commands, err
        try:
            return self._run(commands, error)
        except Exception:  # a bug in a command must not take the server down
            traceback.print_exc(file=sys.stderr)
            self.session.closing = True
            return b"-ERR internal server error\r\n", True

    def _run(self, commands: list[list[bytes]], error: ProtocolError | None) -> tuple[bytes, bool]:
        store, session = self.store, self.session
        if len(commands) == 1 and error is None:
            return execute(store, commands[0], session)
        out = []
        for argv in commands:
            reply, close = execute(store, argv, session)
            out.append(reply)
            if close:
                return b"".join(out), True
        if error is not None:
            out.append(error.reply)
            session.closing = True
            return b"".join(out), True
        return b"".join(out), False

    def close(self) -> None:
        """Forget this client (updates the store's client count). Idempotent."""
        if not self.closed:
            self.closed = True
            self.store.connected_clients -= 1


def make_store(host: str = "127.0.0.1", port: int = 6379) -> Store:
    """A fresh store whose CONFIG GET / INFO report this host and port."""
    store = Store()
    store.config[b"bind"] = host.encode()
    store.config[b"port"] = str(port).encode()
    return store


_WAKE = object()  # selector data of the signal wake-up socket


class _Client:
    """A connected socket, its protocol state and its pending output."""

    __slots__ = ("closing", "conn", "events", "out", "sock")

    def __init__(self, sock: socket.socket, conn: Connection) -> None:
        self.sock = sock
        self.conn = conn
        self.out = bytearray()
        self.closing = False
        self.events = selectors.EVENT_READ


class _Server:
    """The selector loop: accept, read, execute, write; nothing else."""

    def __init__(self, host: str, port: int) -> None:
        self.sel = selectors.DefaultSelector()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.create_server((host, port), family=family, backlog=1024)
        self.listener.setblocking(False)
        self.host, self.port = self.listener.getsockname()[:2]
        self.store = make_store(self.host, self.port)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.running = True
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)

    def install_signals(self) -> None:
        """SIGTERM/SIGINT stop the loop (woken through a socketpair). Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            return
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

        def stop(signum: int, frame: object) -> None:
            self.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self) -> None:
        next_expire = time.monotonic() + EXPIRE_INTERVAL
        select = self.sel.select
        while self.running:
            for key, mask in select(EXPIRE_INTERVAL):
                data = key.data
                if type(data) is _Client:
                    if mask & selectors.EVENT_WRITE:
                        self._flush(data)
                    if mask & selectors.EVENT_READ and not data.closing:
                        self._read(data)
                elif data is None:
                    self._accept()
                else:
                    self._drain_wakeup()
            now = time.monotonic()
            if now >= next_expire:
                self.store.expire_cycle()
                next_expire = now + EXPIRE_INTERVAL

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        for _ in range(128):  # bounded burst per wake-up
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: try again on the next wake-up
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, Connection(self.store))
            self.sel.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        replies, close = client.conn.feed(data)
        if close:
            client.closing = True
        if replies:
            self._send(client, replies)
        elif close:
            self._drop(client)

    def _send(self, client: _Client, data: bytes) -> None:
        """Send now if nothing is queued; queue the rest and wait for EVENT_WRITE."""
        if client.out:
            client.out += data
        else:
            try:
                sent = client.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            if sent == len(data):
                if client.closing:
                    self._drop(client)
                return
            client.out += memoryview(data)[sent:]
        self._update_events(client)

    def _flush(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        del client.out[:sent]
        if not client.out and client.closing:
            self._drop(client)
            return
        self._update_events(client)

    def _update_events(self, client: _Client) -> None:
        """Wait for writability while output is queued; pause reading past the high-water mark."""
        events = 0
        if client.out:
            events |= selectors.EVENT_WRITE
        if not client.closing and len(client.out) < OUTPUT_HIGH_WATER:
            events |= selectors.EVENT_READ
        if events != client.events:
            client.events = events
            self.sel.modify(client.sock, events, client)

    def _drop(self, client: _Client) -> None:
        if client.conn.closed:
            return
        client.closing = True  # events still queued for it are skipped
        client.conn.close()
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(client.sock)
        client.sock.close()

    def close(self) -> None:
        """Close every client and the listening socket."""
        for key in list(self.sel.get_map().values()):
            if isinstance(key.data, _Client):
                self._drop(key.data)
        self.sel.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()


def serve(host: str = "127.0.0.1", port: int = 6379) -> None:
    """Listen on host:port, print ``ready on HOST:PORT``, serve until SIGTERM/SIGINT."""
    server = _Server(host, port)
    server.install_signals()
    print(f"ready on {server.host}:{server.port}", flush=True)
    try:
        server.run()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description="Redis-protocol server on socket + selectors")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=6379, help="TCP port (default 6379; 0 = any free port)")
    args = ap.parse_args(argv)
    try:
        serve(args.host, args.port)
    except OSError as err:
        print(f"cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
