"""TLS over library-OS sockets: ``ssl.SSLSocket`` with its OpenSSL object in memory-BIO mode.

``ssl`` normally hands the socket's fd to OpenSSL (``SSLContext._wrap_socket``), which then
reads and writes the kernel fd itself. On a library OS the fd need not carry the connection
(a shm connection's data rides shared-memory rings), so the handshake would never complete.
Here, as asyncio's ``sslproto`` and gevent do over transports without an fd, OpenSSL works
on two ``ssl.MemoryBIO`` s and the shim moves the bytes over the socket with the shim's own
``recv``/``send``. Everything else is ssl's own ``SSLSocket`` code: it calls
``self._sslobj.read/write/do_handshake/shutdown/...``, and ``_sslobj`` is a ``BioTLS``.

* ``ssl.SSLContext._wrap_socket`` is replaced: for a library-OS socket (``sock._st``) it
  returns a ``BioTLS``; any other socket (a kernel fallback) gets the original C wrapper.
* ``SSLSocket._create`` builds the ``SSLSocket`` over the wrapped socket's fd
  (``socket(fileno=fd)``) and detaches the original: ``shim.socket`` lets an ``SSLSocket``
  take over the library-OS socket behind that fd (``SocketState.fd_shares``).
* Incoming bytes are fed to OpenSSL one TLS record at a time (the 5-byte header, then the
  record), as OpenSSL itself reads a socket without read-ahead: whatever OpenSSL has not
  been given stays in the socket, so ``select``/``poll``/selectors on the SSLSocket's fd
  report readable exactly when the kernel-fd ``SSLSocket`` would (``pending()`` covers the
  rest of a decrypted record, as usual), and ``unwrap()`` leaves the following plaintext
  unread.
* Blocking, timeouts and non-blocking mode follow the socket's timeout, with the messages
  and exceptions of ``_ssl.c`` (``TimeoutError('The read operation timed out')``,
  ``SSLWantReadError``/``SSLWantWriteError`` on a non-blocking socket). A non-blocking
  socket's encrypted output that the library OS has no room for yet is kept and sent first
  by the next call (``write`` raises ``SSLWantWriteError`` while any is left).

If ``ssl`` was imported before the shim was installed, its ``SSLSocket`` derives from the
stdlib's socket class; ``install()`` then points ``SSLContext.sslsocket_class`` at a subclass
of both (``ssl.SSLSocket`` itself is not replaced: code that constructs it directly keeps the
kernel path).
"""
from __future__ import annotations

import errno
import sys
import weakref
from typing import Any

from shim import socket as shim_socket

_MISSING = object()
_saved: dict[str, Any] = {}
_MSG_DONTWAIT = shim_socket._MSG_DONTWAIT
_raw_recv = shim_socket.socket.recv
_raw_send = shim_socket.socket.send
_raw_sendall = shim_socket.socket.sendall
_raw_gettimeout = shim_socket.socket.gettimeout
_MAX_RECORD = 5 + 16384 + 2048  # header + the largest TLSCiphertext


def _is_libos_socket(sock: Any) -> bool:
    return isinstance(sock, shim_socket.socket) and sock._st is not None


def _wrap_socket(self: Any, sock: Any, server_side: bool, server_hostname: Any = None, *,
                 owner: Any = None, session: Any = None) -> Any:
    """``SSLContext._wrap_socket``: memory BIOs for a library-OS socket."""
    if _is_libos_socket(sock):
        return BioTLS(self, sock, server_side, server_hostname, owner, session)
    return _saved["_wrap_socket_c"](self, sock, server_side, server_hostname, owner=owner,
                                    session=session)


def ensure_patched() -> None:
    """Patch ``ssl`` (once it is imported; a no-op before that and after the first time)."""
    ssl = sys.modules.get("ssl")
    if ssl is None or "ctx" in _saved:
        return
    import _ssl
    ctx_cls = ssl.SSLContext
    _saved["ctx"] = ctx_cls
    _saved["_wrap_socket_c"] = _ssl._SSLContext._wrap_socket
    _saved["_wrap_socket"] = vars(ctx_cls).get("_wrap_socket", _MISSING)
    ctx_cls._wrap_socket = _wrap_socket
    if not issubclass(ssl.SSLSocket, shim_socket.socket):  # ssl imported before the shim
        _saved["sslsocket_class"] = vars(ctx_cls).get("sslsocket_class", _MISSING)
        ctx_cls.sslsocket_class = type("SSLSocket", (ssl.SSLSocket, shim_socket.socket),
                                       {"__module__": "ssl", "__doc__": ssl.SSLSocket.__doc__})


def unpatch() -> None:
    ctx_cls = _saved.pop("ctx", None)
    if ctx_cls is None:
        return
    for name in ("_wrap_socket", "sslsocket_class"):
        old = _saved.pop(name, None)
        if old is None:
            continue
        if old is _MISSING:
            try:
                delattr(ctx_cls, name)
            except AttributeError:
                pass
        else:
            setattr(ctx_cls, name, old)
    _saved.clear()


def _timeout_error(what: str) -> TimeoutError:
    return TimeoutError(f"The {what} operation timed out")


class BioTLS:
    """What ``SSLSocket._sslobj`` is for a library-OS socket: the ``_ssl._SSLSocket`` of
    ``SSLContext._wrap_bio`` plus the I/O between its BIOs and the socket."""

    __slots__ = ("_obj", "_in", "_out", "_sock", "_unsent", "_rec_left", "_hdr", "_eof",
                 "__weakref__")

    def __init__(self, ctx: Any, sock: Any, server_side: bool, server_hostname: Any,
                 owner: Any, session: Any) -> None:
        import ssl
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx._wrap_bio(self._in, self._out, server_side, server_hostname,
                                  owner=owner, session=session)
        self._sock = weakref.ref(sock)  # the SSLSocket owns us: no cycle
        self._unsent = b""     # encrypted bytes the socket had no room for (non-blocking)
        self._rec_left = 0     # bytes of the current record not yet fed to OpenSSL
        self._hdr = b""        # a partly read record header
        self._eof = False

    # ------------------------------------------------------------------ delegation
    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)

    @property
    def context(self) -> Any:
        return self._obj.context

    @context.setter
    def context(self, ctx: Any) -> None:
        self._obj.context = ctx

    @property
    def session(self) -> Any:
        return self._obj.session

    @session.setter
    def session(self, value: Any) -> None:
        self._obj.session = value

    def pending(self) -> int:
        return self._obj.pending()

    # ------------------------------------------------------------------ the operations
    def do_handshake(self) -> None:
        return self._run(self._obj.do_handshake, "handshake")

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        obj = self._obj
        if buffer is None:
            return self._run(lambda: obj.read(len), "read")
        return self._run(lambda: obj.read(len, buffer), "read")

    def write(self, data: Any) -> int:
        sock = self._socket()
        if self._unsent and not self._flush(sock, "write"):
            import ssl
            raise ssl.SSLWantWriteError(ssl.SSL_ERROR_WANT_WRITE,
                                        "The operation did not complete (write)")
        obj = self._obj
        return self._run(lambda: obj.write(data), "write")

    def shutdown(self) -> Any:
        """SSL_shutdown until the peer's close_notify arrived (as ``_ssl.c`` in socket mode);
        returns the socket, as the socket-mode object does."""
        self._run(self._obj.shutdown, "read")
        return self._sock()

    # ------------------------------------------------------------------ I/O
    def _socket(self) -> Any:
        sock = self._sock()
        if sock is None:
            raise OSError(errno.EBADF, "the SSL socket was garbage collected")
        return sock

    def _run(self, fn: Any, what: str) -> Any:
        import ssl
        sock = self._socket()
        while True:
            try:
                result = fn()
            except ssl.SSLWantReadError:
                self._flush(sock, what)
                if self._eof:
                    raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF,
                                          "EOF occurred in violation of protocol") from None
                self._fill(sock, what)
                continue
            except ssl.SSLError:
                self._flush_quietly(sock)  # an alert for the peer
                raise
            self._flush(sock, what)
            return result

    def _flush(self, sock: Any, what: str) -> bool:
        """Send what OpenSSL wrote; True when nothing is left unsent."""
        data = self._out.read()
        if self._unsent:
            data = self._unsent + data
            self._unsent = b""
        if not data:
            return True
        timeout = _raw_gettimeout(sock)
        if timeout != 0:
            try:
                _raw_sendall(sock, data)
            except TimeoutError:
                raise _timeout_error("handshake" if what == "handshake" else "write") from None
            return True
        mv = memoryview(data)
        sent = 0
        try:
            while sent < len(mv):
                sent += _raw_send(sock, mv[sent:])
        except BlockingIOError:
            self._unsent = bytes(mv[sent:])
            return False
        return True

    def _flush_quietly(self, sock: Any) -> None:
        try:
            self._flush(sock, "write")
        except OSError:
            pass

    def _fill(self, sock: Any, what: str) -> None:
        """Feed OpenSSL the rest of one record (waiting as the socket's timeout says)."""
        import ssl
        flags = 0
        while True:
            want = self._rec_left if self._rec_left else 5 - len(self._hdr)
            try:
                data = _raw_recv(sock, want, flags)
            except BlockingIOError:
                if flags:
                    return  # fed something already: let OpenSSL look at it
                raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ,
                                           "The operation did not complete (read)") from None
            except TimeoutError:
                raise _timeout_error("handshake" if what == "handshake" else "read") from None
            if not data:
                self._eof = True
                self._in.write_eof()
                return
            self._in.write(data)
            if self._rec_left:
                self._rec_left -= len(data)
                if not self._rec_left:
                    return  # a whole record
            else:
                self._hdr += data
                if len(self._hdr) == 5:
                    self._rec_left = int.from_bytes(self._hdr[3:5], "big")
                    self._hdr = b""
                    if not self._rec_left or self._rec_left > _MAX_RECORD:
                        return  # OpenSSL will say what it makes of this header
            flags = _MSG_DONTWAIT  # the rest of this record only if it is already here
