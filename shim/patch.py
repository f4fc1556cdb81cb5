"""Installing the shim: patch the stdlib in place (as gevent's ``patch_all`` does).

Order: the library OS first (it imports ``socket`` and ``select`` and must get the real
ones), then ``socket`` (the class, ``create_connection``, ``create_server``, ``socketpair``,
``fromfd``; ``getaddrinfo`` and ``SocketType`` stay: the new class is a ``_socket.socket``
subclass), ``os.sendfile`` (to a library-OS socket it pushes the file's bytes, so asyncio's
native sendfile path works),
``signal.set_wakeup_fd`` (refuses the fd of a shm connection, whose fd does not carry its
data), ``ssl`` (TLS over library-OS sockets through memory BIOs: ``shim.tls``; patched when
ssl is imported),
``select``, ``selectors`` and ``open`` (``builtins``, ``io``, ``_io``). Module attributes
are replaced with ``setattr``, and classes other modules bound at import time
(``selectors.PollSelector``, ``SelectSelector``) are fixed in place.
``select.epoll/kqueue/kevent/devpoll`` and their selectors are removed (a program would
wait in the kernel and never see a library-OS socket);
the library OS and ``queueapi`` still reach the real ones through a module ``__getattr__``
(e.g. the posix library OS makes a new epoll after ``fork()``).
"""
from __future__ import annotations

import _io
import builtins
import io
import select as _select_mod
import selectors as _selectors_mod
import socket as _socket_mod
import sys
import types
from typing import Any

from shim import _orig, runtime

saved: dict[tuple[str, str], Any] = {}
_MISSING = object()
_patched = False


def _patch(module: Any, name: str, value: Any) -> None:
    key = (module.__name__, name)
    if key not in saved:
        saved[key] = getattr(module, name, _MISSING)
    setattr(module, name, value)


def _remove(module: Any, name: str) -> None:
    if hasattr(module, name) and name in vars(module):
        key = (module.__name__, name)
        if key not in saved:
            saved[key] = getattr(module, name)
        delattr(module, name)


class BuiltinLike:
    """A patched stdlib function that, like the C builtin it replaces, does not become a
    method when stored as a class attribute (``open = io.open`` in a class body, as
    test_io does; ``_select = select.select`` in selectors)."""

    def __init__(self, fn: Any, module: str, name: str | None = None) -> None:
        self.__wrapped__ = fn
        self.__name__ = self.__qualname__ = name or fn.__name__
        self.__module__ = module
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<demishim function {self.__module__}.{self.__name__}>"

    def __reduce__(self) -> Any:
        return self.__qualname__


def _as_builtin(fn: Any, module: str) -> Any:
    """``fn`` itself if it is a C function (shim._speedups': it does not bind as a method
    either), else ``fn`` wrapped in a BuiltinLike."""
    return fn if isinstance(fn, types.BuiltinFunctionType) else BuiltinLike(fn, module)


def _internal_getattr(module_name: str, originals: dict[str, Any]) -> Any:
    def __getattr__(name: str) -> Any:
        if name in originals and runtime.internal_caller():
            return originals[name]
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    return __getattr__


def install(libos: str | None = None, *, strict: bool = False, los: Any = None) -> runtime.Runtime:
    """Create (or use) the library OS and patch the stdlib. Idempotent: a second call returns
    the installed runtime (and may only turn ``strict`` on)."""
    global _patched
    rt = runtime.current()
    if rt is not None:
        rt.strict = rt.strict or strict
        return rt
    if los is None:
        import queueapi
        los = queueapi.init(libos)
    rt = runtime.Runtime(los, strict)
    runtime.set_runtime(rt)
    from shim import files, select as shim_select, selectors as shim_selectors
    from shim import socket as shim_socket

    # socket: the class (its subclasses see it too), and the helpers; getaddrinfo untouched.
    # SocketType stays _socket.socket, of which shim_socket.socket is a subclass.
    _patch(_socket_mod, "socket", shim_socket.socket)
    for name in ("create_connection", "create_server", "socketpair", "fromfd"):
        _patch(_socket_mod, name, BuiltinLike(getattr(shim_socket, name), "socket"))

    # signal.set_wakeup_fd: C writes to the fd; refused for a shm connection's fd
    import signal as _signal_mod
    shim_socket._orig_set_wakeup_fd = _orig.set_wakeup_fd
    _patch(_signal_mod, "set_wakeup_fd",
           BuiltinLike(shim_socket.set_wakeup_fd, "signal", "set_wakeup_fd"))

    # ssl: TLS over library-OS sockets through memory BIOs (shim.tls); patched now if ssl
    # is imported already, else when the first SSLSocket takes over a library-OS socket
    from shim import tls
    tls.ensure_patched()

    # os.sendfile would write to a library-OS socket's kernel fd directly: push instead
    import os as _os_mod
    if shim_socket._orig_os_sendfile is not None:
        _patch(_os_mod, "sendfile", BuiltinLike(shim_socket.os_sendfile, "os", "sendfile"))
    # os.lseek on the qd of a shim file moves that file's own position
    _patch(_os_mod, "lseek", BuiltinLike(files.os_lseek, "os", "lseek"))

    # select
    _patch(_select_mod, "select", _as_builtin(shim_select.select, "select"))
    _patch(_select_mod, "poll", _as_builtin(shim_select.poll, "select"))
    for name in _orig.select_attrs:
        _remove(_select_mod, name)
    _patch(_select_mod, "__getattr__", _internal_getattr("select", dict(_orig.select_attrs)))

    # selectors, in place
    _patch(_selectors_mod.SelectSelector, "_select", _select_mod.select)
    _patch(_selectors_mod.PollSelector, "_selector_cls", _select_mod.poll)
    _patch(_selectors_mod, "DefaultSelector", shim_selectors.DemiSelector)
    for name in _orig.selector_classes:
        _remove(_selectors_mod, name)
    _patch(_selectors_mod, "__getattr__",
           _internal_getattr("selectors", dict(_orig.selector_classes)))

    # open: all three names (they are one object in plain Python)
    shim_open = BuiltinLike(files.open, "io")
    _patch(builtins, "open", shim_open)
    _patch(io, "open", shim_open)
    _patch(_io, "open", shim_open)
    import atexit
    atexit.register(shim_socket.wait_lingering)  # runs after the program's own handlers
    _patched = True
    return rt


def uninstall() -> None:
    """Undo ``install`` (for tests in one process). Library-OS sockets stay usable."""
    global _patched
    for (modname, name), value in reversed(list(saved.items())):
        if modname == "SelectSelector":
            target: Any = _selectors_mod.SelectSelector
        elif modname == "PollSelector":
            target = _selectors_mod.PollSelector
        else:
            target = sys.modules[modname]
        if value is _MISSING:
            try:
                delattr(target, name)
            except AttributeError:
                pass
        else:
            setattr(target, name, value)
    saved.clear()
    from shim import tls
    tls.unpatch()
    runtime.set_runtime(None)
    _patched = False
