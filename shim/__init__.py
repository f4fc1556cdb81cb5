"""demishim's patches: the stdlib's sockets, select/poll, selectors and ``open`` over a queue
library OS (``queueapi``), so unmodified programs run on it.

    import shim
    shim.install("posix")          # or: python -m demishim --libos posix app.py

See ``shim.patch`` for what is patched, ``shim.socket``/``shim.select``/``shim.files`` for how,
and ``shim.runtime`` for the fallback counters and ``--strict``.
"""
from __future__ import annotations

from shim import _orig  # noqa: F401  (captures the originals before anything is patched)
from shim.patch import install, uninstall
from shim.runtime import Runtime, StrictModeError, current

__all__ = ["install", "uninstall", "current", "Runtime", "StrictModeError"]
