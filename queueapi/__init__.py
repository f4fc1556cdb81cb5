"""queueapi: Demikernel's queue API for Python.

``push``/``pop`` return one-shot tokens; ``wait``/``wait_any``/``wait_all`` return
``QResult``s. Module-level functions use a default ``LibOS`` chosen by ``init(name)``, else
``$DEMI_LIBOS``, else ``posix``; every function is also a ``LibOS`` method.

    import queueapi as dq
    qd = dq.queue()
    dq.wait(dq.push(qd, b"hello"))
    print(dq.wait(dq.pop(qd)).sga.tobytes())
"""
from __future__ import annotations

import functools
import threading
from typing import Any

from queueapi.config import ALIASES, LIBOS_NAMES
from queueapi.core import LibOS
from queueapi.framing import FramingError
from queueapi.match import Match
from queueapi.types import Opcode, QResult, SGArray

__all__ = ["LibOS", "Opcode", "QResult", "SGArray", "FramingError", "Match", "init", "default_libos",
           "LIBOS_NAMES", "ALIASES"]

_default: LibOS | None = None
_default_lock = threading.Lock()


def init(name: str | None = None, config: dict[str, Any] | None = None) -> LibOS:
    """Choose the default library OS (``name``, else ``$DEMI_LIBOS``, else ``posix``).

    Calling it again with another name replaces the default (queues of the old one stay
    usable through its ``LibOS`` object). Returns the default ``LibOS``.
    """
    global _default
    with _default_lock:
        _default = LibOS(name, config)
        return _default


def default_libos() -> LibOS:
    """The default ``LibOS``, created on first use."""
    d = _default
    if d is None:
        with _default_lock:
            if _default is None:
                globals()["_default"] = LibOS()
        d = _default
    return d


def _module_function(name: str) -> Any:
    method = getattr(LibOS, f"_{name}_py", None) or getattr(LibOS, name)  # (the Python one)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        d = _default or default_libos()
        return getattr(d, name)(*args, **kwargs)

    call.__wrapped__ = method
    return call


_API = ("socket", "bind", "listen", "accept", "connect", "close", "async_close", "shutdown",
        "getsockname", "getpeername", "setsockopt", "getsockopt", "queue", "create_pipe",
        "open_pipe", "open", "creat", "merge", "filter", "sort", "map", "qconnect", "qd_of",
        "stats", "push", "pushto", "pop", "wait", "wait_any", "wait_all", "wait_next_n", "blocking_push",
        "blocking_pop", "sgaalloc", "sgafree")

for _name in _API:
    globals()[_name] = _module_function(_name)
    __all__.append(_name)
del _name
